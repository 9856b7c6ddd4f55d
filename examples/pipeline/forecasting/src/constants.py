"""Where the forecasting stage keeps its config and data (app-relative)."""

from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = APP_ROOT / "forecasting" / "config" / "forecasting.ini"
DATA_DIR = APP_ROOT / "forecasting" / "data"
INPUT_DIR = DATA_DIR / "input"
OUTPUT_DIR = DATA_DIR / "output"


def forecast_file(run_id: str) -> Path:
    return OUTPUT_DIR / f"forecast-{run_id}.csv"
