#!/usr/bin/env bash
# The GPU suite, on a machine with an NVIDIA GPU, ai-dynamo[vllm] and this
# repository: 1,000 completions and 200 chats (with a chat template) through
# dynamo.vllm in real DirectRunner pipelines, every output checked, then no
# GPU memory held by leftover processes.
#
#   test-suites/gpu/run.sh MODEL_DIR [pytest args]
#
# Env: GPU_SUITE_ENGINES=N   N engines (default: one per visible GPU)
#      GPU_SUITE_ENGINE_KWARGS='{"gpu-memory-utilization": "0.5"}'  engine flags
#      GPU_SUITE_ENGINE=mocker  the same checks on Dynamo's CPU mocker
set -euo pipefail
cd "$(dirname "$0")/../.."
export GPU_SUITE_MODEL="$(cd "${1:?usage: run.sh MODEL_DIR}" && pwd)"
shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m pytest test-suites/gpu -p no:cacheprovider -s -q \
  -o log_cli=true --log-cli-level=WARNING "$@"
