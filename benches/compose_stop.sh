#!/usr/bin/env bash
# How long `docker-compose stop` takes for the long-running Python pipeline,
# and whether it stopped cleanly, with sharelink as PID 1 against the same
# image with a shell entrypoint.
#
#   bash benches/compose_stop.sh [RUNS]        (default 3 runs per variant)
#
# Variants (same image, same pipeline: examples/pipeline/run_pipeline.py with
# PIPELINE_HOLD and PIPELINE_SIGTERM=default, so that like most Python
# programs it has no SIGTERM handler, and Ctrl-C/SIGINT makes it write its
# checkpoint in a `finally`):
#   sharelink       sharelink run --rewrite TERM:INT-if-uncaught
#   no-rewrite      ENTRYPOINT ["sharelink","run","--"] (the image's: SIGTERM
#                   forwarded as is)
#   sh-wrapper      sh -c 'sharelink link && python3 /app/run_pipeline.py'
#                   (the guide's entrypoint-script pattern: sh is PID 1)
#   sh-exec         sh -c 'sharelink link && exec python3 /app/run_pipeline.py'
#                   (the pipeline itself is PID 1)
# PID 1 gets no default signal actions from the kernel, so unless it handles
# SIGTERM Docker waits stop_grace_period (10s) and SIGKILLs: exit 137.
# "clean" is whether the pipeline's `finally` wrote its checkpoint.
#
# Environment: SHARELINK_BIN (skip the cargo build), SHARELINK_BASE_IMAGE,
# STOP_VARIANTS (a space-separated subset of the variants above).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${1:-3}"
ID="$(date +%s)$$"
PROJECT="slbench${ID}"
IMAGE="sharelink-bench:${ID}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-bench.XXXXXX")"
t() { local s="$1"; shift; timeout -k 5 "$s" "$@"; }
cleanup() {
    set +e
    t 60 docker-compose -p "$PROJECT" -f docker-compose.yml down -v -t 1 >/dev/null 2>&1
    t 60 docker rmi -f "$IMAGE" >/dev/null 2>&1
    rm -rf "$WORK" 2>/dev/null ||
        { t 60 docker run --rm -v "$WORK:/w" "$BASE" sh -c 'rm -rf /w/* /w/.[!.]*' >/dev/null 2>&1; rm -rf "$WORK"; }
}
trap cleanup EXIT

BASE="${SHARELINK_BASE_IMAGE:-$(t 1200 bash tests/docker/make-python-base.sh)}"
if [ -z "${SHARELINK_BIN:-}" ]; then
    t 1200 cargo build --release --locked --target x86_64-unknown-linux-musl >"$WORK/cargo.log" 2>&1 ||
        { cat "$WORK/cargo.log"; exit 1; }
    SHARELINK_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-musl/release/sharelink"
fi
mkdir -p "$WORK/context/dist"
cp -a Dockerfile .dockerignore config examples "$WORK/context/"
cp "$SHARELINK_BIN" "$WORK/context/dist/sharelink"
t 600 docker build -q --target prebuilt --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" "$WORK/context" >/dev/null

export SHARELINK_IMAGE="$IMAGE" SHARELINK_SHARE_DIR="$WORK/share" PIPELINE_HOLD=300 PIPELINE_SIGTERM=default
mkdir -p "$SHARELINK_SHARE_DIR"
: >"$WORK/empty.env"

variant_file() { # NAME -> compose override file
    local f="$WORK/$1.yml"
    case "$1" in
    sharelink) printf 'services:\n  app:\n    entrypoint: ["/usr/local/bin/sharelink", "run", "--rewrite", "TERM:INT-if-uncaught", "--"]\n    command: ["python3", "/app/run_pipeline.py"]\n' >"$f" ;;
    no-rewrite) printf 'services:\n  app: {}\n' >"$f" ;;
    sh-wrapper) printf 'services:\n  app:\n    entrypoint: ["/bin/sh", "-c", "/usr/local/bin/sharelink link && python3 /app/run_pipeline.py"]\n    command: []\n' >"$f" ;;
    sh-exec) printf 'services:\n  app:\n    entrypoint: ["/bin/sh", "-c", "/usr/local/bin/sharelink link && exec python3 /app/run_pipeline.py"]\n    command: []\n' >"$f" ;;
    esac
    echo "$f"
}
CHECKPOINT="$SHARELINK_SHARE_DIR/modelling/cache/checkpoint.json"
read -r -a VARIANTS <<<"${STOP_VARIANTS:-sharelink no-rewrite sh-wrapper sh-exec}"

printf '%-12s %-6s %-10s %-10s %s\n' variant run "stop (s)" "exit code" clean
for v in "${VARIANTS[@]}"; do
    f="$(variant_file "$v")"
    dc() { t 120 docker-compose --env-file "$WORK/empty.env" -p "$PROJECT" -f docker-compose.yml -f "$f" --ansi never "$@"; }
    for r in $(seq 1 "$RUNS"); do
        dc up -d --force-recreate >/dev/null 2>&1
        c="$(dc ps -q app)"
        ok=0
        for _ in $(seq 1 150); do # up to 30s for the pipeline to be holding
            if t 10 docker logs "$c" 2>&1 | grep -q "holding for"; then ok=1; break; fi
            [ "$(t 10 docker inspect -f '{{.State.Running}}' "$c")" = true ] || break
            sleep 0.2
        done
        if [ "$ok" != 1 ]; then
            printf '%-12s %-6s %-10s %s\n' "$v" "$r" "-" "did not start: $(t 10 docker logs "$c" 2>&1 | tail -n1)"
            continue
        fi
        sleep 0.5
        start=$(date +%s.%N)
        dc stop >/dev/null 2>&1
        end=$(date +%s.%N)
        code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$c")"
        secs="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"
        clean=no
        grep -q '"status": "interrupted"' "$CHECKPOINT" 2>/dev/null && clean=yes
        printf '%-12s %-6s %-10s %-10s %s\n' "$v" "$r" "$secs" "$code" "$clean"
        echo "$v $secs $code $clean" >>"$WORK/results"
    done
    dc down -t 1 >/dev/null 2>&1
done
echo
echo "median stop time per variant:"
for v in "${VARIANTS[@]}"; do
    grep "^$v " "$WORK/results" 2>/dev/null | awk '{ print $2, $3, $4 }' | sort -n |
        awk -v v="$v" '{ t[NR] = $1; c[$2]++; if ($3 == "yes") k++ } END {
            if (NR == 0) { printf "  %-12s no runs\n", v; exit }
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            codes = ""; for (x in c) codes = codes " " x "x" c[x]
            printf "  %-12s %6.2fs  (n=%d, exit codes:%s, clean %d/%d)\n", v, m, NR, codes, k + 0, NR }'
done
