#!/usr/bin/env bash
# Build a tiny local base image from Debian's static busybox, for machines
# without an image registry (CI here). Idempotent: does nothing when the tag
# already exists. Prints the image tag on stdout.
#
#   tests/docker/make-base-image.sh            # -> sharelink-base:busybox-v1
#   SHARELINK_BASE_IMAGE=foo:bar tests/docker/make-base-image.sh
#
# Where busybox comes from: $BUSYBOX if set, else /bin/busybox when it is the
# static build (Debian's busybox-static), else the busybox-static .deb fetched
# with `apt-get download` and unpacked (no install on the host needed).
set -euo pipefail

TAG="${SHARELINK_BASE_IMAGE:-sharelink-base:busybox-v1}"
log() { echo "make-base-image: $*" >&2; }

if timeout 30 docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already present"
    echo "$TAG"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Static means: an ELF file without a PT_INTERP program header (no loader).
u() { od -An -t "u$2" -j "$1" -N "$2" "$3" | tr -d ' '; }
is_static() {
    [ -x "$1" ] && [ "$(head -c4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
    local phoff phentsize phnum i
    phoff=$(u 32 8 "$1"); phentsize=$(u 54 2 "$1"); phnum=$(u 56 2 "$1")
    for ((i = 0; i < phnum; i++)); do
        [ "$(u $((phoff + i * phentsize)) 4 "$1")" = 3 ] && return 1
    done
    return 0
}

bb="${BUSYBOX:-}"
if [ -z "$bb" ]; then
    if is_static /bin/busybox; then
        bb=/bin/busybox
    else
        log "no static busybox on the host; fetching Debian's busybox-static"
        ( cd "$work" && { timeout 300 apt-get download busybox-static >/dev/null 2>&1 \
            || { timeout 300 apt-get update -qq >/dev/null && timeout 300 apt-get download busybox-static >/dev/null; }; } )
        dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
        bb="$work/deb/bin/busybox"
    fi
fi
is_static "$bb" || { log "$bb is not a static busybox"; exit 1; }
log "using $bb ($("$bb" 2>&1 | head -n1))"

root="$work/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,tmp,proc,sys,dev,mnt,var/tmp,run}
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
install -m 0755 "$bb" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
ln -sf /bin/busybox "$root/usr/bin/env"
cat >"$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$root/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf - . |
    timeout 120 docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        --message "sharelink test base: Debian busybox-static" \
        - "$TAG" >/dev/null
log "built $TAG"
echo "$TAG"
