# The invalidator worker image: `invalidator run` (docker-compose.yml builds it).
# Multi-stage: the build stage compiles the release binary (librdkafka is built from source and
# linked statically; OpenSSL is linked from the system), the runtime stage holds the binary, the
# shipped rules and the certificates, and runs as an unprivileged user.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: Cargo.toml names the lambda member and the bench targets.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench ./bench
COPY lambda ./lambda
RUN cargo build --release --locked --bin invalidator \
 && cp target/release/invalidator /usr/local/bin/invalidator

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/invalidator /usr/local/bin/invalidator
COPY rules /etc/invalidator/rules
WORKDIR /etc/invalidator
USER 65532:65532
# /metrics, /healthz, /readyz ([http] listen)
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/invalidator"]
CMD ["run", "-c", "/etc/invalidator/invalidator.toml"]
