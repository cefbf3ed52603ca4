#!/usr/bin/env bash
# The CPU test suites: unit tests, then integration tests that start real
# etcd + dynamo.frontend + dynamo.mocker processes and run real DirectRunner
# pipelines. Two test processes side by side (pytest-xdist): every test runs
# in its own stack scope and temp dir. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n 2 "$@"
