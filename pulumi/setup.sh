#!/usr/bin/env bash
# Create pulumi/.venv and install the Pulumi program's requirements into it. Idempotent:
# re-running reuses the venv and only installs what changed in requirements.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating pulumi/.venv"
  "$python" -m venv "$venv"
fi
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "pulumi/.venv is up to date"
  exit 0
fi
echo "installing the Pulumi program's packages into pulumi/.venv (first time only: a few minutes)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$want" >"$stamp"
echo "pulumi/.venv ready: $("$venv/bin/python" -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("pulumi", "pulumi-aws", "pulumi-eks", "pulumi-kubernetes", "pulumi-docker-build")))')"
