#!/usr/bin/env bash
# Container smoke test: the real Dockerfile and docker-compose.yml on a real
# Docker engine, with no image registry (Python base image made locally), and
# the demo Python pipeline (examples/pipeline/run_pipeline.py).
#
#   bash tests/docker/smoke.sh
#
# Checks:
#   (1) `up` runs the pipeline; the container's exit code is the pipeline's
#   (2) every data directory is a symlink into /mnt/fileshare; baked data is in
#       the host's share directory
#   (3) `restart` keeps the data and migrates nothing again; the second run
#       reuses the SARIMA orders cached on the share
#   (4) `stop` of a long-running pipeline is quick and graceful: sharelink
#       forwards SIGTERM unchanged and the pipeline's own handler runs its
#       `finally` (checkpoint written, exit 130); with that handler off
#       (PIPELINE_SIGTERM=default) Python dies of SIGTERM (143) and writes
#       nothing
#   (5) orphans spawned by the pipeline leave no zombies
#   (6) `up --scale app=4` on a fresh share: all linked, data migrated once
#   (7) docker-compose.prod.yml validates
#   (8) the troubleshooting steps of the docs: `ls -la` of the four links,
#       `echo test > forecasting/data/test.txt`, `docker-compose restart`,
#       `cat` it back, `sharelink link` re-run in the running container
#   (9) a first start with a few GiB baked (BIG_BYTES, default 3 GiB):
#       progress lines in the logs, `sharelink status` says migrating
# plus: the image builds from the Dockerfile's `prebuilt` target, require_mount
# sees the bind mount, no mount -> exit 69 with nothing touched, --user works.
#
# Environment:
#   SHARELINK_BIN=path    use this static binary instead of building one
#   SHARELINK_BASE_IMAGE  base image tag (default: tests/docker/make-python-base.sh)
#   SMOKE_KEEP=1          keep containers, image and temp dir for debugging
#
# Every docker command runs under `timeout`; the script cannot hang. Exit 0
# only when every check passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

ID="$(date +%s)$$"
PROJECT="slsmoke${ID}"
IMAGE="sharelink-smoke:${ID}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-smoke.XXXXXX")"
PROJECTS=()
EXTRA_IMAGES=()
FAILED=()
PASSED=0
T0=$SECONDS

say() { echo "--- $*"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED+=("$*"); echo "FAIL: $*"; }
# check DESCRIPTION COMMAND...: PASS/FAIL line from the command's status.
check() {
    local desc="$1"
    shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}
