"""``python -m apache_beam_dynamo.serving.fork_engine dynamo.vllm ARGS``: runs
``python -m dynamo.vllm ARGS`` with vLLM's EngineCore forked, not spawned.

dynamo.vllm 1.4 sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` right before it
creates its vLLM engine (its Rust runtime is up by then), so the EngineCore
process starts a fresh interpreter and imports torch and vLLM a second
time: 12.3 s of every start on an H200, where vLLM alone forks it in 0.3 s
(docs/gpu.md, "Where the start-up goes"). Here vLLM's ``get_mp_context``
forks whenever vLLM itself would (CUDA not initialized in this process);
otherwise it keeps vLLM's answer. ``VLLM_WORKER_MULTIPROC_METHOD`` set in
the engine's environment before the start (``engine_env``) still wins.
"""

import multiprocessing
import os
import runpy
import sys


def _fork_engine_core() -> None:
  try:
    import torch
    from vllm.utils import system_utils
  except ImportError:  # not a vLLM engine: nothing to change
    return
  original = system_utils.get_mp_context

  def get_mp_context():
    if torch.cuda.is_initialized():
      return original()  # vLLM's own rule: spawn after CUDA init
    return multiprocessing.get_context('fork')

  system_utils.get_mp_context = get_mp_context
  # modules that imported the name before this point
  for name in ('vllm.v1.engine.utils', 'vllm.v1.engine.coordinator'):
    module = sys.modules.get(name)
    if module is not None and getattr(module, 'get_mp_context', None) is original:
      module.get_mp_context = get_mp_context


def main() -> None:
  module = sys.argv[1]
  sys.argv = [module] + sys.argv[2:]
  if 'VLLM_WORKER_MULTIPROC_METHOD' not in os.environ:
    _fork_engine_core()
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
