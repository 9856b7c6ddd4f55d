# sharelink + a demo pipeline laid out like the selective-symlinks guide.
#
# Targets (stages are in this order on purpose, see "CI" below):
#   app       the runtime image without the sharelink binary (shared base)
#   prebuilt  app + a binary you built on the host and put at dist/sharelink
#   builder   compiles the static musl binary with --locked
#   runtime   app + the binary from `builder`      (default: last stage)
#
# Users with a registry:
#   docker build -t sharelink-pipeline .                 # or: docker-compose up --build
#   docker build --build-arg BASE_IMAGE=python:3.12-slim-bookworm -t ... .
#
# CI / machines without a registry (no rust or python image): build the
# binary on the host and use the `prebuilt` target over a Python base image
# made from Debian's packages (scripts/local-up.sh does all of this):
#   cargo build --release --locked --target x86_64-unknown-linux-musl
#   cp target/x86_64-unknown-linux-musl/release/sharelink dist/sharelink
#   docker build --target prebuilt \
#       --build-arg BASE_IMAGE=$(tests/docker/make-python-base.sh) -t ... .
# The legacy builder (no BuildKit) builds every stage up to the target in file
# order, so `prebuilt` comes before `builder`: that target never needs the
# rust image. (BuildKit skips unused stages anyway.)

ARG BUILDER_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS app

# Non-root option: sharelink itself starts as root (it rewrites /app and
# creates share directories), then drops to this user for the pipeline when
# asked: `run.user = "app"` in the config or `sharelink run --user app`.
# Appending to passwd/group works on any base, with or without useradd.
ARG APP_UID=10001
ARG APP_GID=10001
RUN set -eu; \
    grep -q '^app:' /etc/group  || echo "app:x:${APP_GID}:" >>/etc/group; \
    grep -q '^app:' /etc/passwd || echo "app:x:${APP_UID}:${APP_GID}:pipeline:/app:/usr/sbin/nologin" >>/etc/passwd

COPY config/sharelink.toml /etc/sharelink/sharelink.toml

# The demo app (Python, standard library only). Code and code-side config
# stay in the image; the data directories below are baked with some data and
# become symlinks into the share at start (baked data is moved into the share
# on first start).
COPY examples/pipeline/ /app/
RUN set -eu; \
    mkdir -p /app/forecasting/data/output \
             /app/modelling/cache/time_moe_cache \
             /app/modelling/predictions \
             /app/scraping/scraped_data; \
    chown -R "${APP_UID}:${APP_GID}" /app/forecasting/data /app/modelling/cache \
             /app/modelling/predictions /app/scraping/scraped_data

WORKDIR /app
ENV SHARELINK_LOG=info \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Healthy = every data directory is the right symlink to an existing share
# directory (`sharelink status` exits 1 otherwise, also while a link is still
# migrating). A first start moves the data baked into the image into the
# share, which for gigabytes over SMB takes minutes: failures during the
# start period do not count. Size it to your baked data divided by the
# share's throughput (docs/containers.md, "A first start").
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["/usr/local/bin/sharelink", "status"]

# sharelink links the data directories, then runs CMD as PID 1: signals are
# forwarded, orphans reaped, and the container exits with the pipeline's status.
ENTRYPOINT ["/usr/local/bin/sharelink", "run", "--"]
CMD ["python3", "/app/run_pipeline.py"]

# ---------------------------------------------------------------------------
FROM app AS prebuilt
# dist/ is tracked (with a .gitkeep) so this COPY never fails; the binary is
# only required when this stage is the target (the check runs in CI's smoke
# test). In a full legacy build this stage is built too and is a no-op.
COPY dist/ /tmp/sharelink-dist/
RUN set -eu; \
    if [ -f /tmp/sharelink-dist/sharelink ]; then \
        cp /tmp/sharelink-dist/sharelink /usr/local/bin/sharelink; \
        chmod 0755 /usr/local/bin/sharelink; \
        /usr/local/bin/sharelink check; \
    else \
        echo "note: no dist/sharelink; the prebuilt target needs it (fine for other targets)"; \
    fi; \
    rm -rf /tmp/sharelink-dist

# ---------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && install -m 0755 target/x86_64-unknown-linux-musl/release/sharelink /sharelink

# ---------------------------------------------------------------------------
FROM app AS runtime
COPY --from=builder /sharelink /usr/local/bin/sharelink
RUN ["/usr/local/bin/sharelink", "check"]
