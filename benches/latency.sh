#!/usr/bin/env bash
# Migration speed on a share with per-operation latency, side by side in one
# run: sharelink vs `cp -a && sync` vs `rsync -a && sync` (and, on request,
# `mv && sync`: the copy plus the app side's delete), with the share on
# the latency rig (tests/tools/latencyfs) at several delays, on tmpfs and on
# ext4; for tree shapes also the floor (benches/floor.py: the names made
# empty by many threads) and floor-data (the same schedule writing each
# file's bytes and setting its mtime). Then the cost of re-checking 1,000 already-linked
# entries on the rig, and the kernel's FUSE tunables. Methodology:
# benches/README.md.
#
#   benches/latency.sh                      # everything, ~40 min on 2 cores
#   benches/latency.sh shapes small         # sections: shapes small large scaling recheck tunables
#   DELAYS="2" TOOLS="cp sharelink" REPS=5 benches/latency.sh small
#   SHARELINK_BIN=/path/to/older/sharelink benches/latency.sh merge   # another build
#
# Needs root (mounts), /dev/fuse, rsync (.ci/install-deps installs all).
set -euo pipefail
cd "$(dirname "$0")/.."

SECTIONS=${*:-shapes small large scaling recheck tunables}   # also: merge (not in the default set)
DELAYS=${DELAYS:-0 2 10}             # rig delays (ms per operation)
LOCAL=${LOCAL:-tmpfs ext4}           # plain filesystems for the share
TOOLS=${TOOLS:-cp rsync sharelink}
REPS=${REPS:-3}                      # runs per configuration (median)
SLOW_REPS=${SLOW_REPS:-$REPS}        # ... of cp and rsync in section shapes (minutes a run on the rig)
# Tree shapes (section shapes), 8 KiB files: DxF is D directories of F files
# (1xF: the files in the tree's top directory), nestedN the small tree of N
# files. On the rig per delay (DELAY:SHAPE), smaller at 10 ms.
SHAPES_AT=${SHAPES_AT:-2:1x500 2:10x200 2:400x5 2:nested2000 10:1x100 10:10x30 10:100x2 10:nested200}
SHAPES_LOCAL=${SHAPES_LOCAL:-1x2000 10x200 400x5 nested2000}
SHAPE_TOOLS=${SHAPE_TOOLS:-floor floor-data cp rsync sharelink}
# Merging into a share target that holds data (section merge): DELAY:DxF,
# the app tree D directories of F files, the share the same D directories
# each holding one file of its own, migrate = "merge": every app file is
# staged and then renamed into its directory on the share.
MERGE_AT=${MERGE_AT:-2:20x20 2:10x200}
FLOOR_THREADS=${FLOOR_THREADS:-64}   # as many requests as the rig serves at once (more: no faster)
SMALL_N=${SMALL_N:-2000}             # small-files tree on tmpfs/ext4: files of SMALL_KB KiB
SMALL_KB=${SMALL_KB:-8}
# Files in the small tree per rig delay (DELAY:FILES; a delay not listed
# uses SMALL_N). Each file costs cp ~15, rsync ~30 round trips: 2,000 files
# at 10 ms would take 20 min a run, so the default shrinks with the delay.
SMALL_N_AT=${SMALL_N_AT:-0:2000 2:400 10:100}
SCALE_DELAY=${SCALE_DELAY:-2}        # scaling: these file counts at this delay
SCALE_NS=${SCALE_NS:-100 200 400}
LARGE_FILES=${LARGE_FILES:-2}        # large-files tree: LARGE_FILES x LARGE_MB MiB
LARGE_MB=${LARGE_MB:-1024}           # ... on tmpfs/ext4
LARGE_RIG_MB=${LARGE_RIG_MB:-64}     # ... on the rig (MiB per file)
LARGE_RIG_DELAYS=${LARGE_RIG_DELAYS:-0 2}
RECHECK_LINKS=${RECHECK_LINKS:-1000}
RECHECK_DELAY=${RECHECK_DELAY:-2}
RECHECK_FILES=${RECHECK_FILES:-20}   # files per share target in the "much data" variant
RECHECK_REPS=${RECHECK_REPS:-3}
TUNE_N=${TUNE_N:-100}                # tunables: small tree of TUNE_N files at SCALE_DELAY
TUNE_TOOLS=${TUNE_TOOLS:-cp sharelink}
RIG_OPTS=${RIG_OPTS:-}               # extra latencyfs options for every rig mount
OUT=${OUT:-target/bench}

