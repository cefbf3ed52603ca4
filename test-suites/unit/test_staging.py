"""Staged models through local paths (Beam's local filesystem): verified
copies, reuse, resume, a manifest in the model dir, two real processes
racing. The same code against gs:// is in direct/test_storage_gcs.py."""

import json
import os

import pytest

from apache_beam_dynamo.errors import StorageError
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage import model_stage
from apache_beam_dynamo.storage.local import Manifest

from storage_support import (
    check_race, corrupt, race_to_stage, read_tree, write_tree)


@pytest.fixture
def remote(tmp_path):
  """A 'remote' directory on Beam's local filesystem."""
  return str(tmp_path / 'remote')


MODEL_TREE = {
    'config.json': b'{"architectures": ["Qwen3ForCausalLM"]}',
    'extra/vocab.txt.gz': b'not gzip: copied as stored, never decompressed',
    'tokenizer.json': b't' * 5000,
    'weights/model-00001.safetensors': os.urandom(300000),
    'weights/model-00002.safetensors': os.urandom(200000),
}


def counting_fetches(monkeypatch) -> list:
  fetched = []
  real = files.fetch

  def fetch(remote_path, *args, **kwargs):
    fetched.append(remote_path)
    return real(remote_path, *args, **kwargs)

  monkeypatch.setattr(files, 'fetch', fetch)
  return fetched


def test_stage_copies_verifies_and_reuses(remote, monkeypatch):
  source = os.path.join(remote, 'models', 'tiny')
  write_tree(source, MODEL_TREE)
  fetched = counting_fetches(monkeypatch)
  target = model_stage.stage(source + '/')
  assert os.path.basename(target) == 'tiny'
  assert target.startswith(local.cache_root())
  assert read_tree(target) == MODEL_TREE
  assert len(fetched) == len(MODEL_TREE)
  assert model_stage.stage(source) == target  # a restart, another pipeline
  assert len(fetched) == len(MODEL_TREE)


def test_stage_resumes_a_partial_copy(remote, monkeypatch):
  source = os.path.join(remote, 'tiny')
  write_tree(source, MODEL_TREE)
  target = model_stage.stage(source)
  # An interrupted copy: one file never finished, another half written.
  state_path = os.path.join(os.path.dirname(target), 'staged.json')
  state = json.load(open(state_path))
  state['complete'] = False
  json.dump(state, open(state_path, 'w'))
  os.remove(os.path.join(target, 'tokenizer.json'))
  weights = os.path.join(target, 'weights/model-00002.safetensors')
  os.rename(weights, weights + '.partial')
  with open(weights + '.partial', 'r+b') as f:
    f.truncate(1000)
  fetched = counting_fetches(monkeypatch)
  assert model_stage.stage(source) == target
  assert sorted(os.path.relpath(p, source) for p in fetched) == [
      'tokenizer.json', 'weights/model-00002.safetensors']
  assert read_tree(target) == MODEL_TREE
  assert not [n for n in os.listdir(os.path.dirname(weights))
              if n.endswith('.partial')]


def test_stage_fetches_what_changed(remote, monkeypatch):
  source = os.path.join(remote, 'tiny')
  write_tree(source, MODEL_TREE)
  target = model_stage.stage(source)
  changed = dict(MODEL_TREE, **{'tokenizer.json': b'new' * 10})
  del changed['weights/model-00002.safetensors']
  os.remove(os.path.join(source, 'weights/model-00002.safetensors'))
  write_tree(source, changed)
  fetched = counting_fetches(monkeypatch)
  assert model_stage.stage(source) == target
  assert [os.path.relpath(p, source) for p in fetched] == ['tokenizer.json']
  assert read_tree(target) == changed


def test_stage_checks_a_manifest_in_the_model_dir(remote):
  source = os.path.join(remote, 'tiny')
  write_tree(source, MODEL_TREE)
  digests = {p: (len(d), local.sha256_of(os.path.join(source, p)))
             for p, d in MODEL_TREE.items()}
  corrupt(os.path.join(source, 'tokenizer.json'))
  with open(os.path.join(source, model_stage.MODEL_MANIFEST), 'w') as f:
    f.write(Manifest(digests, 'uploader', 0.0, {}).to_json())
  with pytest.raises(StorageError, match='tokenizer.json: sha256'):
    model_stage.stage(source)
  corrupt(os.path.join(source, 'tokenizer.json'))  # back to the original
  target = model_stage.stage(source)
  assert read_tree(target) == MODEL_TREE  # the manifest itself not copied


def test_empty_or_missing_model_dir_names_the_path(remote):
  with pytest.raises(StorageError, match=r'nothing.*holds no files'):
    model_stage.stage(os.path.join(remote, 'nothing'))


def test_two_processes_racing_to_stage_share_one_copy(remote):
  source = os.path.join(remote, 'tiny')
  write_tree(source, MODEL_TREE)
  target = check_race(race_to_stage(source), len(MODEL_TREE))
  assert read_tree(target) == MODEL_TREE