# Bounded docker commands: t SECONDS CMD...
t() { local s="$1"; shift; timeout -k 5 "$s" "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        echo "SMOKE_KEEP=1: keeping projects ${PROJECTS[*]:-}, image $IMAGE, dir $WORK"
        return
    fi
    for p in "${PROJECTS[@]:-}"; do
        [ -n "$p" ] || continue
        t 60 docker-compose -p "$p" -f "$ROOT/docker-compose.yml" down -v --remove-orphans -t 1 >/dev/null 2>&1
    done
    # Containers made with plain `docker run` carry our label.
    local ids
    ids="$(t 30 docker ps -aq --filter "label=sharelink-smoke=$ID" 2>/dev/null)"
    [ -z "$ids" ] || t 60 docker rm -f $ids >/dev/null 2>&1
    t 60 docker rmi -f "${EXTRA_IMAGES[@]}" "$IMAGE" >/dev/null 2>&1
    # Files written by containers may be root's; remove them from a container
    # when we are not root ourselves.
    rm -rf "$WORK" 2>/dev/null ||
        { t 60 docker run --rm -v "$WORK:/w" "$BASE" sh -c 'rm -rf /w/* /w/.[!.]*' >/dev/null 2>&1; rm -rf "$WORK"; }
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "smoke: interrupted"; exit 130' INT TERM

# --- prerequisites ---------------------------------------------------------
t 30 docker info >/dev/null 2>&1 || { echo "FAIL: docker engine not reachable"; exit 1; }
command -v docker-compose >/dev/null || { echo "FAIL: docker-compose not installed"; exit 1; }

BASE="${SHARELINK_BASE_IMAGE:-}"
if [ -z "$BASE" ]; then
    BASE="$(t 1200 bash "$ROOT/tests/docker/make-python-base.sh")"
fi

if [ -n "${SHARELINK_BIN:-}" ]; then
    BIN="$SHARELINK_BIN"
else
    say "building the static binary"
    t 1200 cargo build --release --locked --target x86_64-unknown-linux-musl >"$WORK/cargo.log" 2>&1 ||
        { cat "$WORK/cargo.log"; echo "FAIL: cargo build (is the x86_64-unknown-linux-musl target installed?)"; exit 1; }
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-musl/release/sharelink"
fi
[ -x "$BIN" ] || { echo "FAIL: no binary at $BIN"; exit 1; }

# Links from the config the image bakes: "app path" and share path per line.
LINKS=()   # "app_rel share_rel"
while IFS= read -r line; do
    app="$(sed -E 's/^"([^"]+)".*/\1/' <<<"$line")"
    share="$(sed -E 's/^"[^"]+"[[:space:]]*=[[:space:]]*(\{[^}]*share[[:space:]]*=[[:space:]]*)?"([^"]+)".*/\2/' <<<"$line")"
    LINKS+=("$app $share")
done < <(sed -n '/^\[links\]/,/^\[/p' config/sharelink.toml | grep -E '^"[^"]+"[[:space:]]*=')
[ "${#LINKS[@]}" -ge 1 ] || { echo "FAIL: could not read [links] from config/sharelink.toml"; exit 1; }
echo "links: $(printf '%s; ' "${LINKS[@]}")"

# Baked data: every file and symlink under the demo app's data directories.
APPSRC="$ROOT/examples/pipeline"
baked_list() { # -> "share_rel/path" lines, sorted
    local l app share
    for l in "${LINKS[@]}"; do
        app="${l%% *}"; share="${l#* }"
        [ -d "$APPSRC/$app" ] || continue
        (cd "$APPSRC/$app" && find . \( -type f -o -type l \) | sed "s#^\./#$share/#")
    done | sort
}
baked_list >"$WORK/baked.txt"
echo "baked data: $(wc -l <"$WORK/baked.txt") files/symlinks"

# --- image -----------------------------------------------------------------
say "building $IMAGE from Dockerfile (target prebuilt, BASE_IMAGE=$BASE)"
# A context of just what the runtime stages use, with the binary in dist/.
CTX="$WORK/context"
mkdir -p "$CTX/dist"
cp -a Dockerfile .dockerignore config examples "$CTX/"
cp "$BIN" "$CTX/dist/sharelink"
if t 600 docker build --target prebuilt --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" "$CTX" >"$WORK/build.log" 2>&1; then
    pass "image builds from the Dockerfile (target prebuilt)"
else
    tail -n 40 "$WORK/build.log"
    fail "image builds from the Dockerfile (target prebuilt)"
    exit 1
fi
ep="$(t 30 docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{if .Config.Healthcheck}}{{json .Config.Healthcheck.Test}}{{end}}' "$IMAGE" || true)"
echo "image config: $ep"
check "image: ENTRYPOINT sharelink run --, CMD the pipeline, HEALTHCHECK sharelink status" \
    grep -q '\["/usr/local/bin/sharelink","run","--"\] \["python3","/app/run_pipeline.py"\] \["CMD","/usr/local/bin/sharelink","status"\]' <<<"$ep"

# --- compose helpers ---------------------------------------------------------
export SHARELINK_IMAGE="$IMAGE" SHARELINK_BUILD_TARGET=prebuilt BASE_IMAGE="$BASE"
export SHARELINK_LOG=info
unset PIPELINE_EXIT PIPELINE_HOLD PIPELINE_ORPHANS PIPELINE_ORPHAN_LIFE
: >"$WORK/empty.env"
CUR=""      # current compose project
# new_project NAME SHARE_DIR: later `dc` calls use them.
new_project() {
    CUR="${PROJECT}$1"
    PROJECTS+=("$CUR")
    export SHARELINK_SHARE_DIR="$2"
    mkdir -p "$2"
}
# DC_OVERRIDE=FILE: a compose file merged over docker-compose.yml.
dc() {
    local files=(-f "$ROOT/docker-compose.yml")
    [ -z "${DC_OVERRIDE:-}" ] || files+=(-f "$DC_OVERRIDE")
    t "${DC_TIMEOUT:-120}" docker-compose --env-file "$WORK/empty.env" -p "$CUR" "${files[@]}" --ansi never "$@"
}
cids() { dc ps -q app 2>/dev/null; }
cid1() { cids | head -n1 || true; }
# wait_exit CID [SECONDS] -> prints the exit code
wait_exit() { t "${2:-${SMOKE_WAIT:-90}}" docker wait "$1" 2>/dev/null || echo "timeout"; }
logs() { t 30 docker logs "$1" 2>&1; }
# ex CID CMD...: run in the container (bypassing the entrypoint)
ex() { local c="$1"; shift; t 30 docker exec "$c" "$@"; }
# wait_log CID PATTERN SECONDS: until the logs show PATTERN; gives up early
# when the container is no longer running.
wait_log() {
    local until=$((SECONDS + $3))
    while ! logs_have "$1" "$2"; do
        running "$1" || { logs_have "$1" "$2"; return; }
        [ "$SECONDS" -lt "$until" ] || return 1
        sleep 0.2
    done
}
running() { [ "$(t 10 docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
# (grep reads everything: with pipefail, `grep -q` quitting early would fail
# the pipeline through docker's SIGPIPE.)
logs_have() { logs "$1" | grep -- "$2" >/dev/null; }
# wait_log_count CID PATTERN N SECONDS: until the logs show PATTERN N times
# (a restarted container keeps the logs of its earlier runs).
wait_log_count() {
    local until=$((SECONDS + $4))
    while [ "$(logs "$1" | grep -c -- "$2")" -lt "$3" ]; do
        [ "$SECONDS" -lt "$until" ] || return 1
        sleep 0.2
    done
}
# The container's app-side link entries, from its filesystem (works on
# stopped containers): "app_rel -> target" lines.
links_in() {
    local c="$1" l app
    for l in "${LINKS[@]}"; do
        app="${l%% *}"
        t 30 docker cp "$c:/app/$(dirname "$app")" - 2>/dev/null | tar -tvf - 2>/dev/null |
            awk -v want="$(basename "$(dirname "$app")")/$(basename "$app")" '$6 == want && $1 ~ /^l/ { print $6, $7, $8 }'
    done
}
# all_linked CID: every data directory is the absolute symlink into the share.
all_linked() {
    local c="$1" l app share got
    got="$(links_in "$c")"
    for l in "${LINKS[@]}"; do
        app="${l%% *}"; share="${l#* }"
        grep -qxF "$(basename "$(dirname "$app")")/$(basename "$app") -> /mnt/fileshare/$share" <<<"$got" ||
            { echo "  not linked: /app/$app (container ${c:0:12}); saw: ${got:-nothing}"; return 1; }
    done
}
# baked_on_share DIR: each baked file is on the share, byte for byte (symlinks
# as symlinks with the same target).
baked_on_share() {
    local dir="$1" rel src
    while IFS= read -r rel; do
        src="$(baked_src "$rel")"
        if [ -L "$src" ]; then
            [ -L "$dir/$rel" ] && [ "$(readlink "$dir/$rel")" = "$(readlink "$src")" ] ||
                { echo "  symlink missing or changed on share: $rel"; return 1; }
        else
            cmp -s "$src" "$dir/$rel" || { echo "  missing or different on share: $rel"; return 1; }
        fi
    done <"$WORK/baked.txt"
}
baked_src() { # share-relative path -> the baked file in $APPSRC
    local rel="$1" l app share
    for l in "${LINKS[@]}"; do
        app="${l%% *}"; share="${l#* }"
        case "$rel" in "$share"/*) echo "$APPSRC/$app/${rel#"$share"/}"; return ;; esac
    done
}
# Nothing displaced, no nested copies (data/data), nothing unexpected beside
# the link targets (staging leftovers), baked files exactly once.
share_clean() { # DIR [DISPLACED-OK...]: the glob patterns (relative to
    # .sharelink/displaced) of files that may have been set aside
    local dir="$1" l share ok=0 extra unexpected
    shift
    if [ -d "$dir/.sharelink/displaced" ]; then
        unexpected="$(cd "$dir/.sharelink/displaced" && find . ! -type d | sed 's#^\./##' | while IFS= read -r f; do
            allowed=0
            for pat in "$@"; do
                # shellcheck disable=SC2053
                [[ "$f" == $pat ]] && allowed=1
            done
            [ "$allowed" = 1 ] || echo "$f"
        done)"
        if [ -n "$unexpected" ]; then
            echo "  displaced files:"; sed 's/^/    /' <<<"$unexpected"; ok=1
        fi
    fi
    for l in "${LINKS[@]}"; do
        share="${l#* }"
        [ ! -e "$dir/$share/$(basename "$share")" ] || { echo "  nested copy: $share/$(basename "$share")"; ok=1; }
    done
    # Every entry on the share must be a link target, inside one, or one of
    # their parents (or sharelink's own .sharelink/).
    extra="$(cd "$dir" && find . -mindepth 1 -path ./.sharelink -prune -o -print | sed 's#^\./##' | while IFS= read -r p; do
        keep=0
        for l in "${LINKS[@]}"; do
            s="${l#* }"
            case "$s/" in "$p"/*) keep=1 ;; esac
            case "$p" in "$s" | "$s"/*) keep=1 ;; esac
        done
        [ "$keep" = 1 ] || echo "$p"
    done)"
    [ -z "$extra" ] || { echo "  unexpected entries on the share: $extra"; ok=1; }
    # Baked files exactly once: same names as baked, and no "copy" variants.
    local dup
    dup="$(cd "$dir" && while IFS= read -r rel; do
        d="$(dirname "$rel")"; b="$(basename "$rel")"
        find "$d" -maxdepth 1 -name "*${b}?*" ! -name "$b" 2>/dev/null
    done <"$WORK/baked.txt")"
    [ -z "$dup" ] || { echo "  baked files duplicated: $dup"; ok=1; }
    return $ok
}
count() { find "$1" -maxdepth 1 -name "$2" 2>/dev/null | wc -l; }
# What the pipeline writes per run: "directory glob" (share-relative).
RUN_OUTPUTS=("scraping/scraped_data prices-*.csv" "forecasting/data/output forecast-*.csv"
    "modelling/predictions predictions-*.csv")
# What it writes once and then updates: the SARIMA orders it searched (the
# series long enough for a search) and its checkpoint.
SEARCHED_SERIES=(price_gadget price_widget sales temperature visitors)
CHECKPOINT=modelling/cache/checkpoint.json
outputs_are() { # DIR N: each data directory got N pipeline outputs
    local dir="$1" n="$2" got spec s
    for spec in "${RUN_OUTPUTS[@]}"; do
        got="$(count "$dir/${spec%% *}" "${spec#* }")"
        [ "$got" = "$n" ] || { echo "  $dir/${spec%% *}: $got outputs, want $n"; return 1; }
    done
    for s in "${SEARCHED_SERIES[@]}"; do
        [ -s "$dir/modelling/cache/sarima_params/$s.json" ] || { echo "  no cached orders for $s"; return 1; }
    done
    [ -s "$dir/$CHECKPOINT" ] || { echo "  no $CHECKPOINT"; return 1; }
}
# Share-relative paths of pipeline outputs, one per line on stdin -> the rest.
not_outputs() {
    grep -vE "^(scraping/scraped_data/prices|forecasting/data/output/forecast|modelling/predictions/predictions)-[^/]*\.csv$|^modelling/cache/sarima_params/($(
        IFS='|'; echo "${SEARCHED_SERIES[*]}"))\.json$|^$CHECKPOINT$" || true
}
# checkpoint_is DIR STATUS [FIELD VALUE]: the pipeline's checkpoint says so.
checkpoint_is() {
    local f="$1/$CHECKPOINT"
    grep -q "\"status\": \"$2\"" "$f" 2>/dev/null &&
        { [ -z "${3:-}" ] || grep -q "\"$3\": \"$4\"" "$f"; } ||
        { echo "  $CHECKPOINT: $(tr -d '\n' <"$f" 2>/dev/null || echo missing)"; return 1; }
}
# bake_image TAG FILES BYTES: an image with more data baked into
# /app/forecasting/data/input/bulk (FILES small files and one of BYTES random
# bytes) than the demo has, built FROM $IMAGE. Points APPSRC at a copy of the
# demo app with the same files; `baked_list >"$WORK/baked.txt"` afterwards
# makes the baked-data checks cover them. A few GiB: BYTES=$((3 << 30)).
bake_image() {
    local tag="$1" files="$2" bytes="$3" ctx="$WORK/bake-${1##*:}"
    APPSRC="$WORK/app-${1##*:}"
    rm -rf "$APPSRC" "$ctx"
    cp -a "$ROOT/examples/pipeline" "$APPSRC"
    mkdir -p "$APPSRC/forecasting/data/input/bulk" "$ctx"
    (cd "$APPSRC/forecasting/data/input/bulk" && for i in $(seq 1 "$files"); do echo "row $i" >"part-$i.csv"; done)
    head -c "$bytes" /dev/urandom >"$APPSRC/forecasting/data/input/bulk/big.bin"
    cp -al "$APPSRC/forecasting/data/input/bulk" "$ctx/bulk"
    printf 'FROM %s\nCOPY bulk/ /app/forecasting/data/input/bulk/\n' "$IMAGE" >"$ctx/Dockerfile"
    if t 900 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$ctx.log"; then
        EXTRA_IMAGES+=("$tag")
        rm -rf "$ctx"
    else
        cat "$ctx.log"
        APPSRC="$ROOT/examples/pipeline"
        return 1
    fi
}
snapshot() { # DIR -> inode/size/mtime of the baked files
    (cd "$1" && while IFS= read -r rel; do stat -c '%n %i %s %Y' "$rel"; done <"$WORK/baked.txt") 2>&1
}
zombies() { # CID -> number of zombie processes in the container
    ex "$1" sh -c 'n=0; for s in /proc/[0-9]*/status; do grep -q "^State:[[:space:]]*Z" "$s" 2>/dev/null && n=$((n+1)); done; echo $n'
}
adopted_sleeps() { # CID -> number of `sleep` processes whose parent is PID 1
    ex "$1" sh -c 'n=0; for d in /proc/[0-9]*; do
        [ "$(cat $d/comm 2>/dev/null)" = sleep ] && grep -q "^PPid:[[:space:]]*1$" $d/status 2>/dev/null && n=$((n+1)); done; echo $n'
}
# (8) The docs' troubleshooting steps, typed as a user would, against the
# running container CID of the current project (its pipeline holds).
troubleshooting_steps() {
    local c="$1" l app share out code start secs
    say "(8) troubleshooting steps: ls -la, echo test, restart, cat, sharelink link"
    for l in "${LINKS[@]}"; do
        app="${l%% *}"; share="${l#* }"
        out="$(dc exec -T app ls -la "$app" 2>&1)" || true
        echo "    \$ ls -la $app"; echo "    $out"
        check "(8) ls -la $app: a symlink to /mnt/fileshare/$share" \
            bash -c '[[ "$1" == l* && "$1" == *" $2 -> /mnt/fileshare/$3" ]]' _ "$out" "$app" "$share"
    done
    check "(8) echo test > forecasting/data/test.txt" dc exec -T app sh -c 'echo "test" > forecasting/data/test.txt'
    start=$(date +%s.%N)
    dc restart >/dev/null 2>&1 || true
    secs="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    echo "    docker-compose restart took ${secs}s"
    if wait_log_count "$c" "holding for" 2 60; then
        out="$(dc exec -T app cat forecasting/data/test.txt 2>&1)" || true
        check "(8) after docker-compose restart, cat forecasting/data/test.txt gives test (got: $out)" test "$out" = test
        check "(8) ... and the file is on the host's share directory" grep -qx test "$SHARELINK_SHARE_DIR/forecasting/data/test.txt"
        code=0
        out="$(dc exec -T app sharelink link 2>&1)" || code=$?
        check "(8) sharelink link re-run in the running container exits 0 (got $code)" test "$code" = 0
        [ "$code" = 0 ] || echo "$out" | sed 's/^/  /'
        check "(8) ... and everything is still linked" all_linked "$c"
    else
        show_logs
        fail "(8) the pipeline did not come back after docker-compose restart"
    fi
}
# stop_gracefully CID LABEL: `docker-compose stop` of the holding pipeline of
# the current project is quick; the pipeline handles the forwarded SIGTERM as
# Ctrl-C: its `finally` writes the checkpoint, then it dies of SIGINT.
stop_gracefully() {
    local c="$1" label="$2" start secs code before
    check "$label before the stop, the checkpoint says running" checkpoint_is "$SHARELINK_SHARE_DIR" running
    before="$(logs "$c" | grep -c "interrupted during hold" || true)"
    start=$(date +%s.%N)
    dc stop >/dev/null 2>&1 || true
    secs="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    echo "    docker-compose stop took ${secs}s"
    check "$label stop returned in ${secs}s (< 5s; Docker's kill deadline is 10s)" awk -v s="$secs" 'BEGIN { exit !(s < 5) }'
    code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$c" 2>/dev/null || echo none)"
    check "$label Python handled SIGTERM as Ctrl-C, cleaned up and died of SIGINT: exit 130 (got $code)" test "$code" = 130
    check "$label Python's finally ran: the checkpoint says interrupted during hold" \
        checkpoint_is "$SHARELINK_SHARE_DIR" interrupted interrupted_in hold
    check "$label ... and the pipeline logged its clean stop" \
        test "$(logs "$c" | grep -c "interrupted during hold" || true)" = "$((before + 1))"
}
show_logs() { for c in $(cids); do echo "  --- logs of ${c:0:12}"; logs "$c" | tail -n 25 | sed 's/^/  | /'; done; }

# --- (7) prod file ---------------------------------------------------------
say "(7) docker-compose.prod.yml"
prod() { t 60 docker-compose --env-file "$WORK/empty.env" -f "$ROOT/docker-compose.prod.yml" "$@"; }
if AZURE_STORAGE_ACCOUNT=dummyaccount AZURE_STORAGE_KEY='ZHVtbXk+a2V5/w==' AZURE_FILE_SHARE=dummyshare \
    prod config >"$WORK/prod.yml" 2>"$WORK/prod.err"; then
    pass "(7) prod compose file validates with dummy env"
    missing=""
    for opt in vers=3.1.1 mfsymlinks nobrl serverino nosharesock actimeo=30 uid= gid= file_mode= dir_mode= \
        addr=dummyaccount.file.core.windows.net username=dummyaccount 'password=ZHVtbXk+a2V5/w=='; do
        grep -q -- "o:.*$opt" "$WORK/prod.yml" || missing="$missing $opt"
    done
    grep -q 'type: cifs' "$WORK/prod.yml" || missing="$missing type=cifs"
    grep -q 'device: //dummyaccount.file.core.windows.net/dummyshare' "$WORK/prod.yml" || missing="$missing device"
    grep -q "SHARELINK_REQUIRE_MOUNT: 'true'\|SHARELINK_REQUIRE_MOUNT: \"true\"" "$WORK/prod.yml" || missing="$missing require_mount"
    check "(7) prod volume: cifs with all mount options, require_mount on${missing:+ (missing:$missing)}" test -z "$missing"
    # Its `entrypoint` drops the image's CMD: its `command` must be the same.
    prod_cmd="$(awk '/^    command:/ { f = 1; next } f && /^    - / { sub(/^    - /, ""); a = a (a ? "," : "") "\"" $0 "\""; next }
        f { exit } END { print "[" a "]" }' "$WORK/prod.yml")"
    image_cmd="$(t 30 docker image inspect -f '{{json .Config.Cmd}}' "$IMAGE")"
    check "(7) prod: entrypoint --user app, and command is the image's CMD ($prod_cmd, want $image_cmd)" \
        bash -c 'grep -q -- "- --user" "$1" && [ "$2" = "$3" ]' _ "$WORK/prod.yml" "$prod_cmd" "$image_cmd"
else
    cat "$WORK/prod.err"
    fail "(7) prod compose file validates with dummy env"
fi
check "(7) prod compose file refuses to render without the Azure credentials" \
    bash -c '! env -u AZURE_STORAGE_ACCOUNT -u AZURE_STORAGE_KEY -u AZURE_FILE_SHARE \
        timeout 60 docker-compose --env-file "$1" -f "$2" config >/dev/null 2>&1' _ "$WORK/empty.env" "$ROOT/docker-compose.prod.yml"

# --- no mount: refuse ------------------------------------------------------
say "require_mount without a mount"
printf 'app_root = "/app"\nshare_root = "/mnt/fileshare"\nrequire_mount = true\nmount_timeout = "1s"\n[links]\n' >"$WORK/nomount.toml"
sed -n '/^\[links\]/,/^\[/p' config/sharelink.toml | grep -E '^"' >>"$WORK/nomount.toml"
c="$(t 60 docker create --label "sharelink-smoke=$ID" -v "$WORK/nomount.toml:/etc/sharelink/nomount.toml:ro" \
    -e SHARELINK_CONFIG=/etc/sharelink/nomount.toml "$IMAGE" 2>/dev/null)" || c=""
if [ -n "$c" ] && t 30 docker start "$c" >/dev/null 2>&1; then
    code="$(wait_exit "$c" 60)"
    check "no share mounted: exit 69 (got $code)" test "$code" = 69
    check "no share mounted: nothing linked" test -z "$(links_in "$c")"
    check "no share mounted: baked data still in the image's directories" \
        bash -c 'timeout 30 docker cp "$1:/app/forecasting/data" - | tar -tf - | grep -q "data/input/sales.csv$"' _ "$c"
    t 30 docker rm -f "$c" >/dev/null 2>&1 || true
else
    fail "no share mounted: could not start a container"
fi

# --- scenario A: one replica -------------------------------------------------
SHARE_A="$WORK/share-a"
new_project a "$SHARE_A"
check "local compose file validates" dc config -q

say "(1) up runs the pipeline; exit code is the pipeline's"
PIPELINE_EXIT=0 dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "(1) docker-compose up -d"; }
C="$(cid1)"
if [ -n "$C" ]; then
    code="$(wait_exit "$C")"
    check "(1) up: pipeline ran and the container exited 0 (got $code)" \
        bash -c '[ "$1" = 0 ] && grep -q "pipeline: done, exit 0" <<<"$2"' _ "$code" "$(logs "$C")"
    [ "$code" = 0 ] || show_logs
    check "(1) first run on a fresh share: the pipeline searched the SARIMA orders of every series" \
        logs_have "$C" "grid search for ${#SEARCHED_SERIES[@]}/${#SEARCHED_SERIES[@]} series"
    first_model="$(logs "$C" | sed -nE 's/.*pipeline: model: finished in ([0-9.]+)s.*/\1/p' | tail -n1)"
    logs "$C" | grep -E 'migrated|linked' | sed 's/^/    sharelink log: /' || true
    say "(2) data directories are symlinks into the share; baked data is on the host"
    check "(2) container: every data directory -> /mnt/fileshare/<share path>" all_linked "$C"
    check "(2) host share dir holds every baked file (byte-identical, symlinks kept)" baked_on_share "$SHARE_A"
    check "(2) host share dir: pipeline outputs landed in every data directory" outputs_are "$SHARE_A" 1
    check "(2) host share dir: nothing displaced, nested or left behind" share_clean "$SHARE_A"
else
    fail "(1) up: no container"
fi

# Exit code through `up` itself (attached), non-zero.
code=0
PIPELINE_EXIT=7 dc up --exit-code-from app >"$WORK/up7.log" 2>&1 || code=$?
check "(1) up --exit-code-from app returns the pipeline's non-zero status (7, got $code)" test "$code" = 7
[ "$code" = 7 ] || tail -n 20 "$WORK/up7.log"
C="$(cid1)"
code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$C" 2>/dev/null || echo none)"
check "(1) container exit code is the pipeline's (7, got $code)" test "$code" = 7
# A new container (its environment changed), the same share.
check "(3) second run: reused the SARIMA orders cached on the share (grid search skipped)" \
    grep -q "reused cached SARIMA orders for ${#SEARCHED_SERIES[@]}/${#SEARCHED_SERIES[@]} series" "$WORK/up7.log"
second_model="$(sed -nE 's/.*pipeline: model: finished in ([0-9.]+)s.*/\1/p' "$WORK/up7.log" | tail -n1)"
echo "    model stage: first run ${first_model:-?}s, second run ${second_model:-?}s"
check "(3) second run: the model stage is faster (${second_model:-?}s < ${first_model:-?}s)" \
    awk -v a="${first_model:-0}" -v b="${second_model:-x}" 'BEGIN { exit !(b != "x" && b + 0 < a + 0) }'

say "(3) restart keeps the data and does not migrate again"
{ echo "written by the smoke test" >"$SHARE_A/forecasting/data/marker.txt"; } 2>/dev/null ||
    echo "  (could not write a marker: no forecasting/data on the share)"
before="$(snapshot "$SHARE_A" || true)"
nlog="$(logs "$C" | wc -l)"
dc restart -t 5 >/dev/null 2>&1 || true
code="$(wait_exit "$C")"
rlog="$(logs "$C" | tail -n +"$((nlog + 1))")"
grep -E 'migrated|linked' <<<"$rlog" | sed 's/^/    sharelink log after restart: /' || true
check "(3) restart: sharelink's log reports no file migrated (no 'migrated N files', N > 0)" \
    bash -c '! grep -qE "migrated [1-9][0-9]* files" <<<"$1"' _ "$rlog"
after="$(snapshot "$SHARE_A" || true)"
check "(3) restart: pipeline ran again (exit 7, got $code)" test "$code" = 7
check "(3) restart: baked files on the share are the same files (inode, size, mtime)" test "$before" = "$after"
[ "$before" = "$after" ] || diff <(echo "$before") <(echo "$after") | sed 's/^/  /'
check "(3) restart: user data kept" grep -qs "written by the smoke test" "$SHARE_A/forecasting/data/marker.txt"
check "(3) restart: outputs of both runs kept (3 runs so far)" outputs_are "$SHARE_A" 3
check "(3) restart: still linked" all_linked "$C"
check "(3) restart: nothing displaced, nested or left behind" share_clean "$SHARE_A"

say "(4) stop of a long-running pipeline; recreate on a used share"
# A new container has the baked data in its image again while the share
# already has it: identical files are dropped from the app side, the share's
# edited file stays, and the baked version of that file, which differs, is
# set aside (never dropped).
{ echo "2024-04-22,131" >>"$SHARE_A/forecasting/data/input/sales.csv"; } 2>/dev/null || true
edited="$({ cksum <"$SHARE_A/forecasting/data/input/sales.csv"; } 2>/dev/null || echo missing)"
before="$(snapshot "$SHARE_A" || true)"
PIPELINE_HOLD=300 dc up -d --force-recreate >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "(4) up -d (hold)"; }
C="$(cid1)"
if [ -n "$C" ] && wait_log "$C" "holding for" 60; then
    pass "(4) recreated container started the long-running pipeline"
    check "(2) running container: /mnt/fileshare is a mount point in /proc/self/mountinfo" \
        ex "$C" grep -q ' /mnt/fileshare ' /proc/self/mountinfo
    check "(2) running container: sharelink status exits 0 (HEALTHCHECK)" ex "$C" /usr/local/bin/sharelink status
    check "(2) running container: every data directory resolves into the share" \
        ex "$C" sh -c 'for d in forecasting/data modelling/cache modelling/predictions scraping/scraped_data; do
            case "$(readlink "/app/$d")" in /mnt/fileshare/*) ;; *) exit 1 ;; esac; done'
    check "(3) recreate: user data visible through the link" ex "$C" grep -q "smoke test" /app/forecasting/data/marker.txt
    check "(3) recreate: nothing displaced but the baked version of the edited file, nothing nested or left behind" \
        share_clean "$SHARE_A" "forecasting/data/*/input/sales.csv"
    check "(3) recreate: the baked version of the file edited on the share is set aside, byte for byte" \
        bash -c 'src="$2"; set -- "$1"/.sharelink/displaced/forecasting/data/*/input/sales.csv; [ $# = 1 ] && cmp -s "$1" "$src"' \
        _ "$SHARE_A" "$APPSRC/forecasting/data/input/sales.csv"
    check "(3) recreate: the share wins (a file edited on the share is not overwritten by the baked copy)" \
        test "$edited" = "$({ cksum <"$SHARE_A/forecasting/data/input/sales.csv"; } 2>/dev/null || echo gone)"
    after="$(snapshot "$SHARE_A" || true)"
    check "(3) recreate: baked files on the share are the same files (inode, size, mtime)" test "$before" = "$after"
    [ "$before" = "$after" ] || diff <(echo "$before") <(echo "$after") | sed 's/^/  /'
    troubleshooting_steps "$C"
    stop_gracefully "$C" "(4)"
else
    show_logs
    fail "(4) long-running pipeline did not start"
fi

say "(4) control: the same stop of a pipeline without a SIGTERM handler"
PIPELINE_SIGTERM=default PIPELINE_HOLD=300 dc up -d --force-recreate >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "(4) up -d (no rewrite)"; }
C="$(cid1)"
if [ -n "$C" ] && wait_log "$C" "holding for" 60; then
    start=$(date +%s.%N)
    dc stop >/dev/null 2>&1 || true
    secs="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')"
    code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$C" 2>/dev/null || echo none)"
    echo "    docker-compose stop without a handler took ${secs}s, exit $code"
    check "(4) control: without a handler Python dies of SIGTERM (exit 143, got $code)" test "$code" = 143
    check "(4) control: ... and its finally never ran (checkpoint still says running)" checkpoint_is "$SHARE_A" running
    check "(4) control: ... and it logged nothing on the way out" bash -c '! grep -q "interrupted during" <<<"$1"' _ "$(logs "$C")"
