#!/usr/bin/env bash
# Debian packages the platform and its tests use: Chromium (dashboard e2e), kcat (a plain
# Kafka client for checks), openssl (the dev Kubernetes cluster's certificates). Java, Maven and Go
# come with the machine; see README.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]} (first time only: a minute or more)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: apt-get update"
  $SUDO apt-get update -q >/dev/null
  echo "setup: apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
  echo "setup: Debian packages installed"
fi
for tool in java mvn go; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: install a JDK 17+, Maven and Go (see README prerequisites)" >&2; exit 1; }
done
