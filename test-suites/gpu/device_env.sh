# Sourced by the device scripts (test-suites/gpu/device.sh,
# bench/device_startup.sh) on the lent GPU machine, after ../shared/gpu's
# device_install.sh unpacked vLLM, ai-dynamo, etcd and apache-beam to
# $DYN_HOME: the environment every call needs, and MODEL, the
# random-weight Qwen3-0.6B-shaped model, built once per machine (its log:
# $OUT/model.log). PACKAGE_PATH, when set, comes first on PYTHONPATH (the
# package under test).
DYN_HOME=${DYN_HOME:-/tmp/dyn}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="${PACKAGE_PATH:+$PACKAGE_PATH:}$DYN_HOME/site" PATH="$DYN_HOME/bin:$PATH" PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME="$DYN_HOME/hf" VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
MODEL="$DYN_HOME/model"
if [ ! -f "$MODEL/config.json" ]; then
  bash "$DYN_HOME/scripts/device_run.sh" model > "$OUT/model.log" 2>&1 || {
    tail -40 "$OUT/model.log"; exit 1; }
fi
