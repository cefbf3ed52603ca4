"""What the worker's GPU is, and the engine flags it needs.

Runs on the worker (the machine that launches a Dataflow job usually has no
GPU). A T4 (compute capability 7.5) has no bfloat16 and 16 GB of memory;
vLLM's defaults fail there, so the engine gets ``--dtype half`` and the
memory settings apache-beam's own vLLM example uses, unless the user set
them. On an H100 or H200 vLLM would run 1,024 sequences at once, past the
512 it captures CUDA graphs for; the engine gets 512, and CUDA graphs for
10 batch sizes instead of 51.
"""

import dataclasses
import glob
import json
import logging
import subprocess
from typing import Mapping, Optional

from apache_beam_dynamo.config.server_args import ServerArgs

_LOGGER = logging.getLogger(__name__)

# GPUs with less memory than this get the small-GPU memory defaults.
SMALL_GPU_MIB = 20 * 1024
SMALL_GPU_DEFAULTS: ServerArgs = (
    ('gpu-memory-utilization', '0.72'),
    ('max-num-seqs', '32'),
)
# vLLM's own rule for its larger batch defaults (max-num-seqs 1,024): this
# much memory, and not an A100. Its offline engine on an H200 made 31,525
# tok/s at 512 sequences and 21,230 at its default 1,024 (docs/gpu.md);
# the client keeps twice that in flight, so the engine's queue refills each
# finished sequence at once (config/request.py).
LARGE_GPU_MIB = 70 * 1024
# CUDA graphs for powers of two up to those 512 sequences: vLLM captures 51
# sizes (1, 2, 4, every 8 to 256, every 16 to 512), twice (piecewise and
# full), 4.4 s of every start on an H200; these 10 take 1.4-1.7 s. A batch
# job's engine runs at its 512 sequences nearly all the time; between
# sizes a step pads to the next one (docs/gpu.md).
CUDA_GRAPH_SIZES = tuple(2**i for i in range(10))
LARGE_GPU_DEFAULTS: ServerArgs = (
    ('max-num-seqs', '512'),
    ('compilation-config',
     json.dumps({'cudagraph_capture_sizes': list(CUDA_GRAPH_SIZES)},
                separators=(',', ':'))),
)


@dataclasses.dataclass(frozen=True)
class GpuInfo:
  name: str
  compute_capability: float
  memory_mib: int


def gpu_visible(parent: Mapping[str, str]) -> bool:
  if parent.get('CUDA_VISIBLE_DEVICES', None) in ('', '-1'):
    return False
  return bool(glob.glob('/dev/nvidia[0-9]*'))


def visible_gpu_ids(parent: Mapping[str, str]) -> list[int]:
  """The GPUs this worker may use: CUDA_VISIBLE_DEVICES if set, else every
  /dev/nvidiaN."""
  visible = parent.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [int(part) for part in visible.split(',') if part.strip().isdigit()]
  return sorted(
      int(path[len('/dev/nvidia'):]) for path in glob.glob('/dev/nvidia[0-9]*'))


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
  """Parses ``nvidia-smi --query-gpu=name,compute_cap,memory.total
  --format=csv,noheader,nounits``."""
  gpus = []
  for line in text.strip().splitlines():
    name, capability, memory = (field.strip() for field in line.split(','))
    gpus.append(GpuInfo(name, float(capability), int(float(memory))))
  return gpus


def describe_gpu(gpu_id: int) -> Optional[GpuInfo]:
  """nvidia-smi's view of one GPU, or None if it can't tell."""
  try:
    result = subprocess.run([
        'nvidia-smi', f'--id={gpu_id}',
        '--query-gpu=name,compute_cap,memory.total',
        '--format=csv,noheader,nounits'
    ],
                            capture_output=True,
                            text=True,
                            timeout=30,
                            check=True)
    gpus = parse_nvidia_smi(result.stdout)
  except (OSError, subprocess.SubprocessError, ValueError) as e:
    _LOGGER.warning('Could not query the GPU with nvidia-smi (%s); using '
                    "vLLM's defaults.", e)
    return None
  return gpus[0] if gpus else None


def engine_defaults(gpu: Optional[GpuInfo]) -> ServerArgs:
  """vLLM flags this GPU needs; user flags of the same name replace them."""
  if gpu is None:
    return ()
  defaults: ServerArgs = ()
  if gpu.compute_capability < 8.0:
    defaults += (('dtype', 'half'), )
  if gpu.memory_mib < SMALL_GPU_MIB:
    defaults += SMALL_GPU_DEFAULTS
  elif gpu.memory_mib >= LARGE_GPU_MIB and 'A100' not in gpu.name.upper():
    defaults += LARGE_GPU_DEFAULTS
  return defaults
