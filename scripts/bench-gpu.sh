#!/usr/bin/env bash
# make bench-gpu: the GPU benchmark (bench/gpu.py) on a machine with an NVIDIA GPU and only this
# repository. It checks for a GPU first (nvidia-smi), installs what the benchmark needs into
# .venv (reused when present and complete; the first install downloads torch with CUDA and Ray,
# a few minutes), then prints the benchmark's JSON on stdout.
#
# Exit status: the benchmark's (0 measured, 2 a step crashed), or 3 within seconds when no
# NVIDIA GPU is present: the JSON then says "no GPU" and nothing is installed.
# BENCH_GPU_ARGS passes arguments to bench/gpu.py (e.g. "--models bolt-base --dtypes bfloat16").
set -euo pipefail
cd "$(dirname "$0")/.."
NO_GPU=3
# The GPU check's command; tests point it elsewhere to check the CPU-only path on any machine.
smi=${TICKCAST_BENCH_NVIDIA_SMI:-nvidia-smi}

no_gpu() {
  printf '{"benchmark": "gpu", "error": "no GPU: %s"}\n' "$1"
  echo "bench-gpu: no GPU: $1" >&2
  exit "$NO_GPU"
}

command -v "$smi" >/dev/null 2>&1 || no_gpu "$smi not found (no NVIDIA driver on this machine)"
gpus=$("$smi" -L 2>/dev/null | grep -c '^GPU ' || true)
[[ $gpus -gt 0 ]] || no_gpu "$smi lists no GPU"
echo "bench-gpu: $gpus GPU(s): $("$smi" -L | head -1)" >&2

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
started=$(date +%s)
if [[ ! -x .venv/bin/python ]]; then
  echo "bench-gpu: creating .venv with ${PYTHON:-python3}" >&2
  "${PYTHON:-python3}" -m venv .venv
fi
# What bench/gpu.py imports: tickcast with the serving extra (torch, chronos, Ray Serve) and
# aiohttp (the producer extra) for the load generator.
if ! .venv/bin/python -c 'import torch, chronos, ray.serve, fastapi, aiohttp, tickcast' 2>/dev/null; then
  echo "bench-gpu: installing tickcast[serving,producer] into .venv (torch with CUDA and Ray: a few minutes)" >&2
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip >&2
  .venv/bin/pip install --disable-pip-version-check -e '.[serving,producer]' >&2
fi
echo "bench-gpu: ready after $(($(date +%s) - started)) s; running bench/gpu.py" >&2
# shellcheck disable=SC2086  # BENCH_GPU_ARGS is a list of arguments
exec .venv/bin/python bench/gpu.py ${BENCH_GPU_ARGS:-}
