#!/bin/sh
# Demo pipeline orchestrator (stands in for the guide's run_pipeline.py).
# POSIX sh so it runs on any base image, busybox included. It knows nothing
# about the file share: it reads and writes its data directories by their
# usual app-relative paths, and sharelink has made those symlinks.
#
# Knobs (environment), used by the smoke test and handy for demos:
#   PIPELINE_EXIT=N       exit with status N after the work     (default 0)
#   PIPELINE_HOLD=S       then stay running S seconds, like a long job (default 0)
#   PIPELINE_ORPHANS=N    spawn N background processes that outlive their
#                         parent (orphans re-parented to PID 1)  (default 0)
#   PIPELINE_ORPHAN_LIFE=S  how long each orphan lives           (default 1)
set -eu
cd "$(dirname "$0")"

# Unique per run, also for a restart within the same second (same hostname,
# same pid): a random suffix.
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$(cat /proc/sys/kernel/hostname)-$(head -c 8 /proc/sys/kernel/random/uuid)"
export RUN_ID
log() { echo "pipeline[$RUN_ID]: $*"; }

log "start as uid $(id -u) in $(pwd)"
sh scraping/src/scrape.sh
sh forecasting/src/forecast.sh
sh modelling/src/model.sh

n="${PIPELINE_ORPHANS:-0}"
if [ "$n" -gt 0 ]; then
    i=0
    while [ "$i" -lt "$n" ]; do
        # The subshell exits at once, so its `sleep` is re-parented to init.
        ( sleep "${PIPELINE_ORPHAN_LIFE:-1}" & )
        i=$((i + 1))
    done
    log "spawned $n orphan(s)"
fi

hold="${PIPELINE_HOLD:-0}"
if [ "$hold" != 0 ]; then
    log "holding for ${hold}s (a long-running job; no signal handlers, like most scripts)"
    sleep "$hold"
fi

code="${PIPELINE_EXIT:-0}"
log "done, exit $code"
exit "$code"
