# realtime-hub: build with cargo, then run the one binary as a non-root user in a slim image.
#
#   docker build -t realtime-hub .
#   docker run --rm -p 8000:8000 -e HUB_JWT_SECRET=... -e HUB_API_KEY=... realtime-hub
#
# Without HUB_JWT_SECRET (or HUB_JWT_PUBLIC_KEY) the hub runs in development mode: publish it on
# loopback only (-p 127.0.0.1:8000:8000). See docs/operations.md.

# Build and runtime stages share the Debian release, so the binary finds the glibc it was linked
# against. Pin a version (--build-arg RUST_VERSION=1.95) for reproducible builds.
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer, so that a change to the hub's code does not rebuild
# them. Cargo needs every workspace member's manifest to resolve the workspace, so the load
# generator's manifest comes too, with a stub source: it is never built here.
COPY Cargo.toml Cargo.lock ./
COPY benches/loadgen/Cargo.toml benches/loadgen/Cargo.toml
RUN mkdir -p src benches/loadgen/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/loadgen/src/main.rs \
    && cargo build --release --locked -p realtime-hub \
    && rm -rf src

# The real sources. Cargo decides what to rebuild by modification time, and COPY keeps the
# (older) times of the build context: touch the crate roots so the stubs' build counts as stale.
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p realtime-hub \
    && cp target/release/realtime-hub /realtime-hub

FROM debian:bookworm-slim
# No packages added: the hub links only glibc, and this build has no TLS (HUB_REDIS_URL is
# redis://), so not even ca-certificates. bash and sleep, part of every Debian image, serve the
# health check below and the Kubernetes preStop hook.
RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hub
WORKDIR /app
COPY --from=build /realtime-hub /usr/local/bin/realtime-hub
# Owned by root, readable by all: the hub cannot change the files it serves.
COPY static /app/static
# HUB_BIND: in a container the hub must listen on every interface, development mode included
# (which would otherwise listen on 127.0.0.1, unreachable through a published port).
ENV HUB_STATIC_DIR=/app/static \
    HUB_BIND=0.0.0.0:8000
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
# The hub drains on SIGTERM: /ready turns 503, sockets close with 1001, exit within
# HUB_SHUTDOWN_TIMEOUT_S. The stop timeout of whatever runs the container must be longer.
STOPSIGNAL SIGTERM
# Liveness only (/health), never /ready: a Redis outage must not get nodes replaced. Bash
# builtins alone (/dev/tcp, read): nothing to install, and the HTTP status is checked, not just
# the port. The port comes from HUB_BIND (8000 if unset).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "port=${HUB_BIND##*:}; exec 3<>/dev/tcp/127.0.0.1/${port:-8000} && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ] || exit 1"]
ENTRYPOINT ["/usr/local/bin/realtime-hub"]
