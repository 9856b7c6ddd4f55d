#!/usr/bin/env bash
# What a release publishes, built here: static musl binaries for x86_64 and
# aarch64, a binary-only wheel for each (`pip install dist/sharelink-*.whl`
# puts the binary on PATH; nothing is published on PyPI), and SHA256SUMS
# over all of them.
#
#   scripts/release.sh                 # into dist/
#   DIST_DIR=/tmp/out scripts/release.sh
#
# Needs: the two rustup targets (x86_64-unknown-linux-musl,
# aarch64-unknown-linux-musl) and maturin (.ci/install-deps installs both;
# maturin is looked for on PATH, then in $SHARELINK_PYTOOLS/bin). aarch64 is
# linked with rust-lld from the Rust toolchain (.cargo/config.toml), so no
# cross compiler is needed.
#
# Wheel tags: the binary is static, so it runs on any Linux of its
# architecture whatever the libc. maturin can put several platform tags on a
# `bindings = "bin"` wheel; we ask for manylinux2014 (glibc >= 2.17, the
# oldest tag Rust supports) and musllinux_1_1 (every musllinux pip), so one
# wheel per architecture installs on python:*-slim (glibc) and Alpine (musl).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${DIST_DIR:-dist}"
PYTOOLS="${SHARELINK_PYTOOLS:-/opt/sharelink-pytools}"
MATURIN="${MATURIN:-$(command -v maturin || echo "$PYTOOLS/bin/maturin")}"
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
TAGS=(manylinux2014 musllinux_1_1)

die() { echo "release: $*" >&2; exit 1; }
[ -x "$MATURIN" ] || die "maturin not found (pip install maturin, or run .ci/install-deps)"
for t in "${TARGETS[@]}"; do
    rustup target list --installed 2>/dev/null | grep -qx "$t" || die "rustup target $t missing (rustup target add $t)"
done

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
[ -n "$VERSION" ] || die "no version in Cargo.toml"
# Reproducible wheel timestamps: the last commit's time.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

mkdir -p "$OUT"
rm -f "$OUT/sharelink-$VERSION-"* "$OUT/SHA256SUMS"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

for t in "${TARGETS[@]}"; do
    arch="${t%%-*}"
    echo "==> $t: static binary" >&2
    cargo build --release --locked --target "$t"
    bin="$TARGET_DIR/$t/release/sharelink"
    # Static: no program interpreter (dynamic loader) requested.
    if readelf -lW "$bin" | grep -q 'INTERP'; then die "$bin is not static"; fi
    install -m 0755 "$bin" "$OUT/sharelink-$VERSION-$arch-linux-musl"

    echo "==> $t: wheel" >&2
    "$MATURIN" build --release --locked --target "$t" --compatibility "${TAGS[@]}" --out "$OUT" >&2
    wheel="$(ls "$OUT/sharelink-$VERSION-"*"_$arch.whl")"
    # The wheel must carry exactly the binary published beside it.
    python3 - "$wheel" "$bin" <<'PY' || die "$wheel does not carry $bin"
import sys, zipfile
wheel, binary = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    inner = [n for n in z.namelist() if n.endswith(".data/scripts/sharelink")]
    assert len(inner) == 1, inner
    assert z.read(inner[0]) == open(binary, "rb").read()
PY
done

(
    cd "$OUT"
    sha256sum "sharelink-$VERSION-"*-linux-musl "sharelink-$VERSION-"*.whl >SHA256SUMS
)
echo "==> $OUT:" >&2
(cd "$OUT" && ls -l "sharelink-$VERSION-"* SHA256SUMS) >&2
