#!/usr/bin/env bash
# Builds the Go helper programs under tools/ (today: tools/psa-check, the Pod Security admission
# check of the chart's pods that tests/helm runs). Each lands in tools/NAME/bin/NAME.
#
# Idempotent: a binary whose sources (go.mod, go.sum, *.go) are unchanged since its last build is
# left alone. The first build downloads the pinned modules (k8s.io/api, apimachinery,
# pod-security-admission) through Go's module proxy and compiles them: a minute or two.
#
# Usage: scripts/build-go-tools.sh        (GO=/path/to/go to choose the toolchain)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-go}"
command -v "$GO" >/dev/null 2>&1 || { echo "setup: Go is missing: install Go 1.26+ (see README prerequisites)" >&2; exit 1; }

for dir in "$ROOT"/tools/*/; do
  [ -f "$dir/go.mod" ] || continue
  name="$(basename "$dir")"
  bin="$dir/bin/$name"
  stamp="$dir/bin/.sources.sha256"
  want="$(cd "$dir" && cat go.mod go.sum $(ls *.go | sort) | sha256sum | cut -d' ' -f1)"
  if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup: tools/$name is up to date"
    continue
  fi
  echo "setup: building tools/$name with $("$GO" env GOVERSION) (first time: downloads and compiles the Kubernetes modules, a minute or two)"
  start=$SECONDS
  mkdir -p "$dir/bin"
  # A line every 20 s while Go downloads and compiles, so a long first build never looks hung.
  ( while sleep 20; do echo "  ... still building tools/$name ($((SECONDS - start)) s)"; done ) &
  ticker=$!
  trap 'kill "$ticker" 2>/dev/null || true' EXIT
  # -mod=readonly: go.sum pins every module; a build never edits go.mod or go.sum.
  status=0
  (cd "$dir" && "$GO" build -mod=readonly -trimpath -o "bin/$name" .) || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  trap - EXIT
  if [ "$status" -ne 0 ]; then
    echo "setup: building tools/$name failed (go build exit $status); see the errors above" >&2
    exit "$status"
  fi
  echo "$want" >"$stamp"
  echo "setup: tools/$name built in $((SECONDS - start)) s"
done
