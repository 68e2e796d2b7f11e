# syntax=docker/dockerfile:1
# tickcast consumer: Kafka `bars` -> the lake's Delta table `bars` (exactly-once sink). Scale it with replicas (one
# consumer group). The chart's lake maintenance CronJobs run `tickcast lake optimize|vacuum` from this image too.
# Build from the repository root:
#   docker build -f docker/consumer.Dockerfile -t tickcast-consumer:0.1.0 .
# Slim on purpose: the core plus the `consumer` extra only (no torch, ray or streamlit).
# The base is pinned by exact tag; pin it by digest as well when promoting (docker/README.md).

FROM python:3.11.14-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tickcast ./tickcast
COPY consumer ./consumer
RUN pip install "/src[consumer]"

FROM python:3.11.14-slim-trixie AS runtime
LABEL org.opencontainers.image.title="tickcast-consumer" \
      org.opencontainers.image.description="tickcast Kafka-to-lake Delta Lake sink and lake maintenance" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tickcast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tickcast
COPY --from=build /opt/venv /opt/venv
# HOME=/tmp: the root filesystem is read-only in Kubernetes; /tmp is an emptyDir there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TICKCAST_CONSUMER__METRICS_PORT=9320
WORKDIR /tmp
USER 10001:10001
EXPOSE 9320
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['TICKCAST_CONSUMER__METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["tickcast"]
CMD ["consume"]
