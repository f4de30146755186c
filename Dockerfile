# webhook-forwarder container image: one static binary on scratch, run as non-root.
#
# Build it with `make docker-build`, which first builds the static binary on the host
# (`make static`, into build/docker/). The binary is built outside Docker because the
# image then needs no base image at all: nothing to pull, nothing but our code inside.
FROM scratch
COPY build/docker/webhook-forwarder /webhook-forwarder
# The dead-letter file needs a directory the unprivileged user can write.
COPY --chown=65534:65534 build/docker/data /data
USER 65534:65534
WORKDIR /data
# Replaying the dead-letter file at startup makes a restart (docker --restart, a
# Kubernetes pod coming back) resend what the last run could not deliver. A missing
# file means nothing to replay; a delivered one is renamed, so nothing goes twice.
ENV WEBHOOK_HTTP=:8080 \
    WEBHOOK_DEAD_LETTER=/data/dead-letter.ndjson \
    WEBHOOK_REPLAY=/data/dead-letter.ndjson
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# The probe follows the service's --http or WEBHOOK_HTTP, read from PID 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
    CMD ["/webhook-forwarder", "probe"]
ENTRYPOINT ["/webhook-forwarder"]
