# syntax=docker/dockerfile:1
# tickcast dashboard: Streamlit over the lake, on-demand forecasts from the Ray Serve app.
# Build from the repository root:
#   docker build -f docker/dashboard.Dockerfile -t tickcast-dashboard:0.1.0 .
# The core plus the `dashboard` extra (streamlit, plotly, duckdb); no torch or ray.
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
COPY dashboard ./dashboard
RUN pip install "/src[dashboard]"

FROM python:3.11.14-slim-trixie AS runtime
LABEL org.opencontainers.image.title="tickcast-dashboard" \
      org.opencontainers.image.description="tickcast Streamlit dashboard: bars, forecasts and their scores" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tickcast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tickcast
COPY --from=build /opt/venv /opt/venv
# HOME=/tmp: the root filesystem is read-only in Kubernetes; /tmp is an emptyDir there.
# Streamlit: headless, no usage statistics (no phone-home), listen on all interfaces.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TICKCAST_DASHBOARD__HOST=0.0.0.0 \
    TICKCAST_DASHBOARD__PORT=8501 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_HEADLESS=true
WORKDIR /tmp
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ['TICKCAST_DASHBOARD__PORT'], timeout=4)"]
ENTRYPOINT ["tickcast"]
CMD ["dashboard"]
