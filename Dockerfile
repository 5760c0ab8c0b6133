# Multi-stage build: compile with the Rust toolchain, ship a slim runtime.
#
#   docker build -t pgward .
#   docker run --rm -v $PWD/conf:/etc/pgward -p 6432:6432 pgward
#
# /etc/pgward holds what `pgward init` creates (pgward.yaml, certs/, policies/,
# pgward.db). Inside a container, set `listen: 0.0.0.0:6432` (and
# `admin_listen: 0.0.0.0:9187` to expose /metrics) in pgward.yaml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
COPY tests ./tests
COPY policies ./policies
RUN cargo build --release --locked --bin pgward

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/pgward --shell /usr/sbin/nologin pgward \
 && mkdir -p /etc/pgward \
 && chown pgward:pgward /etc/pgward
COPY --from=build /src/target/release/pgward /usr/local/bin/pgward
USER pgward
WORKDIR /etc/pgward
EXPOSE 6432 9187
ENTRYPOINT ["pgward"]
CMD ["serve", "--config", "/etc/pgward/pgward.yaml"]
