#!/usr/bin/env bash
# The CPU test suites: unit tests, then integration tests that start real
# etcd + dynamo.frontend + dynamo.mocker processes and run real DirectRunner
# pipelines. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
