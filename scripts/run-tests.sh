#!/usr/bin/env bash
# The whole test suite: unit, integration (real Kafka, MinIO, Ray), e2e (real Chromium),
# then the Pulumi program's tests in pulumi/.venv (it pins protobuf < 7, which ray cannot use).
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 AWS_EC2_METADATA_DISABLED=true
mkdir -p test-artifacts

run_pytest() {  # run_pytest LABEL PYTHON ARGS...: returns pytest's status, 5 turned into 1
  local label=$1 python=$2; shift 2
  local status=0
  "$python" -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then echo "$label: pytest collected no tests: failing" >&2; status=1; fi
  return "$status"
}

# Once, no retry: a failing Pulumi test fails the run (the SDK's event-loop race is fixed at its
# cause in pulumi/tests/conftest.py: RecordingMonitor).
pulumi_status=0
(cd pulumi && run_pytest pulumi .venv/bin/python tests -q -p no:cacheprovider) || pulumi_status=$?
main_status=0
run_pytest main .venv/bin/python tests -q -p no:cacheprovider "$@" || main_status=$?

if [ "$pulumi_status" -ne 0 ]; then echo "pulumi tests failed (status $pulumi_status)" >&2; fi
if [ "$main_status" -ne 0 ]; then exit "$main_status"; fi
exit "$pulumi_status"
