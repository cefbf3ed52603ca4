#!/usr/bin/env bash
# On the lent GPU machine (the device tool), after ../shared/gpu's
# device_install.sh unpacked vLLM, ai-dynamo, etcd and apache-beam to
# /tmp/dyn. Run from the repository root:
#
#   bash test-suites/gpu/device.sh suite             # the GPU suite
#   bash test-suites/gpu/device.sh compare [ARGS]    # bench/gpu_compare.py
#   bash test-suites/gpu/device.sh prefix [ARGS]     # bench/prefix_bench.py
#
# Builds the random-weight Qwen3-0.6B-shaped model first if needed. Logs and
# JSON go to $OUT (the device tool brings them back).
set -uo pipefail
PACKAGE_PATH="$PWD" . "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader
step=$1; shift
case "$step" in
  suite)
    PYTHON=python3 test-suites/gpu/run.sh "$MODEL" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
    exit "${PIPESTATUS[0]}" ;;
  compare)
    python3 bench/gpu_compare.py --model "$MODEL" "$@" 2>&1 | tee -a "$OUT/gpu_compare.log"
    exit "${PIPESTATUS[0]}" ;;
  prefix)
    python3 bench/prefix_bench.py --engine vllm --model "$MODEL" "$@" 2>&1 | tee -a "$OUT/prefix_bench.log"
    exit "${PIPESTATUS[0]}" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
