"""Where the scraping stage keeps its data (app-relative, like every path here)."""

from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]
SCRAPED_DIR = APP_ROOT / "scraping" / "scraped_data"


def prices_file(run_id: str) -> Path:
    return SCRAPED_DIR / f"prices-{run_id}.csv"
