"""Build the forecasting dataset and a baseline forecast.

Inputs: forecasting/data/input/*.csv (one series per file: date,value), older
history from forecasting/data/input/archive/<year>/<name>.csv, and this run's
scraped prices. Output: forecasting/data/output/forecast-<run>.csv in long
form, series,date,kind,value: the cleaned daily history ("history") and a
seasonal-naive forecast ("baseline": the value one season earlier), which
the modelling stage has to beat.
"""

import configparser
import datetime as dt
import logging

from forecasting.src.constants import CONFIG_FILE, INPUT_DIR, forecast_file
from pipeline_io import read_csv, write_csv
from scraping.src.constants import prices_file

log = logging.getLogger("forecast")


def load_config() -> dict:
    cp = configparser.ConfigParser()
    if not cp.read(CONFIG_FILE):
        raise FileNotFoundError(f"missing config {CONFIG_FILE}")
    return {
        "horizon": cp.getint("forecast", "horizon_days"),
        "season": cp.getint("forecast", "season_length"),
    }


def _points(rows: list, value_column: str, source: str):
    """(date, float) pairs; malformed rows are skipped and counted."""
    bad = 0
    for row in rows:
        try:
            yield dt.date.fromisoformat(row["date"]), float(row[value_column])
        except (KeyError, TypeError, ValueError):
            bad += 1
    if bad:
        log.warning("%s: skipped %d malformed row(s)", source, bad)


def load_inputs() -> dict:
    """series name -> {date: value}; archive files first, so current data wins."""
    files = sorted(INPUT_DIR.glob("archive/*/*.csv")) + sorted(INPUT_DIR.glob("*.csv"))
    series = {}
    for path in files:
        rows = read_csv(path)
        if not rows:
            continue
        value_column = [c for c in rows[0] if c != "date"][0]
        series.setdefault(path.stem, {}).update(_points(rows, value_column, str(path.relative_to(INPUT_DIR))))
    return series


def load_prices(run_id: str) -> dict:
    series = {}
    for row in read_csv(prices_file(run_id)):
        for day, value in _points([row], "price", "scraped prices"):
            series.setdefault(f"price_{row['item']}", {})[day] = value
    return series


def daily(points: dict) -> list:
    """(date, value) for every day from the first to the last; gaps carry the last value."""
    days = sorted(points)
    out, day, last = [], days[0], None
    while day <= days[-1]:
        last = points.get(day, last)
        out.append((day, last))
        day += dt.timedelta(days=1)
    return out


def seasonal_naive(history: list, horizon: int, season: int) -> list:
    """Each future day gets the value of the same day one season before the end."""
    values = [v for _, v in history]
    last_day = history[-1][0]
    tail = values[-season:]
    return [(last_day + dt.timedelta(days=h), tail[(h - 1) % len(tail)]) for h in range(1, horizon + 1)]


def run(run_id: str) -> dict:
    cfg = load_config()
    series = {**load_inputs(), **load_prices(run_id)}
    rows = []
    for name in sorted(series):
        history = daily(series[name])
        rows += [(name, d.isoformat(), "history", f"{v:g}") for d, v in history]
        rows += [
            (name, d.isoformat(), "baseline", f"{v:g}")
            for d, v in seasonal_naive(history, cfg["horizon"], cfg["season"])
        ]
    out = forecast_file(run_id)
    write_csv(out, ["series", "date", "kind", "value"], rows)
    log.info("wrote %s (%d series, baseline %d days ahead)", out.name, len(series), cfg["horizon"])
    return {"series": len(series)}
