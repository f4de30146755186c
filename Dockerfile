# webhook-forwarder container image: one static binary on scratch, run as non-root.
#
#   make docker-build                     static binary built on the host, then this file
#   docker build --build-arg BUILD=source .   everything built inside Docker (needs the rust image)
#
# Only the stage named by BUILD is built (BuildKit skips the other), so the default
# needs no base image at all.
ARG BUILD=host

FROM rust:1-slim AS source-build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --bin webhook-forwarder --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/data \
 && cp target/x86_64-unknown-linux-gnu/release/webhook-forwarder /out/

FROM scratch AS host-build
COPY build/docker/ /out/

FROM ${BUILD}-build AS build

FROM scratch
COPY --from=build /out/webhook-forwarder /webhook-forwarder
# The dead-letter file needs a directory the unprivileged user can write.
COPY --from=build --chown=65534:65534 /out/data /data
USER 65534:65534
WORKDIR /data
ENV WEBHOOK_HTTP=:8080 \
    WEBHOOK_DEAD_LETTER=/data/dead-letter.ndjson
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
    CMD ["/webhook-forwarder", "probe"]
ENTRYPOINT ["/webhook-forwarder"]
