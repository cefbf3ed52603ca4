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
DYN_HOME=${DYN_HOME:-/tmp/dyn}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$DYN_HOME/site" PATH="$DYN_HOME/bin:$PATH" PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME="$DYN_HOME/hf" VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
MODEL="$DYN_HOME/model"
if [ ! -f "$MODEL/config.json" ]; then
  bash "$DYN_HOME/scripts/device_run.sh" model > "$OUT/model.log" 2>&1 || {
    cat "$OUT/model.log"; exit 1; }
fi
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