else
    show_logs
    fail "(4) control: long-running pipeline did not start"
fi
DC_OVERRIDE=""

say "(5) orphans leave no zombies"
PIPELINE_HOLD=300 PIPELINE_ORPHANS=8 PIPELINE_ORPHAN_LIFE=2 dc up -d --force-recreate >"$WORK/up.log" 2>&1 ||
    { cat "$WORK/up.log"; fail "(5) up -d (orphans)"; }
C="$(cid1)"
if [ -n "$C" ] && wait_log "$C" "spawned 8 orphan" 60; then
    n="$(adopted_sleeps "$C" || echo "?")"
    echo "    orphans adopted by PID 1 right after spawning: $n"
    sleep 4
    check "(5) orphans were adopted by PID 1 and have exited" test "$(adopted_sleeps "$C")" = 0
    z="$(zombies "$C" || echo "?")"
    check "(5) no zombies in the container (got $z)" test "$z" = 0
    check "(5) pipeline still running" running "$C"
    dc stop >/dev/null 2>&1 || true
    code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$C" 2>/dev/null || echo none)"
    check "(5) stopped: exit 130 (got $code)" test "$code" = 130
else
    show_logs
    fail "(5) pipeline with orphans did not start"
fi

say "extra: --user app (non-root pipeline)"
code=0
out="$(dc run --rm --no-deps --entrypoint /usr/local/bin/sharelink app run --user app -- id -u 2>&1)" || code=$?
check "--user app: pipeline runs as uid 10001 (exit $code)" bash -c '[ "$1" = 0 ] && grep -qx "10001" <<<"$2"' _ "$code" "$out"
[ "$code" = 0 ] || echo "$out" | tail -n 10 | sed 's/^/  /'
dc down -v -t 1 >/dev/null 2>&1 || true
# The whole pipeline as `app` on a fresh share: it must be able to write into
# every data directory, baked ones and ones that linking creates.
new_project u "$WORK/share-u"
code=0
out="$(dc run --rm --entrypoint /usr/local/bin/sharelink app run --user app -- python3 /app/run_pipeline.py 2>&1)" || code=$?
check "--user app: the demo pipeline runs as uid 10001 on a fresh share and writes every data directory (exit $code)" \
    bash -c '[ "$1" = 0 ] && grep -q "start as uid 10001" <<<"$2"' _ "$code" "$out"
