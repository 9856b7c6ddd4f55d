#!/usr/bin/env bash
# The Kubernetes Deployment's scale-out, simulated with Docker (issue 11).
# No cluster here, so: N containers, each on a Docker network of its own
# with its own host name (separate "nodes"), one shared bind-mounted
# directory as the share, all started together from an image with enough
# baked data that the first migration takes a while. Each container runs
# what deploy/kubernetes/service/deployment.yaml gives the pod: its command, args
# (the demo Python pipeline, examples/pipeline/run_pipeline.py, on the Python
# base image of tests/docker/make-python-base.sh), env (PIPELINE_HOLD keeps
# it running like a service) and securityContext (user, capabilities, no
# privilege escalation), and its probe command decides "ready". So every
# node also runs the pipeline on the share, beside the others.
#
# Per round, on a fresh share:
#   1. start all nodes at once; one takes the migration lock, the others wait
#      (their readiness probe must say "not ready" meanwhile)
#   2. SIGKILL the lock holder mid-copy (its staging directory on the share)
#   3. after the lease, another node takes over; SIGKILL it mid-commit or
#      mid-prune if the kill lands there (else mid-copy)
#   4. restart one killed node in place (same container, like a container
#      restart) and replace the other with a new container on a new network
#      and host name (a pod rescheduled after a node loss)
#   5. wait until every node is ready; then a rolling update: each node
#      replaced by a fresh container, one at a time (maxSurge 1); each old
#      one must stop cleanly (docker stop's SIGTERM, forwarded unchanged, is
#      handled by the pipeline as Ctrl-C: checkpoint written, exit 130)
#   6. check: the share holds exactly the baked data, byte for byte (nothing
#      lost, duplicated, displaced or half-copied; the pipeline's own outputs
#      left out), no staging left, the lock directory empty, every node
#      linked and ready, and every node's pipeline run complete on the share
#
#   bash tests/docker/multinode.sh
#
# Environment: MULTINODE_NODES (4), MULTINODE_ROUNDS (3), SHARELINK_BIN (a
# static binary to use instead of building one), SHARELINK_BASE_IMAGE (a
# Python base image; default: tests/docker/make-python-base.sh),
# MULTINODE_KEEP=1 (keep everything for debugging). Every docker command
# runs under `timeout`; every wait is bounded. Exit 0 only when every check
# passed; 77 when a prerequisite is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

NODES="${MULTINODE_NODES:-4}"
ROUNDS="${MULTINODE_ROUNDS:-3}"
# Short lease so a dead holder's lock is broken in seconds (default: 60 s).
LEASE=6
ID="$(date +%s)$$"
PREFIX="sharelink-deploy-mn$ID"
IMAGE="$PREFIX:img"
LABEL="sharelink-deploy=$ID"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-multinode.XXXXXX")"
FAILED=()
PASSED=0
T0=$SECONDS
PYTOOLS="${SHARELINK_PYTOOLS:-/opt/sharelink-pytools}"
PY="$PYTOOLS/bin/python"
"$PY" -c 'import yaml' 2>/dev/null || PY=python3