[ "$(id -u)" = 0 ] || { echo "latency.sh needs root (mounts)" >&2; exit 2; }
# Private mounts: everything mounted here vanishes with the namespace.
if [ -z "${LATENCY_BENCH_NS:-}" ]; then
    LATENCY_BENCH_NS=1 exec unshare -m --propagation private "$0" "$@"
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "==> building (release, static musl) and the latency rig" >&2
cargo build -q --release --locked --target x86_64-unknown-linux-musl
BIN=${SHARELINK_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/sharelink}
RIG=$PWD/tests/tools/latencyfs/latencyfs
"$RIG" --help >/dev/null

WORK=$(mktemp -d /var/tmp/sharelink-latency.XXXXXX)   # on / (ext4)
T=$WORK/t                                             # a tmpfs
mkdir -p "$T" "$WORK/rig" "$WORK/merged"
mount -t tmpfs -o size=20g tmpfs "$T"
RAW=$OUT/latency-raw.tsv
: >"$RAW"
cleanup() {
    mountpoint -q "$WORK/merged" && umount "$WORK/merged"
    mountpoint -q "$WORK/rig" && "$RIG" umount "$WORK/rig" 2>/dev/null
    mountpoint -q "$WORK/rig" && umount -l "$WORK/rig"
    umount "$T" 2>/dev/null || umount -l "$T"
    rm -rf "$WORK"
}
trap cleanup EXIT

# make_tree DIR N KB: N files of KB KiB (random bytes) in a nested layout
# like a baked data directory (three levels, ~50 files a directory), and a
# symlink every 100 files.
make_tree() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, sys
root, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"set{i % 8}", f"part{(i // 8) % 5}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"rec{i:05}.bin"), "wb") as f:
        f.write(os.urandom(kb << 10))
    if i % 100 == 99:
        os.symlink(f"rec{i:05}.bin", os.path.join(d, f"latest{i:05}"))
PY
}

make_large() {   # DIR FILES MB
    mkdir -p "$1"
    for i in $(seq 1 "$2"); do head -c $(($3 << 20)) /dev/urandom >"$1/big$i.bin"; done
}

# The share for a run: SHARE (where tools write) and STORE (the same
# directory seen without the rig, for verifying without paying its delay).
share_up() {   # KIND (tmpfs|ext4|rigD)
    case $1 in
        tmpfs) SHARE=$T/share; STORE=$SHARE; rm -rf "$SHARE"; mkdir -p "$SHARE" ;;
        ext4)  SHARE=$WORK/share; STORE=$SHARE; rm -rf "$SHARE"; mkdir -p "$SHARE" ;;
        rig*)
            STORE=$T/backing; SHARE=$WORK/rig; rm -rf "$STORE"; mkdir -p "$STORE"
            # shellcheck disable=SC2086
            "$RIG" mount "$STORE" "$SHARE" --delay-ms "${1#rig}" --watch-pid $$ $RIG_OPTS >/dev/null ;;
    esac
}

share_down() {   # KIND: prints "ops peak busy-ms" for the rig
    case $1 in
        rig*) "$RIG" stats "$SHARE" | awk '$1=="total"{t=$2} $1=="peak_in_flight"{p=$2} $1=="busy_ms"{b=$2} END{print t, p, b}'
              "$RIG" umount "$SHARE" ;;
        *) echo "- - -" ;;
    esac
}