[ "$code" = 0 ] || echo "$out" | tail -n 15 | sed 's/^/  /'
check "--user app: outputs on the share" outputs_are "$WORK/share-u" 1
dc down -v -t 1 >/dev/null 2>&1 || true

# --- scenario B: 4 replicas on a fresh share ---------------------------------
say "(6) up --scale app=4 on a fresh share"
# The demo's baked data moves in milliseconds; replicas would rarely overlap.
# An image with more baked data (BULK_FILES small files plus one of 32 MiB)
# keeps the first migration busy while the other replicas start.
if bake_image "$IMAGE-heavy" "${BULK_FILES:-3000}" $((32 << 20)); then
    export SHARELINK_IMAGE="$IMAGE-heavy"
else
    fail "(6) build the image with more baked data"
fi
baked_list >"$WORK/baked.txt"
echo "baked data: $(wc -l <"$WORK/baked.txt") files/symlinks"
SHARE_B="$WORK/share-b"
new_project b "$SHARE_B"
dc up -d --scale app=4 >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "(6) up --scale app=4"; }
mapfile -t CS < <(cids)
check "(6) 4 replicas started (got ${#CS[@]})" test "${#CS[@]}" = 4
# One deadline for all four: the first replica migrates the baked data while
# the others wait for its lock, and on a loaded machine (CI builds the
# release alongside) that took longer than one replica's 90 s.
codes=""
started=$SECONDS
deadline=$((SECONDS + ${SMOKE_SCALE_WAIT:-600}))
for c in "${CS[@]}"; do
    left=$((deadline - SECONDS))
    [ "$left" -gt 0 ] || left=1
    codes="$codes $(wait_exit "$c" "$left")"
