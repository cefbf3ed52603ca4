#!/usr/bin/env bash
# On the lent GPU machine: start-up timeline (bench/startup_compare.py) and
# the HTTP client comparison (bench/http_clients.py) in one call.
#
#   bash bench/device_startup.sh STAGE_DIR [STEPS]     # first call: stages + installs
#   bash bench/device_startup.sh - [STEPS]             # machine still warm: no install
#
# STAGE_DIR is the last ../shared/gpu chunk folder (.gpu-stage-N, the others
# staged by earlier calls). It sources ../test-suites/gpu/device_env.sh
# (the environment and model, as test-suites/gpu/device.sh does). The
# package comes from its wheel in the payload (/tmp/dyn/site), or from
# PKG_DIR when set, never from the working tree (run it from another
# directory: python -m puts the current directory first on sys.path).
# Results in $OUT:
# setup.log, startup.json, <step>.log, http_clients.json.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAGE=${1:--}; STEPS=${2:-vllm-cold,vllm-warm,ours-cold,ours-warm}
BUDGET_S=${BUDGET_S:-570}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/setup.log"; }
if [ "$STAGE" != - ]; then
  bash "$STAGE/device_stage.sh" "$STAGE" >> "$OUT/setup.log" 2>&1 &&
    bash "$STAGE/device_install.sh" >> "$OUT/setup.log" 2>&1 ||
    { tail -40 "$OUT/setup.log"; exit 1; }
  log installed
fi
# PKG_DIR: a copy of the package that wins over the wheel
PACKAGE_PATH="${PKG_DIR:-}" . "$HERE/../test-suites/gpu/device_env.sh"
[ -n "${SKIP_VERSIONS:-}" ] || python3 -c "import apache_beam_dynamo, vllm, dynamo, apache_beam; print('versions', vllm.__version__, apache_beam.__version__, apache_beam_dynamo.__file__)" >> "$OUT/setup.log" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader | tee -a "$OUT/setup.log"
LEFT=$(( BUDGET_S - ($(date +%s) - T0) ))
log "startup_compare: steps $STEPS, budget ${LEFT}s"
# HTTP_BUDGET_S=0: no client comparison after ours-warm
AFTER=()
[ "${HTTP_BUDGET_S:-60}" = 0 ] || AFTER=(--after_ours_warm "python3 $HERE/http_clients.py --url {url} --model {model} --prompts_file /tmp/caches-prompts.json --concurrency 512 --json $OUT/http_clients.json --budget_s ${HTTP_BUDGET_S:-60} --plan ${HTTP_PLAN:-aiohttp:4:8192,lean:4:8192,aiohttp:128:4096,lean:128:4096,lean:4:8192,aiohttp:4:8192,lean:128:4096,aiohttp:128:4096}")
python3 "$HERE/startup_compare.py" --model "$MODEL" --out "$OUT" --steps "$STEPS" \
  --budget_s "$LEFT" ${STARTUP_ARGS:-} "${AFTER[@]}"
log "startup_compare rc=$?"
{ echo "== compile cache tree"; find /tmp/caches/vllm -maxdepth 4 -type d 2>/dev/null | head -40
  du -sh /tmp/caches/* 2>/dev/null; echo "== GPU after"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
  echo "== processes left"; ps -eo pid,etime,args | grep -E 'dynamo|etcd|vllm|EngineCore|supervisor' | grep -v grep; } >> "$OUT/setup.log" 2>&1
tail -25 "$OUT/setup.log"
