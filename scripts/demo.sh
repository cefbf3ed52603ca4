#!/usr/bin/env bash
# The main job on a machine without a GPU: the example pipeline on Dynamo's
# mocker engine, over examples/prompts.jsonl. Extra arguments go to the
# example (see `.venv/bin/python examples/vllm_text_completion.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python examples/vllm_text_completion.py \
  --use_dynamo --engine mocker \
  --input examples/prompts.jsonl --output out/demo/results.jsonl "$@"