done
echo "    waited $((SECONDS - started)) s for the 4 replicas (exit codes:$codes)"
check "(6) every replica's pipeline exited 0 (got$codes)" test "$(tr -d ' 0' <<<"$codes")" = ""
[ -z "$(tr -d ' 0' <<<"$codes")" ] || show_logs
linked=0
for c in "${CS[@]}"; do all_linked "$c" && linked=$((linked + 1)); done
# From the logs: files and symlinks migrated, summed over the replicas.
migrated=0
for c in "${CS[@]}"; do
    logs "$c" | grep -E 'migrated [0-9]+ files' | sed "s/^/    ${c:0:12}: /" || true
    n="$(logs "$c" | sed -nE 's/.*migrated ([0-9]+) files?, [0-9]+ bytes?, ([0-9]+) symlinks?.*/\1 \2/p' |
        awk '{ s += $1 + $2 } END { print s + 0 }')"
    migrated=$((migrated + n))
done
if [ "$migrated" -gt 0 ]; then
    check "(6) the replicas' logs add up to each baked file migrated once ($migrated, want $(wc -l <"$WORK/baked.txt"))" \
        test "$migrated" = "$(wc -l <"$WORK/baked.txt")"
else
    echo "NOTE: no 'migrated N files, B bytes, S symlinks' log lines found; log cross-check skipped"
