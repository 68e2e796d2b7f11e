#!/usr/bin/env bash
# Every benchmark under bench/, against a local broker and MinIO that `tickcast infra up`
# starts (or reuses). Each prints one JSON document; they are also saved to
# test-artifacts/bench-<name>.json. Ratios are measured within one run: quote those, not
# lone absolute times, on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 AWS_EC2_METADATA_DISABLED=true
mkdir -p test-artifacts
.venv/bin/tickcast infra up >/dev/null
bootstrap="127.0.0.1:${TICKCAST_INFRA__KAFKA_PORT:-9092}"
minio="http://127.0.0.1:${TICKCAST_INFRA__MINIO_PORT:-9000}"
run() {  # run NAME ARGS...
  local name=$1; shift
  echo "== bench/${name}.py $*" >&2
  .venv/bin/python "bench/${name}.py" "$@" | tee "test-artifacts/bench-${name}.json"
}
run ingest --bootstrap "$bootstrap"
run sink --bootstrap "$bootstrap" --s3-endpoint "$minio"
run serve
run stream --bootstrap "$bootstrap"
run train --steps 50
run dashboard_read
