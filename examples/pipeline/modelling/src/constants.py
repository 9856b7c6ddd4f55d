"""Where the modelling stage keeps its caches and predictions (app-relative)."""

from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = APP_ROOT / "modelling" / "cache"
SARIMA_PARAMS_DIR = CACHE_DIR / "sarima_params"
DEFAULT_PARAMS_FILE = SARIMA_PARAMS_DIR / "default.json"
PREDICTIONS_DIR = APP_ROOT / "modelling" / "predictions"

# A series needs this many observations for a grid search; shorter ones use
# the shipped default orders.
MIN_OBS_FOR_SEARCH = 8 * 7
# Cached orders are searched again after this long: the data drifts.
PARAMS_MAX_AGE_DAYS = 7

# The grid: SARIMA(p,d,q)(P,D,Q)s orders tried per series.
GRID = {
    "p": [0, 1, 2, 3],
    "d": [0, 1],
    "q": [0, 1, 2],
    "P": [0, 1],
    "D": [0, 1],
    "Q": [0, 1],
}


def params_file(series: str) -> Path:
    return SARIMA_PARAMS_DIR / f"{series}.json"


def predictions_file(run_id: str) -> Path:
    return PREDICTIONS_DIR / f"predictions-{run_id}.csv"
