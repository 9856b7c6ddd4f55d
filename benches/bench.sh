#!/usr/bin/env bash
# sharelink benchmarks, side by side with its peers in one run on one machine.
# Prints a markdown table of medians and ratios (and keeps raw hyperfine JSON
# in $OUT). Needs root (PID namespaces, mounts) and the peers from Debian:
# tini (tini-static), dumb-init, catatonit, hyperfine (.ci/install-deps).
#
#   benches/bench.sh            # everything (~5 min)
#   benches/bench.sh startup    # one section: size startup memory reap recheck migrate
#   MIGRATE_MB=256 benches/bench.sh migrate
set -euo pipefail
cd "$(dirname "$0")/.."

SECTIONS=${*:-size startup memory reap recheck migrate}
OUT=${OUT:-target/bench}
MIGRATE_MB=${MIGRATE_MB:-1024}
RUNS=${RUNS:-200}
mkdir -p "$OUT"
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (PID namespaces, mounts)" >&2; exit 2; }

echo "==> building (release, static musl)" >&2
cargo build -q --release --locked --target x86_64-unknown-linux-musl
cargo build -q --release --locked --example zombie_burst
BIN=$PWD/target/x86_64-unknown-linux-musl/release/sharelink
BURST=$PWD/target/release/examples/zombie_burst

