"""Fit a SARIMA-like model per series and write predictions.

The orders of each series' model come from a grid search, the slow part of a
run. They are cached in modelling/cache/sarima_params/<series>.json, each
file written as soon as its search ends, so the next run (or a run resumed
after a stop) fits the cached orders directly. A cached entry is searched
again when the grid changes or after PARAMS_MAX_AGE_DAYS. Series too short
to search use the orders shipped in sarima_params/default.json.

Output: modelling/predictions/predictions-<run>.csv with the model's
forecast beside the seasonal-naive baseline from the forecasting stage.
"""

import datetime as dt
import hashlib
import json
import logging
import time

from forecasting.src.constants import forecast_file
from forecasting.src.forecast import load_config
from modelling.src import sarima
from modelling.src.constants import (
    DEFAULT_PARAMS_FILE,
    GRID,
    MIN_OBS_FOR_SEARCH,
    PARAMS_MAX_AGE_DAYS,
    params_file,
    predictions_file,
)
from pipeline_io import read_csv, read_json, write_csv, write_json

log = logging.getLogger("model")
FOLDS = 2


def _fingerprint(season: int, horizon: int) -> str:
    """Identifies what a cached search depends on besides the data."""
    spec = json.dumps({"grid": GRID, "season": season, "horizon": horizon, "folds": FOLDS}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _label(order, seasonal_order) -> str:
    (p, d, q), (P, D, Q, s) = order, seasonal_order
    return f"SARIMA({p},{d},{q})({P},{D},{Q}){s}"


def _load_series(run_id: str):
    history, baseline = {}, {}
    for row in read_csv(forecast_file(run_id)):
        target = history if row["kind"] == "history" else baseline
        target.setdefault(row["series"], []).append((row["date"], float(row["value"])))
    return history, baseline


def _cached_orders(series: str, fingerprint: str):
    entry = read_json(params_file(series))
    if not entry or entry.get("fingerprint") != fingerprint:
        return None
    try:
        searched = dt.datetime.fromisoformat(entry["searched_at"])
        if dt.datetime.now(dt.timezone.utc) - searched > dt.timedelta(days=PARAMS_MAX_AGE_DAYS):
            return None
        return tuple(entry["order"]), tuple(entry["seasonal_order"]), entry
    except (KeyError, TypeError, ValueError):
        return None


def _default_orders(season: int):
    entry = read_json(DEFAULT_PARAMS_FILE)
    if entry and "order" in entry and "seasonal_order" in entry:
        return tuple(entry["order"]), tuple(entry["seasonal_order"])
    log.warning("%s missing or unreadable; using built-in default orders", DEFAULT_PARAMS_FILE.name)
    return (1, 1, 1), (0, 1, 1, season)


def _search(series: str, y: list, season: int, horizon: int, fingerprint: str):
    t0 = time.monotonic()
    order, seasonal_order, mae, tried = sarima.grid_search(y, GRID, season, horizon, FOLDS)
    entry = {
        "series": series,
        "order": list(order),
        "seasonal_order": list(seasonal_order),
        "backtest_mae": round(mae, 4),
        "baseline_mae": round(sarima.seasonal_naive_mae(y, season, horizon, FOLDS), 4),
        "observations": len(y),
        "candidates": tried,
        "search_seconds": round(time.monotonic() - t0, 3),
        "searched_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
    }
    write_json(params_file(series), entry)
    return order, seasonal_order, entry


def run(run_id: str) -> dict:
    cfg = load_config()
    season, horizon = cfg["season"], cfg["horizon"]
    fingerprint = _fingerprint(season, horizon)
    history, baseline = _load_series(run_id)
    counts = {"cached": 0, "searched": 0, "default": 0}
    search_seconds = 0.0
    rows = []
    for series in sorted(history):
        y = [v for _, v in history[series]]
        if len(y) < MIN_OBS_FOR_SEARCH:
            order, seasonal_order = _default_orders(season)
            source, note = "default", f"{len(y)} observations < {MIN_OBS_FOR_SEARCH}: shipped default orders"
        elif cached := _cached_orders(series, fingerprint):
            order, seasonal_order, entry = cached
            source, note = "cached", f"cached orders (searched {entry['searched_at']})"
        else:
            order, seasonal_order, entry = _search(series, y, season, horizon, fingerprint)
            search_seconds += entry["search_seconds"]
            source = "searched"
            note = f"searched {entry['candidates']} orders in {entry['search_seconds']:.2f}s"
        if source != "default":
            note += f", backtest MAE {entry['backtest_mae']:g} vs seasonal naive {entry['baseline_mae']:g}"
        counts[source] += 1
        label = _label(order, seasonal_order)
        log.info("%s: %s, %s", series, label, note)
        forecast = sarima.Model(y, order, seasonal_order).forecast(len(baseline[series]))
        rows += [
            (series, day, f"{pred:.2f}", f"{base:g}", label) for (day, base), pred in zip(baseline[series], forecast)
        ]
    out = predictions_file(run_id)
    write_csv(out, ["series", "date", "prediction", "baseline", "model"], rows)
    searchable = counts["cached"] + counts["searched"]
    if counts["searched"]:
        log.info(
            "grid search for %d/%d series took %.2fs; orders cached in modelling/cache/sarima_params",
            counts["searched"],
            searchable,
            search_seconds,
        )
    if counts["cached"]:
        log.info("reused cached SARIMA orders for %d/%d series (grid search skipped)", counts["cached"], searchable)
    log.info("wrote %s (%d series)", out.name, len(history))
    return counts
