"""How a worker's GPUs split into engines: pure, checked when the pipeline
is built (for explicit ``gpus``) and again on the worker."""

from typing import Optional, Sequence


def engine_groups(
    gpu_ids: Sequence[int], tensor_parallel_size: int,
    num_engines: Optional[int]) -> list[tuple[int, ...]]:
  """Splits GPUs into one group per engine; ValueError says what's wrong."""
  if len(gpu_ids) % tensor_parallel_size:
    raise ValueError(
        f'tensor_parallel_size={tensor_parallel_size} does not divide the '
        f'{len(gpu_ids)} GPU(s) {list(gpu_ids)}: every engine needs exactly '
        f'{tensor_parallel_size}.')
  groups = [
      tuple(gpu_ids[i:i + tensor_parallel_size])
      for i in range(0, len(gpu_ids), tensor_parallel_size)
  ]
  if num_engines is not None:
    if num_engines > len(groups):
      raise ValueError(
          f'num_engines={num_engines} needs {num_engines * tensor_parallel_size}'
          f' GPU(s), but only {len(gpu_ids)} are available {list(gpu_ids)}.')
    groups = groups[:num_engines]
  return groups
