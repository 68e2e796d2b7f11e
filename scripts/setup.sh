#!/usr/bin/env bash
# `make setup`: everything the platform and the tests need, idempotent (a second run takes seconds).
#
# The Go programs of scripts/build-go-tools.sh (the dev cluster's Kubernetes, kine, kwok, Helm,
# KubeRay operator, and tools/psa-check) need no Python, so on a fresh machine they compile in
# the background while pip downloads and installs the Python environment: about 20 CPU-minutes
# of Go overlap with minutes of mostly network-bound pip work instead of following it. Their
# lines are prefixed with "[go tools]"; a failed build fails setup after the other steps.
set -euo pipefail
cd "$(dirname "$0")/.."
MAKE="${MAKE:-make}"

bash scripts/install-system-deps.sh  # Java, Maven and Go are checked there, before the builds start

# setsid: its own process group, so an interrupted setup stops the whole build (go and its compilers)
setsid -w bash -c 'set -o pipefail; bash scripts/build-go-tools.sh 2>&1 | sed -u "s/^/[go tools] /"' &
go_tools=$!
trap 'kill -- "-$go_tools" 2>/dev/null || true' EXIT

"$MAKE" -s --no-print-directory venv PYTHON="${PYTHON:-python3}"
.venv/bin/tickcast infra install
bash scripts/setup-chart-tools.sh
bash pulumi/setup.sh

status=0
wait "$go_tools" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
  echo "setup: building the Go tools failed (exit $status); see the [go tools] lines above" >&2
  exit "$status"
fi
echo "setup: done"
