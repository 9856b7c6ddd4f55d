#!/usr/bin/env bash
# Release artifacts, tested as a user gets them (issue 11):
#   - scripts/release.sh builds both static binaries, both wheels, SHA256SUMS
#   - binaries: static, right architecture, x86_64 within its size budget
#   - wheels: tags that pip on glibc and on musl accepts, per architecture
#   - `pip install` of the wheel into a fresh virtualenv gives a working
#     `sharelink` on PATH: --version, then link + run with that copy
#   - the same functional suite on the x86_64 binary (native) and on the
#     aarch64 binary under qemu-user: --version, check, a link migration,
#     status, run exit statuses, signal forwarding, reaping as PID 1, and a
#     TERM during linking that the next run finishes from
#
#   bash tests/release/check.sh
#
# Exit 0: all passed; 1: something failed; 77: a prerequisite is missing
# (maturin, qemu-aarch64-static, a rustup target): the cargo test wrapper
# skips loudly then, or fails with CI=true.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

PYTOOLS="${SHARELINK_PYTOOLS:-/opt/sharelink-pytools}"
MATURIN="${MATURIN:-$(command -v maturin || echo "$PYTOOLS/bin/maturin")}"
QEMU="${QEMU_AARCH64:-$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)}"
SIZE_BUDGET=$((1363148)) # 1.3 MiB, x86_64 release binary