fi
check "(6) every replica is linked ($linked/${#CS[@]})" test "$linked" = "${#CS[@]}"
check "(6) baked data on the share, byte-identical" baked_on_share "$SHARE_B"
check "(6) migrated once: nothing displaced, nested, duplicated or left behind" share_clean "$SHARE_B"
nb="$(cd "$SHARE_B" && { for l in "${LINKS[@]}"; do s="${l#* }"; find "$s" \( -type f -o -type l \); done; } |
    not_outputs | wc -l)"
check "(6) file count on the share: $nb baked files, want $(wc -l <"$WORK/baked.txt")" test "$nb" = "$(wc -l <"$WORK/baked.txt")"
check "(6) each replica's outputs are on the share (4 per data directory)" outputs_are "$SHARE_B" 4
dc down -v -t 1 >/dev/null 2>&1 || true

# --- scenario C: a first start with a few GiB baked --------------------------
# What a user with a big image sees: progress lines (files and bytes of the
# total, rate, ETA) in `docker logs`, and `sharelink status` in the running
# container saying `migrating` with that progress, not a bare lock.
BIG_BYTES="${BIG_BYTES:-$((3 << 30))}"
say "(9) a first start with $((BIG_BYTES >> 20)) MiB baked: progress in the logs and in status"
if bake_image "$IMAGE-gib" 500 "$BIG_BYTES"; then
    export SHARELINK_IMAGE="$IMAGE-gib"
    baked_list >"$WORK/baked.txt"
    SHARE_G="$WORK/share-g"
    new_project g "$SHARE_G"
    dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "(9) up -d"; }
    C="$(cid1)"
    seen=""
    # `docker exec` (bypassing the entrypoint) while PID 1 migrates.
    for _ in $(seq 1 600); do
        out="$(ex "$C" sharelink status 2>&1)" || true
        if grep -q "migrating" <<<"$out" && grep -qE "[0-9]+/[0-9]+ files" <<<"$out"; then
            seen="$out"
            break
        fi
        logs_have "$C" "migrated [0-9]* files" && break
        running "$C" || break
        sleep 0.2
    done
    [ -z "$seen" ] || echo "$seen" | grep -E "migrating" | sed 's/^/    status: /'
    check "(9) sharelink status, run in the container during the migration, says migrating with its progress" test -n "$seen"
    code="$(wait_exit "$C" 600)"
    check "(9) the pipeline ran after the migration (exit $code)" test "$code" = 0
    logs "$C" | grep -E "migrating: [0-9]+/[0-9]+ files" | sed 's/^/    /' || true
    # The ETA is left out of a line written once everything is copied (a
    # fast disk gets there before the second report).
    n="$(logs "$C" | grep -cE "migrating: [0-9]+/[0-9]+ files, [0-9.]+ [KMG]iB/[0-9.]+ GiB, [0-9.]+ [KMG]?i?B/s" || true)"
    check "(9) progress lines with files, bytes of the total, rate (and ETA while copying) during the migration ($n)" test "$n" -ge 1
    logs "$C" | grep -E "migrated [0-9]+ files" | sed 's/^/    /' || true
    check "(9) the baked GiB are on the share, byte for byte" baked_on_share "$SHARE_G"
    check "(9) migrated once: nothing displaced or left behind" share_clean "$SHARE_G"
    dc down -v -t 1 >/dev/null 2>&1 || true
    docker rmi -f "$IMAGE-gib" >/dev/null 2>&1 || true
else
    fail "(9) build the image with a few GiB baked"
fi

# --- summary -----------------------------------------------------------------
echo
echo "smoke took $((SECONDS - T0))s"
echo "smoke: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${FAILED[@]}"
    exit 1
fi
