#!/usr/bin/env bash
# The whole test suite: unit, integration (real Kafka, MinIO, Ray), e2e (real Chromium).
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 AWS_EC2_METADATA_DISABLED=true
mkdir -p test-artifacts
status=0
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; status=1; fi
exit "$status"
