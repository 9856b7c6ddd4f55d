#!/usr/bin/env bash
# The main job, on any machine with Docker and docker-compose, registry or
# not: build the static sharelink binary and a small local base image, then
# `docker-compose up --build` the demo pipeline with sharelink as its
# ENTRYPOINT over ./local_fileshare, and show what landed on the "share".
#
#   scripts/local-up.sh                 # run the pipeline once
#   PIPELINE_HOLD=600 scripts/local-up.sh -d   # extra args go to `up`
#
# With a registry, plain `docker-compose up --build` does the same through
# the Dockerfile's builder stage (rust image) and python base image.
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/install-deps
echo "==> building the static binary" >&2
cargo build --release --locked --target x86_64-unknown-linux-musl
cp target/x86_64-unknown-linux-musl/release/sharelink dist/sharelink
BASE_IMAGE=$(tests/docker/make-base-image.sh)
export BASE_IMAGE SHARELINK_BUILD_TARGET=prebuilt
echo "==> docker-compose up --build (base image $BASE_IMAGE)" >&2
status=0
docker-compose up --build --exit-code-from app "$@" || status=$?
echo
echo "==> ./local_fileshare now holds:"
find local_fileshare -mindepth 1 -maxdepth 3 -not -name .gitkeep | sort
exit "$status"
