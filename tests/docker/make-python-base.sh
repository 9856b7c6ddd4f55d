#!/usr/bin/env bash
# Print the tag of a Python base image for the Dockerfile's BASE_IMAGE, making
# one when there is none:
#
#   1. python:3.12-slim-bookworm, when it is present locally (the image users
#      build on with a registry);
#   2. else sharelink-base:python-bookworm-v1, built once here and cached:
#      Debian bookworm `debootstrap --variant=minbase --include=python3` from
#      the mirror in this machine's apt sources, then `docker import`. No
#      registry needed, only Debian's packages. python3 rather than
#      python3-minimal: the latter lacks json, shutil, statistics,
#      dataclasses..., and pipelines written for python:*-slim use them.
#
#   BASE_IMAGE=$(tests/docker/make-python-base.sh)
#
# Environment:
#   SHARELINK_PYTHON_BASE  tag of the image built here (sharelink-base:python-bookworm-v1)
#   SHARELINK_PYTHON_UPSTREAM  the registry image preferred when present
#                          (python:3.12-slim-bookworm; empty: always build here)
#   DEBIAN_MIRROR          mirror URL (default: from /etc/apt/sources.list*)
#   DEBOOTSTRAP_TIMEOUT    seconds allowed for debootstrap (900)
#
# Idempotent, and safe to run concurrently (one build, the others wait for
# it). Needs root and debootstrap (`apt-get install debootstrap`). Progress
# goes to stderr; stdout is only the tag.
set -euo pipefail

UPSTREAM="${SHARELINK_PYTHON_UPSTREAM-python:3.12-slim-bookworm}"
TAG="${SHARELINK_PYTHON_BASE:-sharelink-base:python-bookworm-v1}"
SUITE=bookworm
log() { echo "make-python-base: $*" >&2; }
die() { log "error: $*"; exit 1; }
have_image() { timeout 30 docker image inspect "$1" >/dev/null 2>&1; }

timeout 30 docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

if [ -n "$UPSTREAM" ] && have_image "$UPSTREAM"; then
    log "using $UPSTREAM (present locally)"
    echo "$UPSTREAM"
    exit 0
fi
if have_image "$TAG"; then
    log "$TAG already present"
    echo "$TAG"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building $TAG needs root (debootstrap chroots); run as root, or load $UPSTREAM"
command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap not found: apt-get install debootstrap (.ci/install-deps does it)"

# One build at a time on this machine: a second caller waits, then finds the tag.
exec 9>"${TMPDIR:-/tmp}/sharelink-python-base.lock"
if ! flock -n 9; then
    log "another build of $TAG is running; waiting for it"
    timeout 1200 flock 9 || die "gave up waiting for the other build"
fi
if have_image "$TAG"; then
    log "$TAG was built meanwhile"
    echo "$TAG"
    exit 0
fi

# The first bookworm (not -security) mirror of the machine's apt sources:
# one-line `deb URI bookworm ...` lists and deb822 `.sources` stanzas.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == s) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Stanzas are separated by blank lines; keep URIs of one whose Suites
        # list the plain suite.
        awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
            { uri = ""; ok = 0
              for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
                if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 }
              }
              if (ok && uri != "") { print uri; exit } }' "$f"
    done
}
MIRROR="${DEBIAN_MIRROR:-$(apt_mirror | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

work="$(mktemp -d "${TMPDIR:-/tmp}/sharelink-python-base.XXXXXX")"
root="$work/rootfs"
cleanup() {
    # debootstrap mounts /proc and /sys inside the target; never let rm
    # descend into them if it was killed before unmounting.
    local m
    for m in $(awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log "building $TAG: debootstrap --variant=minbase --include=python3 $SUITE from $MIRROR (about a minute)"
t0=$SECONDS
if ! timeout -k 10 "${DEBOOTSTRAP_TIMEOUT:-900}" debootstrap --variant=minbase --include=python3 \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed or timed out after $((SECONDS - t0))s (mirror $MIRROR; set DEBIAN_MIRROR to use another)"
fi
log "debootstrap took $((SECONDS - t0))s"

# What a container does not need: downloaded packages, package lists, docs.
# resolv.conf and hostname are the host's; Docker provides its own.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/debootstrap
: >"$root/etc/resolv.conf"
rm -f "$root/etc/hostname"
# `python` as in the python:* images (Debian only has python3).
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"

tar --numeric-owner -C "$root" -cf - . |
    timeout 300 docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "sharelink base: Debian $SUITE minbase + python3 (debootstrap)" \
        - "$TAG" >/dev/null || die "docker import of $TAG failed"
if ! version="$(timeout 60 docker run --rm "$TAG" python3 -c 'import json, shutil, sys; print(sys.version.split()[0])' 2>&1)"; then
    timeout 60 docker rmi -f "$TAG" >/dev/null 2>&1 || true
    die "$TAG does not run python3: $version"
fi
log "built $TAG (Python $version) in $((SECONDS - t0))s"
echo "$TAG"