# The app side for sharelink: a fresh overlay whose lower layer is the
# tree (a baked image layer), as in a container.
app_up() {   # SRCPARENT (LINK_SPEC: the link's line, default "data" = "data")
    local spec=${LINK_SPEC:-'"data" = "data"'}
    mountpoint -q "$WORK/merged" && umount "$WORK/merged"
    rm -rf "$T/ovl"; mkdir -p "$T/ovl/u" "$T/ovl/w"
    mount -t overlay overlay -o lowerdir="$1",upperdir="$T/ovl/u",workdir="$T/ovl/w" "$WORK/merged"
    cat >"$WORK/migrate.toml" <<EOF
app_root = "$WORK/merged"
share_root = "$SHARE"
require_mount = false
[links]
$spec
EOF
}

settle() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now() { date +%s.%N; }

names() { (cd "$1" && find . | LC_ALL=C sort); }

# measure CASE KIND SRCPARENT: every tool REPS times (cp and rsync
# SLOW_REPS), the tools taking turns (A B A B), so that a machine slowing
# down meanwhile hits all of them; a line per run in $RAW.
measure() {
    local case=$1 kind=$2 src=$3 tool rep t0 t1 fl ops reps=$REPS
    case " $TOOLS " in *" cp "*|*" rsync "*|*" mv "*) [ "$SLOW_REPS" -gt "$reps" ] && reps=$SLOW_REPS ;; esac
    for rep in $(seq 1 "$reps"); do
        for tool in $TOOLS; do
            case $tool in cp|rsync|mv) [ "$rep" -le "$SLOW_REPS" ] || continue ;;
                          *) [ "$rep" -le "$REPS" ] || continue ;; esac
            share_up "$kind"
            case $tool in sharelink|mv) app_up "$src" ;; esac
            settle
            t0=$(now)
            case $tool in
                cp) cp -a "$src/data" "$SHARE/data" && sync ;;
                rsync) rsync -a "$src/data/" "$SHARE/data/" && sync ;;
                sharelink) "$BIN" -q --config "$WORK/migrate.toml" link ;;
                # A move: the copy, then the app's copy deleted (whiteouts
                # on the overlay, as sharelink's prune makes).
                mv) mv "$WORK/merged/data" "$SHARE/data" && sync ;;
                # Timed by itself, without Python's start and the walk of SRC.
                floor) fl=$(python3 benches/floor.py "$src/data" "$SHARE/data" "$FLOOR_THREADS") ;;
                floor-data) fl=$(python3 benches/floor.py --data "$src/data" "$SHARE/data" "$FLOOR_THREADS") ;;
            esac
            t1=$(now)
            case $tool in floor*) t1=$(echo "$t0 + $fl" | bc -l) ;; esac
            ops=$(share_down "$kind")
            if [ "$tool" = floor ]; then   # the names only: its files are empty
                [ "$(names "$src/data")" = "$(names "$STORE/data")" ] \
                    || { echo "!! $case floor: names differ from the source" >&2; exit 1; }
            else
                diff -rq --no-dereference "$src/data" "$STORE/data" >&2 \
                    || { echo "!! $case $tool: copy differs from the source" >&2; exit 1; }
            fi
            case $tool in
                sharelink) [ -L "$WORK/merged/data" ] || { echo "!! $case: app side not linked" >&2; exit 1; } ;;
                mv) [ ! -e "$WORK/merged/data" ] || { echo "!! $case: mv left the app side" >&2; exit 1; } ;;
            esac
            case $tool in sharelink|mv) umount "$WORK/merged" ;; esac
            printf '%s\t%s\t%s\t%s\n' "$case" "$tool" "$(echo "$t1 - $t0" | bc -l)" "$ops" >>"$RAW"
            printf '  %-28s %-10s run %d: %6.2f s  (rig ops, peak in flight, busy ms: %s)\n' \
                "$case" "$tool" "$rep" "$(echo "$t1 - $t0" | bc -l)" "$ops" >&2
        done
    done
}

