# syntax=docker/dockerfile:1
#
# callgate container image: a static-ish Rust binary on distroless (no shell, no package
# manager), running as the nonroot user 65532.
#
# NOTE: this Dockerfile is NOT built in CI: the CI machines have no Docker engine. CI builds
# and tests the same binary with cargo; build the image in your release pipeline:
#   docker build -t ghcr.io/example/callgate:0.1.0 .
#
# The image sets no CALLGATE_* defaults: pass them at run time. In a container the admin
# listener must bind 0.0.0.0 to be reachable by probes and Prometheus:
#   docker run -p 8080:8080 -p 9090:9090 \
#     -e CALLGATE_ADMIN_LISTEN=0.0.0.0:9090 -e CALLGATE_UPSTREAM=http://engine:3000 \
#     ghcr.io/example/callgate:0.1.0
# Try it with no other process: docker run --rm -p 8080:8080 -p 9090:9090 IMAGE demo \
#   --listen 0.0.0.0:8080 --admin-listen 0.0.0.0:9090
# Kubernetes: deploy/kubernetes/deployment.yaml.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the crate registry and target/ between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/callgate /callgate \
 && strip --strip-debug /callgate

# ---------------------------------------------------------------- runtime
# cc-debian12: glibc and libgcc, nothing else. Gate TLS uses the bundled public roots
# (webpki-roots), so no CA bundle is needed; private CAs come in with CALLGATE_GATE_CA_FILE.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="callgate" \
      org.opencontainers.image.description="Pre-call gate for Twilio voice webhooks, run as a sidecar in front of a voice engine" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /callgate /callgate
USER 65532:65532
# 8080: Twilio-facing listener; 9090: admin API, /metrics, /healthz, /readyz.
EXPOSE 8080 9090
ENTRYPOINT ["/callgate"]