say() { echo "--- $*"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED+=("$*"); echo "FAIL: $*"; }
check() { local d="$1"; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
t() { local s="$1"; shift; timeout -k 5 "$s" "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [ "${MULTINODE_KEEP:-0}" = 1 ]; then
        echo "MULTINODE_KEEP=1: keeping containers/networks labelled $LABEL, image $IMAGE, dir $WORK"
        return
    fi
    local ids
    ids="$(t 30 docker ps -aq --filter "label=$LABEL")"
    [ -z "$ids" ] || t 120 docker rm -f $ids >/dev/null 2>&1
    ids="$(t 30 docker network ls -q --filter "label=$LABEL")"
    [ -z "$ids" ] || t 120 docker network rm $ids >/dev/null 2>&1
    t 60 docker rmi -f "$IMAGE" "$PREFIX:app" "$PREFIX:nonroot" >/dev/null 2>&1
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "multinode: interrupted"; exit 130' INT TERM
# A step that fails outside a check ends the run (set -e): say which.
trap 'echo "FAIL: line $LINENO: \`$BASH_COMMAND\` exited $?"' ERR

# --- prerequisites -----------------------------------------------------------
t 30 docker info >/dev/null 2>&1 || { echo "SKIP: docker engine not reachable"; exit 77; }
"$PY" -c 'import yaml' 2>/dev/null || { echo "SKIP: no python with PyYAML (run .ci/install-deps)"; exit 77; }
BASE="${SHARELINK_BASE_IMAGE:-}"
[ -n "$BASE" ] || BASE="$(t 1200 bash "$ROOT/tests/docker/make-python-base.sh")"
if [ -n "${SHARELINK_BIN:-}" ]; then
    BIN="$SHARELINK_BIN"
else
    say "building the static binary"
    t 1200 cargo build --release --locked --target x86_64-unknown-linux-musl >"$WORK/cargo.log" 2>&1 ||
        { cat "$WORK/cargo.log"; echo "FAIL: cargo build"; exit 1; }
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-musl/release/sharelink"
fi

# --- the pod spec, from the Deployment ----------------------------------------
# Docker equivalents of the container's command, args, env, securityContext
# and startup probe, one "KEY<TAB>value" per line.
"$PY" - "$ROOT/deploy/kubernetes/service/deployment.yaml" >"$WORK/podspec" <<'PY'
import sys, yaml
dep = yaml.safe_load(open(sys.argv[1]))
c = dep["spec"]["template"]["spec"]["containers"][0]
out = []
cmd = c["command"]
out.append(("ENTRYPOINT", cmd[0]))
out += [("CMD", a) for a in cmd[1:]] + [("ARG", a) for a in c.get("args", [])]
out += [("ENV", f"{e['name']}={e['value']}") for e in c.get("env", [])]
sc = c.get("securityContext", {})
if "runAsUser" in sc:
    out.append(("FLAG", f"--user={sc['runAsUser']}:{sc.get('runAsGroup', 0)}"))
if sc.get("allowPrivilegeEscalation") is False:
    out.append(("FLAG", "--security-opt=no-new-privileges"))
if sc.get("readOnlyRootFilesystem"):
    out.append(("FLAG", "--read-only"))
caps = sc.get("capabilities", {})
out += [("FLAG", f"--cap-drop={x}") for x in caps.get("drop", [])]
out += [("FLAG", f"--cap-add={x}") for x in caps.get("add", [])]
out += [("PROBE", a) for a in c["startupProbe"]["exec"]["command"]]
out += [("MOUNT", m["mountPath"]) for m in c["volumeMounts"]]
for k, v in out:
    assert "\t" not in v and "\n" not in v
    print(f"{k}\t{v}")
PY
field() { awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$WORK/podspec"; }
ENTRYPOINT="$(field ENTRYPOINT)"
mapfile -t CMD < <(field CMD)
mapfile -t ARGS < <(field ARG)
mapfile -t PROBE < <(field PROBE)
MOUNT="$(field MOUNT)"
RUN_FLAGS=()
while IFS= read -r e; do RUN_FLAGS+=(-e "$e"); done < <(field ENV)
while IFS= read -r f; do RUN_FLAGS+=("$f"); done < <(field FLAG)
echo "pod spec: $ENTRYPOINT ${CMD[*]} ${ARGS[*]}; probe: ${PROBE[*]}; share at $MOUNT"
echo "          docker flags: ${RUN_FLAGS[*]}"
# How a stopped pod's pipeline ends: sharelink forwards docker stop's
# SIGTERM unchanged; the pipeline handles it as Ctrl-C (runs its `finally`,
# writes its checkpoint) and dies of SIGINT, so a clean stop exits 130.
STOP_CODE=130
echo "          docker stop: the pipeline handles SIGTERM as Ctrl-C; a clean stop exits $STOP_CODE"

# --- image: the Dockerfile's prebuilt target plus baked bulk data --------------
say "building $IMAGE (base $BASE) with bulk data baked in"
CTX="$WORK/context"
mkdir -p "$CTX/dist" "$WORK/heavy/forecasting" "$WORK/heavy/sarima"
cp -a Dockerfile .dockerignore config examples "$CTX/"
cp "$BIN" "$CTX/dist/sharelink"
t 600 docker build -q --target prebuilt --build-arg "BASE_IMAGE=$BASE" -t "$PREFIX:app" "$CTX" >"$WORK/build.log" 2>&1 ||
    { cat "$WORK/build.log"; echo "FAIL: docker build"; exit 1; }
# 40 directories of small files, four 8 MiB files, a symlink: a migration
# that takes seconds, long enough for the kills below to land inside it.
(
    cd "$WORK/heavy/forecasting"
    for d in $(seq -w 1 40); do
        mkdir -p "bulk/d$d"
        for f in $(seq 1 60); do echo "node data $d/$f" >"bulk/d$d/part-$f.csv"; done
    done
    for i in 1 2 3 4; do head -c 8388608 /dev/urandom >"bulk/big-$i.bin"; done
    ln -s big-1.bin bulk/latest.bin
    cd "$WORK/heavy/sarima"
    for f in $(seq 1 400); do echo "p=$f" >"fit-$f.params"; done
)
cat >"$WORK/heavy/Dockerfile" <<EOF
FROM $PREFIX:app
COPY --chown=10001:10001 forecasting/ /app/forecasting/data/input/
COPY --chown=10001:10001 sarima/ /app/modelling/cache/sarima_params/bulk/
EOF
t 600 docker build -q -t "$IMAGE" "$WORK/heavy" >"$WORK/build.log" 2>&1 ||
    { cat "$WORK/build.log"; echo "FAIL: docker build (bulk layer)"; exit 1; }

# What the share must hold: every baked file (sha256), symlink (target) and
# directory under each link's app directory, as share paths.
LINKS=() # "app_rel share_rel"
while IFS= read -r line; do LINKS+=("$line"); done < <("$PY" - "$ROOT/config/sharelink.toml" <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
for app, v in cfg["links"].items():
    print(app, v if isinstance(v, str) else v["share"])
PY
)
BAKED="$WORK/baked-tree"
mkdir -p "$BAKED"
c="$(t 60 docker create "$IMAGE")"
for l in "${LINKS[@]}"; do
    app="${l%% *}"; share="${l#* }"
    mkdir -p "$BAKED/$(dirname "$share")"
    t 120 docker cp "$c:/app/$app" "$BAKED/$(dirname "$share")/" 2>/dev/null || true
    [ "$(basename "$app")" = "$(basename "$share")" ] || mv "$BAKED/$(dirname "$share")/$(basename "$app")" "$BAKED/$share"
done
t 30 docker rm "$c" >/dev/null
# What the demo pipeline writes on the share (as tests/docker/smoke.sh lists
# it): per run, prices-, forecast- and predictions-RUN.csv; once and then
# updated, the SARIMA orders of each series long enough for a grid search and
# its checkpoint; and the temporary names of its atomic writes
# (.NAME.XXXXXXXX.tmp, tempfile.mkstemp), which a node killed mid-write
# leaves behind. An ERE on "./share/relative/path".
SEARCHED_SERIES=(price_gadget price_widget sales temperature visitors)
output_re() { # DIR NAME_RE -> DIR/NAME or its temporary name
    printf '%s/(%s|\\.%s\\.[A-Za-z0-9_]{8}\\.tmp)' "$1" "$2" "$2"
}
OUTPUTS_RE="^\\./($(output_re scraping/scraped_data 'prices-[^/]+\.csv')|$(output_re forecasting/data/output 'forecast-[^/]+\.csv')"
OUTPUTS_RE+="|$(output_re modelling/predictions 'predictions-[^/]+\.csv')"
OUTPUTS_RE+="|$(output_re modelling/cache/sarima_params "($(IFS='|'; echo "${SEARCHED_SERIES[*]}"))\\.json")"
OUTPUTS_RE+="|$(output_re modelling/cache 'checkpoint\.json'))\$"
# tree_of DIR: "type path sha256-or-target" per entry, sorted; the
# pipeline's outputs left out.
tree_of() {
    (cd "$1" && find . -mindepth 1 \( -path ./.sharelink -prune \) -o -print0 |
        while IFS= read -r -d '' p; do
            [[ ! "$p" =~ $OUTPUTS_RE ]] || continue
            if [ -L "$p" ]; then echo "l $p $(readlink "$p")"
            elif [ -d "$p" ]; then echo "d $p"
            else echo "f $p $(sha256sum <"$p" | cut -c1-64)"; fi
        done | LC_ALL=C sort)
}
tree_of "$BAKED" >"$WORK/baked.txt"
# Leaving the pipeline's outputs out must hide nothing that was baked.
hidden="$(cd "$BAKED" && find . -mindepth 1 | grep -E "$OUTPUTS_RE" || true)"
check "no baked entry looks like a pipeline output (those are left out of the share comparison)${hidden:+: $hidden}" \
    test -z "$hidden"
# Directories sharelink creates from `dirs` (and parents of targets) may be
# on the share without being baked: compare files and symlinks exactly, and
# require every baked directory.
grep -v '^d ' "$WORK/baked.txt" >"$WORK/baked-files.txt"
grep '^d ' "$WORK/baked.txt" >"$WORK/baked-dirs.txt"
BAKED_FILES=$(wc -l <"$WORK/baked-files.txt")
BAKED_BYTES=$(du -sb "$BAKED" | cut -f1)
echo "baked: $BAKED_FILES files and symlinks, $(wc -l <"$WORK/baked-dirs.txt") directories, $BAKED_BYTES bytes, in ${#LINKS[@]} links"

# --- helpers --------------------------------------------------------------------
# A network per node, made once: net1..netN for the nodes, and one more for
# the node that a rescheduled pod lands on.
for i in $(seq 1 $((NODES + 1))); do
    t 180 docker network create --internal --label "$LABEL" "$PREFIX-net$i" >/dev/null
done
RESCHED_NET="$PREFIX-net$((NODES + 1))"
# new_node NAME HOST SHARE NETWORK -> prints the container id (created, not
# started): its own host name, on the given node's network.
new_node() {
    local host="$2" share="$3" net="$4"
    t 180 docker create --name "slnode$ID-$1" --label "$LABEL" --hostname "$host" --network "$net" \
        -v "$share:$MOUNT" -e "SHARELINK_LOCK_LEASE=${LEASE}s" "${RUN_FLAGS[@]}" \
        --entrypoint "$ENTRYPOINT" "$IMAGE" "${CMD[@]}" "${ARGS[@]}"
}
running() { [ "$(t 10 docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
ready() { t 20 docker exec "$1" "${PROBE[@]}" >/dev/null 2>&1; }
hostname_of() { t 10 docker inspect -f '{{.Config.Hostname}}' "$1" 2>/dev/null; }
# A container that exits on its own is restarted, as the kubelet does for a
# Deployment's pod (restartPolicy Always), at most 3 times; every such exit
# is a failure of the run, with its exit code and first error logged.
UNEXPECTED=()
declare -A RESTARTS_OF=()
restart_exited() {
    local c="$1" code err
    code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$c")"
    err="$(t 10 docker logs "$c" 2>&1 | grep -m1 '"level":"ERROR"' || true)"
    UNEXPECTED+=("$(hostname_of "$c"): exit $code ${err:-(no error logged)}")
    echo "    UNEXPECTED: $(hostname_of "$c") exited $code: ${err:-(no error logged)}; restarted"
    RESTARTS_OF[$c]=$((${RESTARTS_OF[$c]:-0} + 1))
    [ "${RESTARTS_OF[$c]}" -le 3 ] && t 60 docker start "$c" >/dev/null
}
# wait_ready SECONDS CID...: until each one's probe passes.
wait_ready() {
    local until=$((SECONDS + $1)) c
    shift
    for c in "$@"; do
        while ! ready "$c"; do
            if ! running "$c"; then
                restart_exited "$c" || { echo "  ${c:0:12} keeps exiting"; return 1; }
            elif [ "$SECONDS" -ge "$until" ]; then
                echo "  not ready: $(hostname_of "$c")"
                t 10 docker logs --tail 15 "$c" 2>&1 | sed 's/^/  | /'
                return 1
            fi
            sleep 0.5
        done
    done
}
LOCK_ID="$(
    l="${LINKS[0]}"
    printf '%s' "${l#* }" | "$PY" -c 'import sys; print("".join(c if c.isalnum() or c in "._-" else "%%%02X" % ord(c) for c in sys.stdin.read()))'
)"
BIG_SHARE="${LINKS[0]#* }"
lock_owner_host() { sed -n 's/^host=//p' "$1/.sharelink/locks/$LOCK_ID/owner" 2>/dev/null || true; }
staging_of() { echo "$1/$(dirname "$BIG_SHARE")/.$(basename "$BIG_SHARE").sharelink-staging"; }
# wait_holder SHARE SECONDS PREDICATE: until the first link's lock is held
# (by a host other than $EXCEPT) and PREDICATE SHARE succeeds; prints the host.
wait_holder() {
    local share="$1" until=$((SECONDS + $2)) pred="$3" h
    while [ "$SECONDS" -lt "$until" ]; do
        h="$(lock_owner_host "$share")"
        if [ -n "$h" ] && [ "$h" != "${EXCEPT:-}" ] && "$pred" "$share"; then
            echo "$h"
            return 0
        fi
        sleep 0.02
    done
    return 1
}
copying() { [ -d "$(staging_of "$1")" ] && [ -n "$(ls -A "$(staging_of "$1")" 2>/dev/null)" ]; }
committed() { [ -d "$1/$BIG_SHARE" ] && [ ! -e "$(staging_of "$1")" ]; }
# The share must hold exactly the baked data, and nothing of sharelink's
# own but empty lock and displaced directories.
share_exact() {
    local share="$1" ok=0
    tree_of "$share" >"$WORK/got.txt"
    grep -v '^d ' "$WORK/got.txt" >"$WORK/got-files.txt" || true
    local missing extra
    missing="$(comm -23 "$WORK/baked-files.txt" "$WORK/got-files.txt")"
    extra="$(comm -13 "$WORK/baked-files.txt" "$WORK/got-files.txt")"
    LOST=$(printf '%s' "$missing" | grep -c . || true)
    if [ -n "$missing" ]; then echo "  missing or different on the share ($LOST):"; head -n 5 <<<"$missing" | sed 's/^/    /'; ok=1; fi
    if [ -n "$extra" ]; then echo "  unexpected on the share (duplicates, leftovers):"; head -n 5 <<<"$extra" | sed 's/^/    /'; ok=1; fi
    if [ -n "$(comm -23 "$WORK/baked-dirs.txt" <(grep '^d ' "$WORK/got.txt"))" ]; then echo "  baked directories missing"; ok=1; fi
    if [ -n "$(find "$share" \( -name '*.sharelink-staging*' -o -name '*.sharelink-link.*' \) -print -quit)" ]; then
        echo "  staging or temporary entries left:"; find "$share" -name '*.sharelink-*' | head -n 5 | sed 's/^/    /'; ok=1
    fi
    if [ -d "$share/.sharelink/displaced" ] && [ -n "$(find "$share/.sharelink/displaced" ! -type d -print -quit)" ]; then
        echo "  data was displaced (migrated twice?):"; find "$share/.sharelink/displaced" ! -type d | head -n 5 | sed 's/^/    /'; ok=1
    fi
    return $ok
}
locks_empty() {
    local left
    left="$(ls -A "$1/.sharelink/locks" 2>/dev/null || true)"
    [ -z "$left" ] || { echo "  left in the lock directory: $left"; return 1; }
}
# pipeline_ran CID SHARE: within 60 s the node's pipeline has done all its
# stages (it logs that it holds, PIPELINE_HOLD) and that run's outputs are
# on the share. (A run resumed from another node's interrupted one has that
# run's id.)
pipeline_ran() {
    local c="$1" share="$2" until=$((SECONDS + 60)) id f
    while ! t 10 docker logs "$c" 2>&1 | grep 'pipeline: holding for' >/dev/null; do
        [ "$SECONDS" -lt "$until" ] && running "$c" || {
            echo "  $(hostname_of "$c"): the pipeline did not finish its stages"
            t 10 docker logs --tail 10 "$c" 2>&1 | sed 's/^/  | /'
            return 1
        }
        sleep 0.5
    done
    id="$(t 10 docker logs "$c" 2>&1 | sed -n 's/.* pipeline: run \([^ ]*\): start as uid .*/\1/p' | tail -n 1)"
    [ -n "$id" ] || { echo "  $(hostname_of "$c"): no run id in its logs"; return 1; }
    for f in "scraping/scraped_data/prices-$id.csv" "forecasting/data/output/forecast-$id.csv" \
        "modelling/predictions/predictions-$id.csv"; do
        [ -s "$share/$f" ] || { echo "  $(hostname_of "$c"): run $id: no $f on the share"; return 1; }
    done
}
# linked_json CID: the probe's JSON says every link is linked.
linked_json() {
    local j
    j="$(t 20 docker exec "$1" "${PROBE[@]}" --json 2>/dev/null)" || { echo "  ${1:0:12}: status --json failed: $j"; return 1; }
    "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["healthy"] and d["links"] and all(l["state"]=="linked" for l in d["links"]), d' "$j"
}

# --- rounds ------------------------------------------------------------------------
KILLS=0
KILLS_MID_COPY=0
KILLS_MID_PRUNE=0
KILLS_OTHER=0
RESTARTS_IN_PLACE=0
REPLACEMENTS=0
ROLLED=0
LOST_TOTAL=0
WAIT_NOT_READY=0
for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS: $NODES nodes on a fresh share"
    SHARE="$WORK/share-$r"
    mkdir -p "$SHARE"
    declare -A NODE_OF=() # host -> container
    CIDS=()
    for i in $(seq 1 "$NODES"); do
        c="$(new_node "r$r-n$i" "r$r-node$i" "$SHARE" "$PREFIX-net$i")"
        NODE_OF["r$r-node$i"]="$c"
        CIDS+=("$c")
    done
    t0=$SECONDS
    # Started together, and watched from the first instant: the first
    # migration may be under way before the last `docker start` returns.
    (for c in "${CIDS[@]}"; do t 60 docker start "$c" >/dev/null & done; wait) &
    starter=$!

    # (2) the first holder, mid-copy.
    EXCEPT=""
    h1="$(wait_holder "$SHARE" 120 copying)" || h1=""
    wait "$starter" || true
    [ -n "$h1" ] || { fail "round $r: no node seen copying within 120 s"; continue; }
    c1="${NODE_OF[$h1]}"
    t 30 docker kill -s KILL "$c1" >/dev/null
    KILLS=$((KILLS + 1))
    landed=0
    files_in_staging=$( (find "$(staging_of "$SHARE")" -type f 2>/dev/null || true) | wc -l)
    if [ -d "$(staging_of "$SHARE")" ] && [ "$(lock_owner_host "$SHARE")" = "$h1" ]; then
        KILLS_MID_COPY=$((KILLS_MID_COPY + 1))
        landed=$((landed + 1))
        pass "round $r: $h1 killed mid-copy (its lock held, staging with $files_in_staging of $BAKED_FILES files, after $((SECONDS - t0)) s)"
    else
        KILLS_OTHER=$((KILLS_OTHER + 1))
        echo "    round $r: $h1 committed before its kill landed"
    fi
    # Meanwhile the others wait for the dead holder's lease, and their
    # probe says not ready.
    if [ "$landed" = 1 ]; then
        waiting=0
        for h in "${!NODE_OF[@]}"; do
            [ "$h" != "$h1" ] || continue
            ready "${NODE_OF[$h]}" || waiting=$((waiting + 1))
        done
        WAIT_NOT_READY=$((WAIT_NOT_READY + waiting))
        check "round $r: the $((NODES - 1)) waiting nodes are not ready while the dead holder's lock stands ($waiting not ready)" \
            test "$waiting" = "$((NODES - 1))"
    fi

    # (3) after the lease, the next holder: mid-commit/prune if we catch it.
    EXCEPT="$h1"
    h2="$(wait_holder "$SHARE" $((LEASE * 4 + 60)) committed)" ||
        h2="$(wait_holder "$SHARE" 5 copying)" || h2=""
    if [ -n "$h2" ]; then
        c2="${NODE_OF[$h2]}"
        t 30 docker kill -s KILL "$c2" >/dev/null
        KILLS=$((KILLS + 1))
        deleted=$(t 30 docker diff "$c2" 2>/dev/null | grep -c "^D /app/${LINKS[0]%% *}/" || true)
        if committed "$SHARE" && [ "$(lock_owner_host "$SHARE")" = "$h2" ]; then
            KILLS_MID_PRUNE=$((KILLS_MID_PRUNE + 1))
            landed=$((landed + 1))
            pass "round $r: $h2 killed holding the lock after the commit, pruning its own copy ($deleted app entries deleted)"
        elif [ -d "$(staging_of "$SHARE")" ] && [ "$(lock_owner_host "$SHARE")" = "$h2" ]; then
            KILLS_MID_COPY=$((KILLS_MID_COPY + 1))
            landed=$((landed + 1))
            pass "round $r: $h2 killed mid-copy (second holder)"
        else
            KILLS_OTHER=$((KILLS_OTHER + 1))
            echo "    round $r: $h2 had finished before its kill landed (a node loss after linking)"
        fi
    else
        echo "    round $r: no second holder seen (a waiter finished within the poll interval)"
        c2=""
    fi

    check "round $r: a kill landed mid-migration ($landed of 2)" test "$landed" -ge 1

    # (4) one killed node restarts in place, the other is replaced.
    if [ $((r % 2)) = 1 ]; then inplace="$c1"; gone="$c2"; else inplace="$c2"; gone="$c1"; fi
    CUR=()
    for h in "${!NODE_OF[@]}"; do
        c="${NODE_OF[$h]}"
        [ "$c" = "$c1" ] || [ "$c" = "${c2:-}" ] || CUR+=("$c")
    done
    if [ -n "$inplace" ]; then
        t 60 docker start "$inplace" >/dev/null
        RESTARTS_IN_PLACE=$((RESTARTS_IN_PLACE + 1))
        CUR+=("$inplace")
    fi
    if [ -n "$gone" ]; then
        t 60 docker rm -f "$gone" >/dev/null
        c="$(new_node "r$r-resched" "r$r-node-rescheduled" "$SHARE" "$RESCHED_NET")"
        t 60 docker start "$c" >/dev/null
        REPLACEMENTS=$((REPLACEMENTS + 1))
        CUR+=("$c")
    fi
    check "round $r: all ${#CUR[@]} nodes ready (probe: ${PROBE[*]})" wait_ready 300 "${CUR[@]}"
    echo "    round $r: ready after $((SECONDS - t0)) s"

    # (5) rolling update: a fresh container per node, one at a time.
    NEXT=()
    rolled_ok=0
    for j in "${!CUR[@]}"; do
        c="$(new_node "r$r-v2-$j" "r$r-node$j-v2" "$SHARE" "$PREFIX-net$((j + 1))")"
        t 60 docker start "$c" >/dev/null
        if wait_ready 300 "$c"; then rolled_ok=$((rolled_ok + 1)); fi
        t 60 docker stop -t 10 "${CUR[$j]}" >/dev/null
        NEXT+=("$c")
        ROLLED=$((ROLLED + 1))
    done
    check "round $r: rolling update, ${#CUR[@]} fresh containers each ready before the old one stopped ($rolled_ok)" \
        test "$rolled_ok" = "${#CUR[@]}"
    stopped_codes=""
    stopped_clean=0
    for c in "${CUR[@]}"; do
        code="$(t 10 docker inspect -f '{{.State.ExitCode}}' "$c")"
        stopped_codes="$stopped_codes $code"
        # (grep reads everything: `grep -q` quitting early would fail the
        # pipeline through docker's SIGPIPE.)
        if [ "$code" = "$STOP_CODE" ] &&
            t 10 docker logs "$c" 2>&1 | grep 'interrupted during .*checkpoint written to' >/dev/null; then
            stopped_clean=$((stopped_clean + 1))
        fi
    done
    check "round $r: replaced nodes stopped cleanly (docker stop's SIGTERM handled as Ctrl-C: checkpoint written and exit $STOP_CODE, $stopped_clean of ${#CUR[@]}; exit codes$stopped_codes)" \
        test "$stopped_clean" = "${#CUR[@]}"

    # (6) the result.
    linked=0
    for c in "${NEXT[@]}"; do linked_json "$c" && linked=$((linked + 1)); done
    check "round $r: every node linked and healthy (status --json: $linked/${#NEXT[@]})" test "$linked" = "${#NEXT[@]}"
    ran=0
    for c in "${NEXT[@]}"; do pipeline_ran "$c" "$SHARE" && ran=$((ran + 1)); done
    check "round $r: every node's pipeline ran all its stages through the links, its outputs on the share ($ran/${#NEXT[@]})" \
        test "$ran" = "${#NEXT[@]}"
    LOST=0
    check "round $r: the share holds exactly the baked data ($BAKED_FILES files byte for byte; nothing lost, duplicated, displaced or half-copied)" \
        share_exact "$SHARE"
    LOST_TOTAL=$((LOST_TOTAL + LOST))
    check "round $r: lock directory empty" locks_empty "$SHARE"
    # Informational: how the logs tell it (not asserted: wording may change).
    for c in $(t 30 docker ps -aq --filter "label=$LABEL"); do
        t 10 docker logs "$c" 2>&1 | grep -o 'migrated [0-9]* files[^"]*' | sed "s/^/    $(t 10 docker inspect -f '{{.Config.Hostname}}' "$c"): /" || true
    done
    echo "    round $r took $((SECONDS - t0)) s"
    ids="$(t 30 docker ps -aq --filter "label=$LABEL")"
    [ -z "$ids" ] || t 180 docker rm -f $ids >/dev/null 2>&1 || true
    unset NODE_OF
done

# The fully non-root variant docs/deploy.md describes: an image whose `app`
# user owns the data directories' parents, run as that user with no
# capabilities at all (runAsNonRoot, drop ALL), on a share that user owns
# (as the uid= mount option makes it).
say "non-root variant: uid 10001, no capabilities"
printf 'FROM %s\nRUN chown app:app /app/forecasting /app/modelling /app/scraping\nUSER app\n' "$PREFIX:app" >"$WORK/nonroot.Dockerfile"
SHARE_NR="$WORK/share-nonroot"
mkdir -p "$SHARE_NR"
chown 10001:10001 "$SHARE_NR"
if t 300 docker build -q -t "$PREFIX:nonroot" -f "$WORK/nonroot.Dockerfile" "$WORK" >"$WORK/build.log" 2>&1; then
    code=0
    out="$(t 120 docker run --name "slnode$ID-nonroot" --label "$LABEL" --user 10001:10001 --cap-drop ALL \
        --security-opt no-new-privileges -v "$SHARE_NR:$MOUNT" "$PREFIX:nonroot" "${ARGS[@]}" 2>&1)" || code=$?
    check "non-root variant: links and runs the pipeline (${ARGS[*]}) as uid 10001 with no capabilities, to completion on the share (exit $code)" \
        bash -c '[ "$1" = 0 ] && grep -q "start as uid 10001" <<<"$2" && [ -d "$3/forecasting/data/input" ] &&
            grep -q "\"status\": \"completed\"" "$3/modelling/cache/checkpoint.json" &&
            [ -n "$(find "$3/modelling/predictions" -name "predictions-*.csv" -size +0)" ]' _ "$code" "$out" "$SHARE_NR"
    [ "$code" = 0 ] || tail -n 10 <<<"$out" | sed 's/^/  | /'
else
    cat "$WORK/build.log"
    fail "non-root variant: image builds"
fi

check "no container exited on its own (${#UNEXPECTED[@]}: ${UNEXPECTED[*]:-none})" \
    test "${#UNEXPECTED[@]}" = 0
echo
echo "multinode figures: nodes $NODES per round, rounds $ROUNDS, kills $KILLS (mid-copy $KILLS_MID_COPY, holding the lock after the commit $KILLS_MID_PRUNE, other $KILLS_OTHER),"
echo "  restarts in place $RESTARTS_IN_PLACE, rescheduled $REPLACEMENTS, rolling replacements $ROLLED, waiting probes not ready $WAIT_NOT_READY,
  exits on their own (restarted as the kubelet would) ${#UNEXPECTED[@]},"
echo "  files per round $BAKED_FILES ($BAKED_BYTES bytes), files lost $LOST_TOTAL, lease ${LEASE}s"
echo "multinode took $((SECONDS - T0))s"
echo "multinode: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${FAILED[@]}"
    exit 1
fi
