"""A stand-in for your app: reads baked reference data, writes a result.

It handles SIGTERM itself (sharelink forwards `docker stop`'s SIGTERM
unchanged), so a stop runs the `finally` block and exits 0.
"""

import os
import signal
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent


def on_term(signum, frame):
    raise SystemExit(0)


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    ref = (APP / "reference" / "cities.csv").read_text(encoding="utf-8")
    out = APP / "data" / "results" / "summary.txt"
    try:
        out.write_text(f"{len(ref.splitlines()) - 1} cities, uid {os.getuid()}\n", encoding="utf-8")
        print(f"wrote {out}: {out.read_text(encoding='utf-8').strip()}")
        time.sleep(int(os.environ.get("APP_HOLD", "0")))
    finally:
        print("cleaned up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
