"""Helpers of the storage tests (unit/test_storage.py on local paths,
direct/test_storage_gcs.py on gs://): trees of files, and two processes
racing to stage one model."""

import os
import subprocess
import sys

import psutil

from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage import model_stage

from conftest import wait_until


def write_tree(root: str, tree: dict) -> None:
  for relpath, data in tree.items():
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)


def read_tree(root: str) -> dict:
  return {
      relpath: open(os.path.join(root, relpath), 'rb').read()
      for relpath in local.local_files(root)
  }


CACHE_TREE = {
    'vllm/torch_compile_cache/abc/rank_0_0/backbone/graph.py': b'g' * 3000,
    'vllm/modelinfos/Qwen3.json': b'{"x": 1}',
    'triton/HASH/kernel.cubin': os.urandom(20000),
}


def corrupt(path: str) -> None:
  """Same size, other bytes: only the sha256 can tell."""
  with open(path, 'r+b') as f:
    data = f.read()
    f.seek(0)
    f.write(bytes(b ^ 0xFF for b in data))


STAGE = '''
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')
from apache_beam_dynamo.storage import model_stage
print('TARGET', model_stage.stage(sys.argv[1]))
'''


def stagers_waiting(processes, lock_path) -> bool:
  for process in processes:
    try:
      opened = [f.path for f in psutil.Process(process.pid).open_files()]
    except psutil.Error:
      return False
    if lock_path not in opened:
      return False
  return True


def race_to_stage(source: str) -> list[str]:
  """Two processes stage ``source`` while this one holds the entry's lock;
  both wait on it, then race once it is released. Returns their outputs."""
  lock_path = model_stage.entry_dir(source) + '.lock'
  with local.exclusive(lock_path):
    processes = [
        subprocess.Popen([sys.executable, '-c', STAGE, source],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True) for _ in range(2)
    ]
    try:
      wait_until(lambda: stagers_waiting(processes, lock_path), 60,
                 'both stagers waiting on the lock')
    except AssertionError:
      for process in processes:
        process.kill()
      raise
  outputs = [process.communicate(timeout=120)[0] for process in processes]
  assert [process.returncode for process in processes] == [0, 0], outputs
  return outputs


def check_race(outputs: list[str], files_count: int) -> str:
  staged = [o for o in outputs if f'staging {files_count} of' in o]
  reused = [o for o in outputs if 'is complete' in o]
  assert len(staged) == 1 and len(reused) == 1, outputs
  targets = {line.split()[1] for o in outputs for line in o.splitlines()
             if line.startswith('TARGET')}
  assert len(targets) == 1, outputs
  return targets.pop()
