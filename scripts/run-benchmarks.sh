#!/usr/bin/env bash
# Every benchmark under bench/, against a local broker and MinIO that `tickcast infra up`
# starts (or reuses). Each prints one JSON document and exits 0 (targets met), 1 (a target
# missed) or 2 (a mode crashed); stdout and stderr are saved to test-artifacts/bench-<name>.json
# and .log. At the end every run (failed ones too) is combined into the dated results file
# bench/results/YYYY-MM-DD.json (UTC date of the start; a file of that date is replaced), from
# which scripts/bench_table.py renders the README's benchmark table. Ratios are measured within
# one run: quote those, not lone absolute times, on a shared machine.
#
# BENCH_ONLY="lake_merge train" runs only those; they replace their own entries in the day's
# results file and the other benchmarks' entries stay (each entry names the commit it measured).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 AWS_EC2_METADATA_DISABLED=true
mkdir -p test-artifacts bench/results
started=$(date +%s.%N)
day=$(date -u -d "@${started%.*}" +%F)
runs=test-artifacts/bench-runs.jsonl
: >"$runs"
read -r commit dirty < <(.venv/bin/python bench/_results.py start)  # the code measured: as it is now
.venv/bin/tickcast infra up >/dev/null
# The local broker enforces logins and ACLs (policy-enforced mode): the benchmarks create and
# delete their own topics, so they log in as its admin user (TICKCAST_KAFKA__SASL_*; nothing
# is printed to the console or a log).
while IFS= read -r assignment; do export "$assignment"; done < <(
  .venv/bin/python -c '
from tickcast.infra import kafka_acls
from tickcast.settings import load_settings
settings = load_settings()
if settings.infra.kafka_workload_users:
    users = kafka_acls.load_users(settings.infra.state_dir)
    for name, value in kafka_acls.client_env(users[kafka_acls.ADMIN]).items():
        print(f"{name}={value}")
')
bootstrap="127.0.0.1:${TICKCAST_INFRA__KAFKA_PORT:-9092}"
minio="http://127.0.0.1:${TICKCAST_INFRA__MINIO_PORT:-9000}"
failed=()
run() {  # run NAME ARGS...; a benchmark that exits non-zero (a target missed, a crash) is listed at the end
  local name=$1; shift
  if [[ -n ${BENCH_ONLY:-} && " $BENCH_ONLY " != *" $name "* ]]; then return; fi
  local out="test-artifacts/bench-${name}.json" log="test-artifacts/bench-${name}.log" t0 rc
  echo "== bench/${name}.py $*" >&2
  t0=$(date +%s.%N)
  set +e
  # stderr (progress, tracebacks) to the console and the log as it comes; stdout (the JSON) to its file
  .venv/bin/python "bench/${name}.py" "$@" 2>&1 >"$out" | tee "$log" >&2
  rc=${PIPESTATUS[0]}
  set -e
  cat "$out"
  ((rc == 0)) || failed+=("$name")
  .venv/bin/python bench/_results.py add --runs "$runs" --name "$name" --rc "$rc" --started "$t0" \
    --ended "$(date +%s.%N)" --stdout "$out" --stderr "$log" -- "$@"
}
run ingest --bootstrap "$bootstrap"
run sink --bootstrap "$bootstrap" --s3-endpoint "$minio"
run lake --bootstrap "$bootstrap" --s3-endpoint "$minio"
run lake_merge
run serve
run scale
run cpu
run stream --bootstrap "$bootstrap"
run calibration
run train --steps 50
run dashboard_read
.venv/bin/python bench/_results.py write --runs "$runs" --out "bench/results/${day}.json" --date "$day" \
  --started "$started" --commit "$commit" --dirty "$dirty" ${BENCH_ONLY:+--merge}
if ((${#failed[@]})); then
  echo "missed a target or failed: ${failed[*]} (see bench/results/${day}.json and test-artifacts/bench-*.log)" >&2
  exit 1
fi
