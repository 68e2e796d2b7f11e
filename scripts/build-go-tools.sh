#!/usr/bin/env bash
# Builds the Go helper programs under tools/ (today: tools/psa-check, the Pod Security admission
# check of the chart's pods that tests/helm runs). Each lands in tools/NAME/bin/NAME.
#
# Idempotent: a binary whose sources (go.mod, go.sum, *.go) are unchanged since its last build is
# left alone. The first build downloads the pinned modules (k8s.io/api, apimachinery,
# pod-security-admission) through Go's module proxy and compiles them: a minute or two.
#
# Then the dev cluster's programs (tickcast/infra/cluster, tests/k8s), each at the version pinned in
# tools/versions.env (Kubernetes by tools/kube/go.mod), into a cache OUTSIDE the checkout so every
# clone on this machine shares them: ${TICKCAST_GO_TOOLS_CACHE:-~/.cache/tickcast/go-tools}/NAME-KEY/.
# A folder there is complete or absent (built in a temporary folder, then renamed), so an
# interrupted build is simply redone. Cold, on 2 cores: Kubernetes (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) about 8-9 minutes, the others a minute or two
# each; warm: a second.
#
# Usage: scripts/build-go-tools.sh          (GO=/path/to/go to choose the toolchain)
#        scripts/build-go-tools.sh --local  (only tools/*, not the dev cluster's programs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-go}"
command -v "$GO" >/dev/null 2>&1 || { echo "setup: Go is missing: install Go 1.26+ (see README prerequisites)" >&2; exit 1; }

for dir in "$ROOT"/tools/*/; do
  [ -f "$dir/go.mod" ] || continue
  ls "$dir"/*.go >/dev/null 2>&1 || continue  # tools/kube: a wrapper module, built below
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

[ "${1:-}" = "--local" ] && exit 0

# ---- The dev cluster's programs, cached outside the checkout ------------------------------------
# shellcheck source=../tools/versions.env
source "$ROOT/tools/versions.env"
CACHE="${TICKCAST_GO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tickcast/go-tools}"
mkdir -p "$CACHE"
# -p=2: the Kubernetes build peaks near 2.5 GB with two compilers; more would not fit small machines.
GOBUILD_P="${TICKCAST_GO_BUILD_P:-2}"

# cached NAME KEY PATHS... : true when $CACHE/NAME-KEY holds every path (bin/X: an executable).
cached() {
  local dest="$CACHE/$1-$2"; shift 2
  local p; for p in "$@"; do [ -e "$dest/$p" ] || return 1; done
}

# build NAME KEY "PATHS" COMMAND... : runs COMMAND with $OUT set to a fresh folder, then renames
# it into place; prints progress every 30 s and the time it took.
build() {
  local name="$1" key="$2" paths="$3"; shift 3
  local dest="$CACHE/$name-$key"
  # shellcheck disable=SC2086
  if cached "$name" "$key" $paths; then echo "setup: $name $key is cached in $dest"; return 0; fi
  local tmp; tmp="$(mktemp -d "$CACHE/.building-$name-XXXXXX")"
  chmod 755 "$tmp"
  mkdir -p "$tmp/bin"
  echo "setup: building $name $key into $dest (first time on this machine)"
  local start=$SECONDS status=0
  ( while sleep 30; do echo "  ... still building $name ($((SECONDS - start)) s)"; done ) &
  local ticker=$!
  OUT="$tmp" "$@" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    rm -rf "$tmp"
    echo "setup: building $name $key failed (exit $status); see the errors above" >&2
    exit "$status"
  fi
  rm -rf "$dest"
  mv "$tmp" "$dest"
  echo "setup: $name $key built in $((SECONDS - start)) s ($(du -sh "$dest" | cut -f1))"
}

go_install() {  # go_install PACKAGE@VERSION: into $OUT/bin
  GOBIN="$OUT/bin" nice -n "${TICKCAST_BUILD_NICE:-10}" "$GO" install -trimpath -p="$GOBUILD_P" "$1"
}

build_kube() {
  local v="$1" minor
  minor="${v#v1.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version ld="-s -w" p
  # Without these the binaries say v0.0.0 and kubectl refuses to talk to the server.
  for p in "$pkg" "$cpkg"; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$ROOT/tools/kube" && nice -n "${TICKCAST_BUILD_NICE:-10}" "$GO" build -mod=readonly -trimpath \
    -p="$GOBUILD_P" -ldflags "$ld" -o "$OUT/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_kwok() {
  go_install "sigs.k8s.io/kwok/cmd/kwok@$1"
  # kwok fakes pods' lifecycle from stage definitions shipped inside its module; keep them beside it.
  local src; src="$("$GO" mod download -json "sigs.k8s.io/kwok@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$OUT/stages"
  local f
  for f in "$src"/kustomize/stage/{node/fast,node/heartbeat-with-lease,pod/fast}/*.yaml; do
    grep -q '^kind: Stage$' "$f" && cp "$f" "$OUT/stages/"
  done
  chmod u+w "$OUT"/stages/*.yaml
}

build_kuberay() {
  go_install "github.com/ray-project/kuberay/ray-operator@$1"
  # The operator's own CRDs, installed into the dev cluster before it starts.
  local src; src="$("$GO" mod download -json "github.com/ray-project/kuberay/ray-operator@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$OUT/crds"
  cp "$src"/config/crd/bases/ray.io_*.yaml "$OUT/crds/"
  chmod u+w "$OUT"/crds/*.yaml
}

KUBE_VERSION="$(sed -n -E 's/^require k8s\.io\/kubernetes (v[0-9.]+)$/\1/p' "$ROOT/tools/kube/go.mod")"
KUBE_KEY="$KUBE_VERSION-$(cat "$ROOT/tools/kube/go.mod" "$ROOT/tools/kube/go.sum" | sha256sum | cut -c1-12)"

build kube "$KUBE_KEY" "bin/kube-apiserver bin/kube-controller-manager bin/kube-scheduler bin/kubectl" build_kube "$KUBE_VERSION"
build kine "$KINE_VERSION" bin/kine go_install "github.com/k3s-io/kine@$KINE_VERSION"
build kwok "$KWOK_VERSION" "bin/kwok stages/node-initialize.yaml" build_kwok "$KWOK_VERSION"
build helm "$HELM_VERSION" bin/helm go_install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
build kuberay "$KUBERAY_VERSION" "bin/ray-operator crds/ray.io_rayservices.yaml" build_kuberay "$KUBERAY_VERSION"
