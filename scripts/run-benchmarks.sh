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
failed=()
run() {  # run NAME ARGS...; a benchmark that exits non-zero (a target missed, a crash) is listed at the end
  local name=$1; shift
  echo "== bench/${name}.py $*" >&2
  .venv/bin/python "bench/${name}.py" "$@" | tee "test-artifacts/bench-${name}.json" || failed+=("$name")
}
run ingest --bootstrap "$bootstrap"
run sink --bootstrap "$bootstrap" --s3-endpoint "$minio"
run lake --bootstrap "$bootstrap" --s3-endpoint "$minio"
run lake_merge
run serve
run stream --bootstrap "$bootstrap"
run train --steps 50
run dashboard_read
if ((${#failed[@]})); then
  echo "missed a target or failed: ${failed[*]} (see test-artifacts/bench-*.json)" >&2
  exit 1
fi