WORK=$(mktemp -d /var/tmp/sharelink-bench.XXXXXX)
cleanup() {
    for m in "$WORK"/mnt/*; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Medians from hyperfine JSON: prints "name<TAB>median_ms" per command.
medians() {
    python3 - "$1" <<'PY'
import json, sys, statistics
for r in json.load(open(sys.argv[1]))["results"]:
    print(f'{r["command"]}\t{statistics.median(r["times"]) * 1000:.3f}')
PY
}

# A linked 4-link setup like the seed's, for start-up.
setup_linked() {
    local d=$WORK/linked
    mkdir -p "$d/app" "$d/share"
    cat >"$d/sharelink.toml" <<EOF
app_root = "$d/app"
share_root = "$d/share"
require_mount = false
[links]
"forecasting/data"      = { share = "forecasting/data", dirs = ["input", "output"] }
"modelling/cache"       = { share = "modelling/cache", dirs = ["sarima_params", "time_moe_cache"] }
"modelling/predictions" = "modelling/predictions"
"scraping/scraped_data" = "scraping/scraped_data"
EOF
    "$BIN" -q --config "$d/sharelink.toml" link
    echo "$d/sharelink.toml"
}

# An empty config: `run` with nothing to link, the init alone.
setup_empty() {
    local d=$WORK/empty
    mkdir -p "$d/share"
    printf 'app_root = "%s/app"\nshare_root = "%s/share"\nrequire_mount = false\n' "$d" "$d" >"$d/sharelink.toml"
    echo "$d/sharelink.toml"
}

# name|command-prefix pairs for the inits; the command follows the prefix.
# `ONLY_INITS=1` leaves out the no-links variant (memory and reap are the
# same for it).
inits() {
    local cfg=$1
    echo "sharelink|$BIN -q --config $cfg run --"
    [ -n "${ONLY_INITS:-}" ] || echo "sharelink, no links|$BIN -q --config $(setup_empty) run --"
    echo "tini-static|tini-static -s --"
    echo "dumb-init|dumb-init"
    echo "catatonit|catatonit --"
}

section_size() {
    local size
    size=$(stat -c %s "$BIN")
    printf '\n### Binary\n\n| what | bytes | MiB | budget |\n|---|---:|---:|---|\n'
    printf '| sharelink (static musl, stripped) | %d | %.3f | ≤ 1 MiB: %s |\n' "$size" \
        "$(echo "$size / 1048576" | bc -l)" "$([ "$size" -le 1048576 ] && echo met || echo MISSED)"
    for p in tini-static dumb-init catatonit; do
        printf '| %s | %d | %.3f | |\n' "$p" "$(stat -c %s "$(command -v $p)")" \
            "$(echo "$(stat -c %s "$(command -v $p)") / 1048576" | bc -l)"
    done
}

section_startup() {
    local cfg args=() name cmd
    cfg=$(setup_linked)
    for mode in direct pid1; do
        args=(-N --warmup 20 --runs "$RUNS" --export-json "$OUT/startup-$mode.json" -n /bin/true)
        if [ $mode = pid1 ]; then
            args+=("unshare --pid --fork --mount-proc /bin/true")
        else
            args+=("/bin/true")
        fi
        while IFS='|' read -r name cmd; do
            args+=(-n "$name")
            if [ $mode = pid1 ]; then
                args+=("unshare --pid --fork --mount-proc $cmd /bin/true")
            else
                args+=("$cmd /bin/true")
            fi
        done < <(inits "$cfg")
        hyperfine --style none "${args[@]}" >/dev/null
    done
    printf '\n### Start-up: `INIT /bin/true` (sharelink: 4 links already linked, or none)\n\n'
    printf '| init | direct median ms | overhead vs /bin/true ms | as PID 1 median ms | overhead vs unshare alone ms | overhead ratio vs tini-static (PID 1) |\n|---|---:|---:|---:|---:|---:|\n'
    python3 - "$OUT/startup-direct.json" "$OUT/startup-pid1.json" <<'PY'
import json, sys, statistics
def load(p):
    return {r["command"]: statistics.median(r["times"]) * 1000 for r in json.load(open(p))["results"]}
d, p = load(sys.argv[1]), load(sys.argv[2])
base_d, base_p = d["/bin/true"], p["/bin/true"]
tini = p["tini-static"] - base_p
for name in ["/bin/true", "sharelink", "sharelink, no links", "tini-static", "dumb-init", "catatonit"]:
    ov_d, ov_p = d[name] - base_d, p[name] - base_p
    ratio = f"{ov_p / tini:.2f}x" if name != "/bin/true" and tini > 0 else ""
    print(f"| {name} | {d[name]:.3f} | {ov_d:+.3f} | {p[name]:.3f} | {ov_p:+.3f} | {ratio} |")
PY
}

section_memory() {
    local cfg name cmd hwm
    cfg=$(setup_linked)
    printf '\n### Peak memory of the init process itself (VmHWM, as PID 1)\n\n| init | VmHWM kB |\n|---|---:|\n'
    while IFS='|' read -r name cmd; do
        # The command reads its parent's (the init's) status.
        hwm=$(unshare --pid --fork --mount-proc $cmd /bin/sh -c 'sleep 0.2; grep VmHWM /proc/$PPID/status' | awk '{print $2}')
        printf '| %s | %s |\n' "$name" "$hwm"
    done < <(ONLY_INITS=1 inits "$cfg")
}

section_reap() {
    local cfg name cmd n=2000 reps=${REAP_REPS:-15}
    cfg=$(setup_linked)
    printf '\n### Reaping a burst of %d orphaned zombies released at once (as PID 1, median of %d)\n\n| init | median ms | all reaped |\n|---|---:|---|\n' $n "$reps"
    while IFS='|' read -r name cmd; do
        local times=() ok=yes
        for _ in $(seq "$reps"); do
            line=$(timeout 60 unshare --pid --fork --mount-proc $cmd "$BURST" $n) || ok=no
            times+=("$(echo "$line" | awk '{print $4}')")
        done
        printf '| %s | %s | %s |\n' "$name" \
            "$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$ok"
    done < <(ONLY_INITS=1 inits "$cfg")
}

section_recheck() {
    local d=$WORK/recheck
    mkdir -p "$d/app" "$d/share"
    {
        printf 'app_root = "%s"\nshare_root = "%s"\nrequire_mount = false\n[links]\n' "$d/app" "$d/share"
        for i in $(seq 1 1000); do printf '"app/d%04d" = { share = "s/d%04d", dirs = ["in", "out"] }\n' "$i" "$i"; done
    } >"$d/sharelink.toml"
    "$BIN" -q --config "$d/sharelink.toml" link
    hyperfine -N --style none --warmup 5 --runs 50 --export-json "$OUT/recheck.json" \
        -n "link (1000 linked)" "$BIN --config $d/sharelink.toml link" \
        -n "link -q (1000 linked)" "$BIN -q --config $d/sharelink.toml link" \
        -n "status (1000 linked)" "$BIN --config $d/sharelink.toml status" >/dev/null
    printf '\n### Re-checking 1,000 already-linked entries (budget ≤ 20 ms)\n\n| command | median ms |\n|---|---:|\n'
    medians "$OUT/recheck.json" | while IFS=$'\t' read -r c m; do printf '| %s | %s |\n' "$c" "$m"; done
}

section_migrate() {
    local src=$WORK/src img=$WORK/share.img m=$WORK/mnt
    mkdir -p "$m/share" "$m/ovl"
    echo "==> making a ${MIGRATE_MB} MiB mixed tree" >&2
    python3 - "$src/data" "$MIGRATE_MB" <<'PY'
import os, sys, random
root, mb = sys.argv[1], int(sys.argv[2])
random.seed(1)
total, i = 0, 0
budget = mb << 20
big = budget * 4 // 10           # 40% in a few large files
os.makedirs(root, exist_ok=True)
for j in range(8):
    with open(f"{root}/big{j}.bin", "wb") as f:
        f.write(os.urandom(1 << 20) * (big // 8 >> 20))
    total += big // 8
while total < budget:            # the rest in many small files, nested
    d = os.path.join(root, f"d{i % 40}", f"e{i % 7}")
    os.makedirs(d, exist_ok=True)
    n = random.randint(1, 64 << 10)
    with open(os.path.join(d, f"f{i}.dat"), "wb") as f:
        f.write(os.urandom(n))
    total += n; i += 1
    if i % 500 == 0:
        os.symlink(f"f{i-1}.dat", os.path.join(d, f"l{i}"))
print(f"{i} small files", file=sys.stderr)
PY
    # The share: a separate ext4 filesystem on a loop device, so syncs
    # really write and the move crosses filesystems.
    truncate -s $((MIGRATE_MB * 3 + 512))M "$img"
    mkfs.ext4 -q -F "$img"
    mount -o loop "$img" "$m/share"
    cat >"$WORK/migrate.toml" <<EOF
app_root = "$m/ovl/merged"
share_root = "$m/share"
require_mount = true
[links]
"data" = "data"
EOF
    # Each sharelink run gets a fresh overlay whose lower layer is the tree
    # (a baked image layer); cp -a copies the same tree. Both end synced;
    # both start after the previous run's writeback has settled (sync, 2 s).
    cat >"$WORK/prep-sharelink.sh" <<EOF
set -e
umount "$m/ovl/merged" 2>/dev/null || true
rm -rf "$m/ovl" "$m/share/data" "$m/share/.sharelink"; mkdir -p "$m/ovl/u" "$m/ovl/w" "$m/ovl/merged"
mount -t overlay overlay -o lowerdir="$src",upperdir="$m/ovl/u",workdir="$m/ovl/w" "$m/ovl/merged"
sync; sleep 2
EOF
    hyperfine --style none --runs "${MIGRATE_RUNS:-5}" --export-json "$OUT/migrate.json" \
        --prepare "rm -rf $m/share/data; sync; sleep 2" -n "cp -a && sync" "cp -a $src/data $m/share/data && sync" \
        --prepare "sh $WORK/prep-sharelink.sh" -n "sharelink link" "$BIN -q --config $WORK/migrate.toml link" >/dev/null
    umount "$m/ovl/merged" 2>/dev/null || true
    printf '\n### Migrating a %d MiB mixed tree (overlay lower layer -> ext4 on loop), durable\n\n| command | median s | MiB/s | throughput vs cp -a && sync |\n|---|---:|---:|---:|\n' "$MIGRATE_MB"
    python3 - "$OUT/migrate.json" "$MIGRATE_MB" <<'PY'
import json, sys, statistics
mb = int(sys.argv[2])
r = {x["command"]: statistics.median(x["times"]) for x in json.load(open(sys.argv[1]))["results"]}
cp = r["cp -a && sync"]
for name, t in r.items():
    print(f"| {name} | {t:.3f} | {mb / t:.0f} | {cp / t:.2f}x |")
PY
}

echo "# sharelink benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r))"
for s in $SECTIONS; do "section_$s"; done
