#!/usr/bin/env bash
# The main job, on any machine with Docker and docker-compose, registry or
# not: build the static sharelink binary and the image of the demo Python
# pipeline, then run it twice with `docker-compose up` over ./local_fileshare:
# the first run moves the data baked into the image into the "share" and
# searches the SARIMA orders; the second finds everything on the share and
# reuses the cached orders.
#
#   scripts/local-up.sh
#
# The image's base is python:3.12-slim-bookworm when it is present locally,
# else a Python base made here from Debian's packages
# (tests/docker/make-python-base.sh). With a registry, the guide's
# `docker-compose up --build` does the same through the Dockerfile's builder
# stage (rust image) and the python image.
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/install-deps
echo "==> building the static binary" >&2
cargo build --release --locked --target x86_64-unknown-linux-musl
cp target/x86_64-unknown-linux-musl/release/sharelink dist/sharelink
BASE_IMAGE=$(tests/docker/make-python-base.sh)
export BASE_IMAGE SHARELINK_BUILD_TARGET=prebuilt

run() { # run N UP-ARGS...: one `docker-compose up`, its pipeline lines kept
    local n="$1" status=0 t0=$SECONDS
    shift
    echo "==> run $n: docker-compose up $* (base image $BASE_IMAGE)" >&2
    docker-compose up "$@" --no-color --exit-code-from app | tee "$log.$n" || status=$?
    echo "==> run $n: exit $status after $((SECONDS - t0))s" >&2
    return "$status"
}
log="$(mktemp)"
trap 'rm -f "$log".*' EXIT
run 1 --build
run 2

echo
echo "==> first run vs second run:"
for n in 1 2; do
    grep -hE 'migrated|grid search for|reused cached|model: finished|all stages done' "$log.$n" |
        sed -E "s/^[^|]*\| //; s/^/  run $n: /"
done
echo
echo "==> ./local_fileshare now holds:"
find local_fileshare -mindepth 1 -maxdepth 3 -not -name .gitkeep | sort
echo
echo "Again, or with other arguments (e.g. -d, or PIPELINE_HOLD=600 for a long job):"
echo "  BASE_IMAGE=$BASE_IMAGE SHARELINK_BUILD_TARGET=prebuilt docker-compose up --build"
