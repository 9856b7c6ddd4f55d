"""Scrape daily prices into scraping/scraped_data.

Stands in for a web scrape: each item's price history is generated from a
generator seeded by the item's name, so every run "scrapes" the same pages
and the demo is reproducible.
"""

import datetime as dt
import logging
import math
import random

from pipeline_io import write_csv
from scraping.src.constants import prices_file

log = logging.getLogger("scrape")

LAST_DAY = dt.date(2024, 4, 21)
# item: (days listed, base price, weekly swing)
ITEMS = {
    "widget": (112, 24.0, 0.08),
    "gadget": (112, 41.0, 0.03),
    # Listed recently: too little history for a grid search.
    "gizmo": (35, 13.5, 0.05),
}


def _history(item: str, days: int, base: float, swing: float):
    rng = random.Random(item)
    first = LAST_DAY - dt.timedelta(days=days - 1)
    level = base
    for i in range(days):
        day = first + dt.timedelta(days=i)
        level += rng.gauss(0.01, 0.12)
        weekly = 1 + swing * math.sin(2 * math.pi * day.weekday() / 7)
        yield day.isoformat(), item, f"{level * weekly:.2f}"


def run(run_id: str) -> dict:
    out = prices_file(run_id)
    rows = [row for item, spec in ITEMS.items() for row in _history(item, *spec)]
    n = write_csv(out, ["date", "item", "price"], rows)
    log.info("wrote %s (%d prices of %d items)", out.name, n, len(ITEMS))
    return {"rows": n}