small_n_for() {   # DELAY
    local p
    for p in $SMALL_N_AT; do [ "${p%%:*}" = "$1" ] && { echo "${p#*:}"; return; }; done
    echo "$SMALL_N"
}

src_small() {   # N: the tree's parent dir (made once)
    local d=$T/src/small-$1
    [ -d "$d/data" ] || make_tree "$d/data" "$1" "$SMALL_KB"
    echo "$d"
}

src_shape() {   # SHAPE: the tree's parent dir (made once)
    local d=$T/src/shape-$1
    if [ ! -d "$d/data" ]; then
        case $1 in
            nested*) make_tree "$d/data" "${1#nested}" "$SMALL_KB" ;;
            *x*) python3 - "$d/data" "${1%x*}" "${1#*x}" "$SMALL_KB" <<'PY'
import os, sys
root, dirs, files, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(dirs):
    d = root if dirs == 1 else os.path.join(root, f"dir{i:04}")
    os.makedirs(d, exist_ok=True)
    for j in range(files):
        with open(os.path.join(d, f"rec{j:05}.bin"), "wb") as f:
            f.write(os.urandom(kb << 10))
PY
            ;;
        esac
    fi
    echo "$d"
}

section_shapes() {
    local k p d shape
    for k in $LOCAL; do
        for shape in $SHAPES_LOCAL; do
            echo "==> shape $shape, $SMALL_KB KiB files, on $k" >&2
            TOOLS=$SHAPE_TOOLS measure "shape $shape, $k" "$k" "$(src_shape "$shape")"
        done
    done
    for d in $DELAYS; do
        for p in $SHAPES_AT; do
            [ "${p%%:*}" = "$d" ] || continue
            shape=${p#*:}
            echo "==> shape $shape, $SMALL_KB KiB files, on the rig at $d ms" >&2
            TOOLS=$SHAPE_TOOLS measure "shape $shape, rig $d ms" "rig$d" "$(src_shape "$shape")"
        done
    done
}

# The share target holds the tree's directories, each with a file of its
# own: sharelink compares, stages every app file and renames each into
# its directory (the moves run in lanes by directory). Checked: every app
# file is on the share, byte for byte, beside the share's own files.
section_merge() {
    local p d shape src rep t0 t1 ops dir bad
    for p in $MERGE_AT; do
        d=${p%%:*} shape=${p#*:}
        src=$(src_shape "$shape")
        echo "==> merge $shape, $SMALL_KB KiB files, into a share holding its directories, rig at $d ms" >&2
        for rep in $(seq 1 "$REPS"); do
            share_up "rig$d"
            for dir in "$src"/data/*/; do
                dir=$(basename "$dir")
                mkdir -p "$STORE/data/$dir"
                echo "the share's own" >"$STORE/data/$dir/other.bin"
            done
            LINK_SPEC='"data" = { share = "data", migrate = "merge" }' app_up "$src"
            settle
            t0=$(now)
            "$BIN" -q --config "$WORK/migrate.toml" link
            t1=$(now)
            ops=$(share_down "rig$d")
            bad=$(diff -rq --no-dereference "$src/data" "$STORE/data" | grep -v ": other.bin$" || true)
            [ -z "$bad" ] || { echo "$bad" >&2; echo "!! merge $shape: copy differs from the source" >&2; exit 1; }
            [ -L "$WORK/merged/data" ] || { echo "!! merge $shape: app side not linked" >&2; exit 1; }
            umount "$WORK/merged"
            printf '%s\t%s\t%s\t%s\n' "merge $shape, rig $d ms" sharelink "$(echo "$t1 - $t0" | bc -l)" "$ops" >>"$RAW"
            printf '  %-28s %-10s run %d: %6.2f s  (rig ops, peak in flight, busy ms: %s)\n' \
                "merge $shape, rig $d ms" sharelink "$rep" "$(echo "$t1 - $t0" | bc -l)" "$ops" >&2
        done
    done
}

section_small() {
    local k n
    for k in $LOCAL; do
        echo "==> small files: $SMALL_N x $SMALL_KB KiB on $k" >&2
        measure "small $SMALL_N, $k" "$k" "$(src_small "$SMALL_N")"
    done
    for d in $DELAYS; do
        n=$(small_n_for "$d")
        echo "==> small files: $n x $SMALL_KB KiB on the rig at $d ms" >&2
        measure "small $n, rig $d ms" "rig$d" "$(src_small "$n")"
    done
}

section_large() {
    local k d src=$T/src/large-$LARGE_MB rsrc=$T/src/large-$LARGE_RIG_MB
    [ -d "$src/data" ] || make_large "$src/data" "$LARGE_FILES" "$LARGE_MB"
    [ -d "$rsrc/data" ] || make_large "$rsrc/data" "$LARGE_FILES" "$LARGE_RIG_MB"
    for k in $LOCAL; do
        echo "==> large files: $LARGE_FILES x $LARGE_MB MiB on $k" >&2
        measure "large ${LARGE_FILES}x${LARGE_MB}M, $k" "$k" "$src"
    done
    for d in $LARGE_RIG_DELAYS; do
        echo "==> large files: $LARGE_FILES x $LARGE_RIG_MB MiB on the rig at $d ms" >&2
        measure "large ${LARGE_FILES}x${LARGE_RIG_MB}M, rig $d ms" "rig$d" "$rsrc"
    done
}

section_scaling() {
    local n
    for n in $SCALE_NS; do
        if grep -q "^small $n, rig $SCALE_DELAY ms	" "$RAW"; then
            continue   # measured already by section small
        fi
        echo "==> scaling: $n files on the rig at $SCALE_DELAY ms" >&2
        measure "small $n, rig $SCALE_DELAY ms" "rig$SCALE_DELAY" "$(src_small "$n")"
    done
}

# 1,000 links already linked, share targets on the rig: time `link` and
# `status`, each from cold kernel caches (the rig remounted before a run),
# with empty share targets and with RECHECK_FILES files in each.
section_recheck() {
    local d=$WORK/recheck variant cmd i t0 t1 ops
    for variant in empty full; do
        rm -rf "$d"; mkdir -p "$d/app"
        share_up "rig$RECHECK_DELAY"
        {
            printf 'app_root = "%s"\nshare_root = "%s"\nrequire_mount = false\n[links]\n' "$d/app" "$SHARE"
            for i in $(seq 1 "$RECHECK_LINKS"); do
                printf '"app/d%04d" = { share = "s/d%04d", dirs = ["in", "out"] }\n' "$i" "$i"
            done
        } >"$d/sharelink.toml"
        echo "==> recheck ($variant): linking $RECHECK_LINKS entries on the rig at $RECHECK_DELAY ms" >&2
        "$BIN" -q --config "$d/sharelink.toml" link
        if [ $variant = full ]; then   # data written behind the rig's back: no delay
            python3 - "$STORE/s" "$RECHECK_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for t in os.listdir(root):
    for j in range(n):
        with open(os.path.join(root, t, "in", f"f{j}.bin"), "wb") as f:
            f.write(os.urandom(64 << 10))
PY
        fi
        share_down "rig$RECHECK_DELAY" >/dev/null
        for cmd in link status; do
            for i in $(seq 1 "$RECHECK_REPS"); do
                "$RIG" mount "$STORE" "$SHARE" --delay-ms "$RECHECK_DELAY" --watch-pid $$ $RIG_OPTS >/dev/null
                t0=$(now)
                "$BIN" -q --config "$d/sharelink.toml" "$cmd" >/dev/null
                t1=$(now)
                ops=$(share_down "rig$RECHECK_DELAY")
                printf '%s\t%s\t%s\t%s\n' "recheck $RECHECK_LINKS linked, rig $RECHECK_DELAY ms, $variant" \
                    "$cmd" "$(echo "$t1 - $t0" | bc -l)" "$ops" >>"$RAW"
                printf '  recheck %-6s %-7s run %d: %6.3f s (rig ops, peak: %s)\n' "$variant" "$cmd" "$i" \
                    "$(echo "$t1 - $t0" | bc -l)" "$ops" >&2
            done
        done
    done
}

# The kernel's per-connection FUSE limits on background requests, and the
# small-files migration at SCALE_DELAY with them raised.
section_tunables() {
    mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections
    share_up "rig$SCALE_DELAY"
    echo "==> FUSE tunables of a rig mount (kernel defaults unless RIG_OPTS sets them):" >&2
    "$RIG" tunables "$SHARE" | tee "$OUT/latency-tunables.txt" >&2
    share_down "rig$SCALE_DELAY" >/dev/null
    local src
    src=$(src_small "$TUNE_N")
    TOOLS=$TUNE_TOOLS measure "small $TUNE_N, rig $SCALE_DELAY ms, bg 12/9" "rig$SCALE_DELAY" "$src"
    TOOLS=$TUNE_TOOLS RIG_OPTS="$RIG_OPTS --max-background 256 --congestion-threshold 192" \
        measure "small $TUNE_N, rig $SCALE_DELAY ms, bg 256/192" "rig$SCALE_DELAY" "$src"
}

echo "# latency benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD))"
for s in $SECTIONS; do "section_$s"; done

python3 - "$RAW" <<'PY'
import sys, statistics
from collections import OrderedDict
rows = OrderedDict()
for line in open(sys.argv[1]):
    case, tool, secs, ops = line.rstrip("\n").split("\t")
    r = rows.setdefault(case, OrderedDict()).setdefault(tool, {"t": [], "runs": []})
    r["t"].append(float(secs))
    r["runs"].append((float(secs), ops))
import re
def files(case):
    n = re.match(r"(?:small|recheck) (\d+)|(?:shape|merge) (?:nested(\d+)|(\d+)x(\d+))", case)
    if not n:
        return None
    if n.group(1) or n.group(2):
        return int(n.group(1) or n.group(2))
    return int(n.group(3)) * int(n.group(4))
print("\n| case | tool | median s | runs | vs cp -a | vs floor | vs floor-data | ms per file | rig ops | peak in flight | mean in flight |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for case, tools in rows.items():
    med = {t: statistics.median(r["t"]) for t, r in tools.items()}
    for tool, r in tools.items():
        m = med[tool]
        name = {"cp": "cp -a && sync", "rsync": "rsync -a && sync", "sharelink": "sharelink link", "mv": "mv && sync"}.get(tool, tool)
        ratio = f"{m / med['cp']:.3f}" if "cp" in med else ""
        floor = f"{m / med['floor']:.2f}" if "floor" in med else ""
        floor_data = f"{m / med['floor-data']:.2f}" if "floor-data" in med else ""
        n = files(case)
        per = f"{m / n * 1000:.2f}" if n else ""
        # The rig's counters of the median run (the middle one by time).
        secs, ops = sorted(r["runs"])[(len(r["runs"]) - 1) // 2]
        ops, peak, busy = (ops.split(" ") + ["-", "-"])[:3]
        mean = f"{int(busy) / 1000 / secs:.1f}" if busy.isdigit() else "-"
        print(f"| {case} | {name} | {m:.3f} | {len(r['t'])} | {ratio} | {floor} | {floor_data} | {per} | {ops} | {peak} | {mean} |")
PY
echo "raw runs: $RAW" >&2
