"""The packaged mocker model is what the generator script writes."""

import filecmp
import json
import os
import subprocess
import sys

from apache_beam_dynamo import TINY_MODEL_DIR

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_generator_reproduces_the_packaged_model(tmp_path):
  subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'make_tiny_model.py'),
       str(tmp_path)], check=True)
  names = sorted(os.listdir(TINY_MODEL_DIR))
  assert names == sorted(os.listdir(tmp_path))
  match, mismatch, errors = filecmp.cmpfiles(
      TINY_MODEL_DIR, tmp_path, names, shallow=False)
  assert not mismatch and not errors


def test_model_is_small_and_complete():
  size = sum(
      os.path.getsize(os.path.join(TINY_MODEL_DIR, n))
      for n in os.listdir(TINY_MODEL_DIR))
  assert size < 100_000
  with open(os.path.join(TINY_MODEL_DIR, 'config.json')) as f:
    assert json.load(f)['architectures']
  with open(os.path.join(TINY_MODEL_DIR, 'tokenizer_config.json')) as f:
    assert '<|im_start|>' in json.load(f)['chat_template']