skip() { echo "SKIP: $*"; exit 77; }
[ -x "$MATURIN" ] || skip "maturin not found (run .ci/install-deps)"
[ -n "$QEMU" ] || skip "qemu-aarch64-static not found (apt-get install qemu-user-static)"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || skip "rustup target $t missing"
done
command -v unshare >/dev/null || skip "unshare (util-linux) missing"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-release.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILED=()
PASSED=0
T0=$SECONDS
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED+=("$*"); echo "FAIL: $*"; }
check() { local d="$1"; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
t() { local s="$1"; shift; timeout -k 5 "$s" "$@"; }

# --- build -----------------------------------------------------------------
DIST="$WORK/dist"
echo "--- scripts/release.sh"
if ! DIST_DIR="$DIST" MATURIN="$MATURIN" t 1800 scripts/release.sh >"$WORK/release.log" 2>&1; then
    tail -n 40 "$WORK/release.log"
    echo "FAIL: scripts/release.sh"
    exit 1
fi
pass "scripts/release.sh built the release"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
X86="$DIST/sharelink-$VERSION-x86_64-linux-musl"
ARM="$DIST/sharelink-$VERSION-aarch64-linux-musl"
(cd "$DIST" && ls -l) | sed 's/^/    /'

# --- binaries ----------------------------------------------------------------
machine() { readelf -hW "$1" | sed -n 's/^ *Machine: *//p'; }
static() { ! readelf -lW "$1" | grep -q INTERP; }
check "x86_64 binary: static, $(machine "$X86")" bash -c '[ "$1" = "Advanced Micro Devices X86-64" ]' _ "$(machine "$X86")"
check "x86_64 binary has no program interpreter (static)" static "$X86"
check "aarch64 binary: static, $(machine "$ARM")" bash -c '[ "$1" = AArch64 ]' _ "$(machine "$ARM")"
check "aarch64 binary has no program interpreter (static)" static "$ARM"
X86_SIZE="$(stat -c %s "$X86")"
ARM_SIZE="$(stat -c %s "$ARM")"
echo "    sizes: x86_64 $X86_SIZE B, aarch64 $ARM_SIZE B"
check "x86_64 binary within 1.3 MiB ($X86_SIZE <= $SIZE_BUDGET)" test "$X86_SIZE" -le "$SIZE_BUDGET"
check "SHA256SUMS verifies" bash -c 'cd "$1" && sha256sum --quiet -c SHA256SUMS' _ "$DIST"
check "SHA256SUMS lists 2 binaries and 2 wheels" test "$(wc -l <"$DIST/SHA256SUMS")" = 4

# --- wheels: tags ----------------------------------------------------------------
for arch in x86_64 aarch64; do
    w="$(ls "$DIST"/sharelink-"$VERSION"-*_"$arch".whl)"
    echo "    wheel $(basename "$w"): $(stat -c %s "$w") B"
    check "$arch wheel is tagged manylinux2014 and musllinux_1_1" \
        bash -c '[[ "$1" == *manylinux2014_$2* && "$1" == *musllinux_1_1_$2* && "$1" == *-py3-none-* ]]' _ "$(basename "$w")" "$arch"
done
# pip chooses the wheel on glibc and musl systems, old and new. pip on a
# system with glibc 2.N (musl 1.N) accepts manylinux_2_N..2_0 (musllinux_1_N
# ..1_0): `--platform` given once per tag, as pip's own tag list for such a
# system would have them (nothing is downloaded: --no-index).
PIP=(python3 -m pip --disable-pip-version-check --no-cache-dir -q)
platforms_of() { # LIBC_MAJOR_MINOR_ARCH -> --platform flags, newest first
    local family major minor arch="${1#*_*_*_}" m
    IFS=_ read -r family major minor _ <<<"$1"
    for ((m = minor; m >= 0; m--)); do printf -- '--platform\n%s_%s_%s_%s\n' "$family" "$major" "$m" "$arch"; done
}
for plat in manylinux_2_17_x86_64 manylinux_2_36_x86_64 musllinux_1_1_x86_64 musllinux_1_2_x86_64 \
    manylinux_2_17_aarch64 manylinux_2_36_aarch64 musllinux_1_2_aarch64; do
    arch="${plat#*_*_*_}"
    tgt="$WORK/plat-$plat"
    mapfile -t pflags < <(platforms_of "$plat")
    if t 120 "${PIP[@]}" install --no-index --find-links "$DIST" --only-binary=:all: \
        "${pflags[@]}" --python-version 3.12 --target "$tgt" sharelink >"$WORK/pip.log" 2>&1 &&
        [ -f "$tgt/bin/sharelink" ] && [ "$(machine "$tgt/bin/sharelink")" = "$(machine "$DIST/sharelink-$VERSION-$arch-linux-musl")" ]; then
        pass "pip installs the $arch wheel for platform $plat"
    else
        cat "$WORK/pip.log"
        fail "pip installs the $arch wheel for platform $plat"
    fi
done

# --- fresh virtualenv -------------------------------------------------------------
echo "--- pip install into a fresh virtualenv"
VENV="$WORK/venv"
python3 -m venv "$VENV"
if t 120 "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-index --find-links "$DIST" sharelink >"$WORK/pip.log" 2>&1; then
    pass "pip install --no-index sharelink into a fresh venv"
else
    cat "$WORK/pip.log"
    fail "pip install --no-index sharelink into a fresh venv"
fi
INSTALLED="$(PATH="$VENV/bin:$PATH" command -v sharelink || true)"
check "sharelink is on the venv's PATH ($INSTALLED)" test "$INSTALLED" = "$VENV/bin/sharelink"
check "the installed binary is the released x86_64 binary" cmp -s "$INSTALLED" "$X86"
out="$(PATH="$VENV/bin:$PATH" sharelink --version 2>&1 || true)"
check "sharelink --version from the venv prints 'sharelink $VERSION' (got: $out)" test "$out" = "sharelink $VERSION"

# --- functional suite ------------------------------------------------------------
# suite LABEL BIN [RUNNER...]: run the binary (through RUNNER, e.g. qemu).
suite() {
    local label="$1" bin="$2"
    shift 2
    local -a R=("$@" "$bin")
    local d="$WORK/suite-$label"
    mkdir -p "$d"
    echo "--- functional suite: $label${1:+ (via $(basename "$1"))}"

    out="$("${R[@]}" --version 2>&1 || true)"
    check "$label: --version (got: $out)" test "$out" = "sharelink $VERSION"

    # A tree with what data directories hold: nested dirs, an empty dir, a
    # 3 MiB binary file, a symlink inside, odd names.
    local app="$d/app" share="$d/share" cfg="$d/sharelink.toml"
    mkdir -p "$app/data/input/2024" "$app/data/empty" "$app/cache" "$share"
    head -c 3145728 /dev/urandom >"$app/data/input/blob.bin"
    for i in $(seq 1 200); do echo "row $i" >"$app/data/input/2024/part-$i.csv"; done
    echo 'name with spaces' >"$app/data/input/a b.txt"
    ln -s input/blob.bin "$app/data/latest"
    echo params >"$app/cache/model.params"
    cp -a "$app" "$d/baked"
    cat >"$cfg" <<CFG
app_root = "$app"
share_root = "$share"
require_mount = false
[links]
"data"  = { share = "project/data", dirs = ["input", "output"] }
"cache" = "project/cache"
[run]
grace_period = "2s"
CFG
    local code
    code=0; "${R[@]}" --config "$cfg" check >/dev/null 2>&1 || code=$?
    check "$label: check of a valid config exits 0 (got $code)" test "$code" = 0
    printf 'app_root = "relative"\n[links]\n' >"$d/bad.toml"
    code=0; "${R[@]}" --config "$d/bad.toml" check >/dev/null 2>&1 || code=$?
    check "$label: check of a bad config exits 78 (got $code)" test "$code" = 78
    code=0; "${R[@]}" --config "$cfg" status >/dev/null 2>&1 || code=$?
    check "$label: status before linking exits 1 (got $code)" test "$code" = 1

    code=0; t 300 "${R[@]}" --config "$cfg" link 2>"$d/link.log" || code=$?
    check "$label: link migrates (exit $code)" test "$code" = 0
    [ "$code" = 0 ] || sed 's/^/    /' "$d/link.log"
    check "$label: data and cache are symlinks into the share" \
        bash -c '[ "$(readlink "$1/data")" = "$2/project/data" ] && [ "$(readlink "$1/cache")" = "$2/project/cache" ]' _ "$app" "$share"
    check "$label: the share holds the baked data byte for byte (symlinks as symlinks)" \
        bash -c 'mkdir -p "$1/output-expected" && diff -r --no-dereference "$2/data" "$3/project/data" -x output &&
                 [ -d "$3/project/data/output" ] && diff -r --no-dereference "$2/cache" "$3/project/cache"' _ "$d" "$d/baked" "$share"
    check "$label: lock directory empty after linking" \
        bash -c '[ -z "$(ls -A "$1/.sharelink/locks" 2>/dev/null)" ]' _ "$share"
    out="$("${R[@]}" --config "$cfg" status --json 2>/dev/null || true)"
    check "$label: status --json reports healthy" \
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["healthy"] and all(l["state"]=="linked" for l in d["links"]), d' "$out"

    # run: the command's exit status, 126/127, signals forwarded.
    code=0; "${R[@]}" --config "$cfg" run -- sh -c 'exit 7' 2>/dev/null || code=$?
    check "$label: run passes the command's exit status (7, got $code)" test "$code" = 7
    code=0; "${R[@]}" --config "$cfg" run -- true 2>/dev/null || code=$?
    check "$label: run -- true exits 0 (got $code)" test "$code" = 0
    code=0; "${R[@]}" --config "$cfg" run -- /nonexistent/cmd 2>/dev/null || code=$?
    check "$label: run of a missing command exits 127 (got $code)" test "$code" = 127
    code=0; "${R[@]}" --config "$cfg" run -- "$cfg" 2>/dev/null || code=$?
    check "$label: run of a non-executable file exits 126 (got $code)" test "$code" = 126
    code=0; "${R[@]}" --config "$cfg" run -- sh -c 'kill -9 $$' 2>/dev/null || code=$?
    check "$label: a command killed by SIGKILL gives 137 (got $code)" test "$code" = 137

    # TERM to sharelink reaches the command, whose handler decides the status.
    local ready="$d/ready"
    rm -f "$ready"
    "${R[@]}" --config "$cfg" run -- sh -c "trap 'exit 42' TERM; touch '$ready'; while :; do sleep 0.1; done" 2>/dev/null &
    local pid=$!
    wait_for_file "$ready" 30
    kill -TERM "$pid" 2>/dev/null || true
    code=0; t 30 tail --pid="$pid" -f /dev/null || true; wait "$pid" || code=$?
    check "$label: SIGTERM is forwarded to the command (its handler's 42, got $code)" test "$code" = 42
    rm -f "$ready"
    # A background job of a script starts with SIGINT ignored, and sharelink
    # hands ignored signals on as it got them (as nohup expects): start it
    # with SIGINT at its default, as a foreground or container start does.
    env --default-signal=INT "${R[@]}" --config "$cfg" run -- sh -c "touch '$ready'; exec sleep 30" 2>/dev/null &
    pid=$!
    wait_for_file "$ready" 30
    sleep 0.2
    kill -INT "$pid" 2>/dev/null || true
    code=0; wait "$pid" || code=$?
    check "$label: SIGINT kills a command without a handler: 130 (got $code)" test "$code" = 130
    rm -f "$ready"
    "${R[@]}" --config "$cfg" run -- sh -c "trap 'echo usr1 >>\"$d/usr1\"' USR1; touch '$ready'; while [ ! -s '$d/usr1' ]; do sleep 0.1; done; exit 3" 2>/dev/null &
    pid=$!
    wait_for_file "$ready" 30
    kill -USR1 "$pid" 2>/dev/null || true
    code=0; wait "$pid" || code=$?
    check "$label: SIGUSR1 is forwarded too (handler ran, exit 3, got $code)" \
        bash -c '[ "$1" = 3 ] && grep -qx usr1 "$2"' _ "$code" "$d/usr1"

    # As PID 1 of a PID namespace (a container): orphans are reaped.
    out="$(t 60 unshare --pid --fork --mount-proc "${R[@]}" --config "$cfg" run -- sh -c '
        for i in 1 2 3 4 5 6; do (sleep 0.3 &); done
        sleep 1.5
        z=0; for s in /proc/[0-9]*/stat; do
            read -r _ _ st _ <"$s" 2>/dev/null || continue; [ "$st" = Z ] && z=$((z+1)); done
        echo "zombies=$z"' 2>/dev/null || true)"
    check "$label: as PID 1, six orphans are reaped (got: $out)" test "$out" = "zombies=0"

    # TERM while linking: stop at a safe point (128+15) or finish; either
    # way the next run ends linked with every file whole.
    local app2="$d/app2" share2="$d/share2" cfg2="$d/sharelink2.toml"
    mkdir -p "$app2/big" "$share2"
    for i in $(seq 1 3000); do echo "line $i" >"$app2/big/f$i"; done
    head -c 8388608 /dev/urandom >"$app2/big/blob"
    cp -a "$app2/big" "$d/big-baked"
    printf 'app_root = "%s"\nshare_root = "%s"\nrequire_mount = false\n[links]\n"big" = "big"\n' \
        "$app2" "$share2" >"$cfg2"
    "${R[@]}" --config "$cfg2" link 2>"$d/term.log" &
    pid=$!
    # As soon as the copy has begun (the staging directory beside the target).
    wait_for_file "$share2/.big.sharelink-staging" 30 || true
    kill -TERM "$pid" 2>/dev/null || true
    code=0; wait "$pid" || code=$?
    echo "    TERM during linking: exit $code ($([ "$code" = 143 ] && echo "stopped mid-migration" || echo "had already finished"))"
    check "$label: TERM during linking exits 143 or 0 (got $code)" bash -c '[ "$1" = 143 ] || [ "$1" = 0 ]' _ "$code"
    code=0; t 300 "${R[@]}" --config "$cfg2" link 2>>"$d/term.log" || code=$?
    check "$label: the next run finishes: linked, every file whole (exit $code)" \
        bash -c '[ "$1" = 0 ] && [ "$(readlink "$2/big")" = "$3/big" ] && diff -r "$4" "$3/big" >/dev/null' _ "$code" "$app2" "$share2" "$d/big-baked"
}
wait_for_file() {
    local until=$((SECONDS + $2))
    while [ ! -e "$1" ]; do
        [ "$SECONDS" -lt "$until" ] || return 1
        sleep 0.05
    done
}

T_X86=$SECONDS
suite x86_64-venv "$INSTALLED"
T_X86=$((SECONDS - T_X86))
T_ARM=$SECONDS
suite aarch64-qemu "$ARM" "$QEMU"
T_ARM=$((SECONDS - T_ARM))
echo "    suite times: x86_64 ${T_X86}s, aarch64 under qemu ${T_ARM}s"

# The aarch64 wheel's binary, as pip installs it, runs under qemu too.
w_arm="$WORK/plat-manylinux_2_17_aarch64/bin/sharelink"
out="$("$QEMU" "$w_arm" --version 2>&1 || true)"
check "aarch64 wheel's binary runs under qemu (got: $out)" test "$out" = "sharelink $VERSION"

echo
echo "release check took $((SECONDS - T0))s"
echo "release: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${FAILED[@]}"
    exit 1
fi
