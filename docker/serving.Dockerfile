# syntax=docker/dockerfile:1
# tickcast serving: the Ray Serve app (Chronos, dynamic batching) for KubeRay's RayService, and
# the image of the batch jobs (backtest, fine-tune) that run on Ray.
# Build from the repository root:
#   docker build -f docker/serving.Dockerfile -t tickcast-serving:0.1.0 .
#
# Why rayproject/ray (GPU variant) and not python slim + pip: KubeRay starts every head and
# worker with `ray start` from this image, so the Ray build, its Python (3.11) and the
# tooling KubeRay's probes and init containers call (bash, wget) must be there and match the
# RayService's rayVersion exactly. The -gpu variant carries the CUDA user-space libraries the
# NVIDIA device plugin expects; the same image runs on CPU nodes (device=auto picks CPU).
# RAY_VERSION must equal the base tag's version and helm value rayService.rayVersion.
# The base is pinned by exact tag; pin it by digest as well when promoting (docker/README.md).
ARG RAY_VERSION=2.60.0

# Stage 1: build the tickcast wheel only (no dependencies), so no source tree or build
# tooling lands in the runtime image.
FROM rayproject/ray:2.60.0-py311-gpu AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The base image runs as `ray` (UID 1000, GID 100); create the build folder as that user so
# setuptools can write its build/ and egg-info there.
RUN mkdir -p /home/ray/src /home/ray/wheels
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 tickcast ./tickcast
COPY --chown=1000:100 producer ./producer
COPY --chown=1000:100 consumer ./consumer
COPY --chown=1000:100 serving ./serving
COPY --chown=1000:100 training ./training
RUN pip wheel --no-deps --wheel-dir /home/ray/wheels /home/ray/src

# Stage 2: the base Ray image plus tickcast[serving,models]; Ray itself is held at the base's
# version by a constraint so pip cannot swap the Ray build the cluster runs.
FROM rayproject/ray:2.60.0-py311-gpu AS runtime
ARG RAY_VERSION
LABEL org.opencontainers.image.title="tickcast-serving" \
      org.opencontainers.image.description="tickcast Ray Serve app (Chronos) and Ray batch jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 1000:100
RUN --mount=type=bind,from=build,source=/home/ray/wheels,target=/tmp/wheels \
    echo "ray==${RAY_VERSION}" > /home/ray/constraints.txt \
 && pip install --constraint /home/ray/constraints.txt \
      "$(find /tmp/wheels -name 'tickcast-*.whl' -print -quit)[serving,models]" \
 && python -c "import ray, tickcast; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"
# models/: the small bundled checkpoint the platform falls back to when no model hub is
# reachable. serving.models looks for it beside the installed packages (<site-packages>/models).
RUN --mount=type=bind,source=models,target=/tmp/models \
    cp -r /tmp/models "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/models"
# Run as UID 10001 like every tickcast image (GID 100, the base's `users` group that owns the
# Python environment); HOME=/tmp because the root filesystem is read-only in Kubernetes.
USER 0
RUN useradd --uid 10001 --gid 100 --no-create-home --home-dir /tmp --shell /bin/bash tickcast
USER 10001:100
# Caches live under /tmp: the root filesystem is read-only in Kubernetes, /tmp is an emptyDir.
ENV RAY_USAGE_STATS_ENABLED=0 \
    RAY_SERVE_DEFAULT_HTTP_HOST=0.0.0.0 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    HOME=/tmp \
    TICKCAST_SERVING__HOST=0.0.0.0 \
    TICKCAST_SERVING__PORT=8000
WORKDIR /tmp
EXPOSE 8000 8265 6379 10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['TICKCAST_SERVING__PORT'], timeout=4)"]
# Stand-alone (docker run): a one-node Ray with the Serve app on :8000. On Kubernetes,
# KubeRay replaces the command with `ray start` and deploys the app from serveConfigV2.
CMD ["serve", "run", "serving.app:build_app"]
