#!/usr/bin/env python3
"""Demo pipeline: scrape -> forecast -> model.

It reads and writes only through its app-relative data directories
(forecasting/data, modelling/cache, modelling/predictions,
scraping/scraped_data) and knows nothing about where they live: in the
container they are symlinks into a file share, and no line here changes
because of it.

Stopping: Ctrl-C (SIGINT) stops it cleanly. The stage in progress leaves no
partial file, modelling/cache/checkpoint.json records which stages finished,
and the process then dies of SIGINT (exit status 130) as an interrupted
program should. The next run resumes after the finished stages. SIGTERM
(`docker stop`, a pod's deletion; sharelink forwards it unchanged) runs the
same cleanup: the program handles it as Ctrl-C, the one line a Python
program needs for a clean stop in a container.

Knobs (environment), for demos and tests:
  PIPELINE_EXIT=N          exit with status N after the work (default 0)
  PIPELINE_HOLD=S          then keep running S seconds, like a long job (default 0)
  PIPELINE_ORPHANS=N       leave N background processes behind whose parent
                           exits at once (orphans, re-parented to PID 1)
  PIPELINE_ORPHAN_LIFE=S   how long each orphan lives (default 1)
  PIPELINE_SIGTERM=default leave SIGTERM at Python's default (dies at once,
                           no cleanup), like most Python programs
"""

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from forecasting.src import forecast
from modelling.src import model
from pipeline_io import read_json, write_json
from scraping.src import scrape

APP_ROOT = Path(__file__).resolve().parent
CHECKPOINT_FILE = APP_ROOT / "modelling" / "cache" / "checkpoint.json"
STAGES = [("scrape", scrape.run), ("forecast", forecast.run), ("model", model.run)]

log = logging.getLogger("pipeline")


def setup_logging() -> None:
    # The same shape as sharelink's own lines: UTC time, level, source.
    logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03dZ %(levelname)5s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stdout,
    )


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    # Unique even for two starts in the same second on the same host.
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{socket.gethostname()}-{os.urandom(4).hex()}"


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"{name} must be an integer")


def resumable(previous) -> bool:
    """A run that was stopped before its stages were all done."""
    return (
        isinstance(previous, dict)
        and previous.get("status") == "interrupted"
        and isinstance(previous.get("stages_done"), list)
        and len(previous["stages_done"]) < len(STAGES)
    )


def spawn_orphans(n: int, life: int) -> None:
    # `sh` exits at once, so each `sleep` loses its parent and is re-parented
    # to PID 1, which has to reap it.
    for _ in range(n):
        subprocess.run(["sh", "-c", 'sleep "$1" &', "sh", str(life)], check=True)
    log.info("spawned %d orphan(s)", n)


def main() -> int:
    setup_logging()
    if os.environ.get("PIPELINE_SIGTERM") != "default":
        # SIGTERM unwinds like Ctrl-C: `finally` blocks and the checkpoint run.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    exit_code = env_int("PIPELINE_EXIT", 0)
    hold = env_int("PIPELINE_HOLD", 0)
    orphans = env_int("PIPELINE_ORPHANS", 0)

    previous = read_json(CHECKPOINT_FILE)
    if resumable(previous):
        state = json.loads(json.dumps(previous))
        state.update(status="running", resumed_at=now())
        previous_seconds = {}
    else:
        state = {"run_id": new_run_id(), "status": "running", "started_at": now(), "stages_done": [], "seconds": {}}
        previous_seconds = previous.get("seconds", {}) if isinstance(previous, dict) else {}
    state["pid"] = os.getpid()
    log.info("run %s: start as uid %d in %s", state["run_id"], os.getuid(), os.getcwd())
    if "resumed_at" in state:
        log.info("resuming the interrupted run after: %s", ", ".join(state["stages_done"]) or "no stage")

    current = None
    interrupted = False
    t_run = time.monotonic()
    try:
        write_json(CHECKPOINT_FILE, state)
        for name, stage in STAGES:
            if name in state["stages_done"]:
                log.info("%s: done in an earlier attempt, skipped", name)
                continue
            current = name
            t0 = time.monotonic()
            stage(state["run_id"])
            state["seconds"][name] = round(time.monotonic() - t0, 3)
            state["stages_done"].append(name)
            write_json(CHECKPOINT_FILE, state)
            before = previous_seconds.get(name)
            log.info(
                "%s: finished in %.2fs%s",
                name,
                state["seconds"][name],
                f" (previous run: {before:.2f}s)" if isinstance(before, (int, float)) else "",
            )
        current = None
        if orphans > 0:
            spawn_orphans(orphans, env_int("PIPELINE_ORPHAN_LIFE", 1))
        if hold > 0:
            current = "hold"
            log.info("holding for %ds (a long-running job)", hold)
            time.sleep(hold)
            current = None
        state["status"] = "completed"
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the checkpoint write short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupted = True
        state["status"] = "interrupted"
        state["interrupted_in"] = current
    except BaseException:
        state["status"] = "failed"
        state["failed_in"] = current
        raise
    finally:
        state["finished_at"] = now()
        write_json(CHECKPOINT_FILE, state)

    if interrupted:
        log.warning(
            "interrupted during %s after %.2fs; finished: %s; checkpoint written to %s",
            current or "shutdown",
            time.monotonic() - t_run,
            ", ".join(state["stages_done"]) or "no stage",
            CHECKPOINT_FILE.relative_to(APP_ROOT),
        )
        logging.shutdown()
        # Die of SIGINT, so that the parent sees how this run ended (exit 130).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    log.info("run %s: all stages done in %.2fs", state["run_id"], time.monotonic() - t_run)
    log.info("done, exit %d", exit_code)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
