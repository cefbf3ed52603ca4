"""Staged models and the shared start cache on gs://, for real: Beam's own
GCS filesystem against a local emulator (conftest's ``gcs`` fixture), and a
mocker pipeline whose model_name and compile_cache are on gs://.

Each "worker machine" here is a cache directory of its own
(``APACHE_BEAM_DYNAMO_CACHE_DIR``), as each Dataflow worker has its disk.
"""

import logging
import os
import tempfile

import apache_beam as beam
import psutil
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import TINY_MODEL_DIR, VLLMCompletionsModelHandler
from apache_beam_dynamo.errors import StackStartupError
from apache_beam_dynamo.serving import machine as machines
from apache_beam_dynamo.serving import start_cache
from apache_beam_dynamo.storage import cache_entries
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage import model_stage

from conftest import StackWatch, run_pipeline, wait_for_no_leftovers
from gcs_emulator import GCS_BUCKET
from storage_support import (
    CACHE_TREE, check_race, race_to_stage, read_tree, write_tree)

REMOTE_MODEL = f'gs://{GCS_BUCKET}/models/tiny'
COMPILE_CACHE = f'gs://{GCS_BUCKET}/start-cache'


def upload_tree(local_dir: str, remote: str) -> None:
  for relpath in local.local_files(local_dir):
    files.put(os.path.join(local_dir, relpath), files.join(remote, relpath))


def flip_bytes(remote: str) -> None:
  """Same size, other bytes: only a checksum can tell."""
  with FileSystems.open(remote) as f:
    data = f.read()
  with FileSystems.create(remote) as f:
    f.write(bytes(b ^ 1 for b in data))


def new_machine(monkeypatch) -> str:
  directory = tempfile.mkdtemp(prefix='machine-')
  monkeypatch.setenv(local.CACHE_DIR_ENV, directory)
  return directory


def test_stage_a_gcs_model_verified_and_resumed(gcs, monkeypatch):
  upload_tree(TINY_MODEL_DIR, REMOTE_MODEL)
  listing = files.list_files(REMOTE_MODEL)
  assert all(f.checksum for f in listing.values())  # GCS's crc32c
  target = model_stage.stage(REMOTE_MODEL)
  assert os.path.basename(target) == 'tiny'
  assert read_tree(target) == read_tree(TINY_MODEL_DIR)
  # Interrupted: one file gone, the copy not marked complete.
  os.remove(os.path.join(target, 'tokenizer.json'))
  state = os.path.join(os.path.dirname(target), 'staged.json')
  with open(state) as f:
    text = f.read()
  with open(state, 'w') as f:
    f.write(text.replace('"complete": true', '"complete": false'))
  fetched = []
  real = files.fetch
  monkeypatch.setattr(files, 'fetch',
                      lambda path, *a, **k: (fetched.append(path),
                                             real(path, *a, **k)))
  assert model_stage.stage(REMOTE_MODEL) == target
  assert fetched == [f'{REMOTE_MODEL}/tokenizer.json']
  assert read_tree(target) == read_tree(TINY_MODEL_DIR)


def test_two_processes_racing_to_stage_from_gcs(gcs):
  upload_tree(TINY_MODEL_DIR, REMOTE_MODEL)
  count = len(local.local_files(TINY_MODEL_DIR))
  target = check_race(race_to_stage(REMOTE_MODEL), count)
  assert read_tree(target) == read_tree(TINY_MODEL_DIR)


def test_start_cache_entries_on_gcs(gcs, tmp_path, caplog):
  source = str(tmp_path / 'source')
  write_tree(source, CACHE_TREE)
  root = f'{COMPILE_CACHE}/unit'
  manifest = cache_entries.publish(root, source, {'k': 1})
  assert manifest is not None
  assert cache_entries.publish(root, source, {'k': 1}) is None
  restored, _ = cache_entries.restore(root, str(tmp_path / 'a'))
  assert restored == manifest
  assert read_tree(str(tmp_path / 'a')) == CACHE_TREE
  flip_bytes(cache_entries._entry(root, manifest.writer,
                                 cache_entries.ARCHIVE))
  with caplog.at_level(logging.WARNING):
    restored, bad = cache_entries.restore(root, str(tmp_path / 'b'))
  assert restored is None and bad == {manifest.writer}
  assert 'does not verify' in caplog.text
  assert not os.path.exists(tmp_path / 'b')


def make_handler():
  return VLLMCompletionsModelHandler(
      REMOTE_MODEL, {'speedup-ratio': '0'}, use_dynamo=True, engine='mocker',
      keep_alive_s=0, compile_cache=COMPILE_CACHE)


def run_worker(inspect=None) -> None:
  """One worker machine's job: 40 prompts through the mocker, served as
  'tiny'; ``inspect(watch)`` sees the stack while it serves. Returns once
  the stack is gone (its start cache published)."""
  handler = make_handler()
  prompts = [f'p{i}' for i in range(40)]

  def pipeline(p):
    results = (p | beam.Create(prompts)
               | RunInference(handler, inference_args={'max_tokens': 3})
               | beam.Map(lambda r: (r.example, r.model_id,
                                     r.inference.usage.completion_tokens)))
    assert_that(results, equal_to([(x, 'tiny', 3) for x in prompts]))

  if inspect is not None:
    watch = StackWatch(handler)
    inspect(watch)
  run_pipeline(pipeline)
  if inspect is not None:
    watch.close()
  del handler, pipeline
  assert not wait_for_no_leftovers()


def test_pipeline_with_model_and_compile_cache_on_gcs(
    gcs, monkeypatch, caplog, no_leftovers):
  upload_tree(TINY_MODEL_DIR, REMOTE_MODEL)
  config = make_handler().stack_config
  # The handler keeps the gs:// name; requests use the basename.
  assert config.model == REMOTE_MODEL
  assert config.served_model_name == 'tiny'
  key = start_cache.cache_key(
      config, machines.inspect_for_dynamo(config, os.environ), REMOTE_MODEL,
      TINY_MODEL_DIR)

  # Worker A compiled: what its engine wrote is in its key's directory.
  new_machine(monkeypatch)
  cache_a = start_cache.StartCache(COMPILE_CACHE, key)
  write_tree(cache_a.local_dir, CACHE_TREE)

  def engine_runs_staged_model_with_cache_a(watch):
    engine = psutil.Process(watch.pid('engine'))
    environ = engine.environ()
    assert environ['VLLM_CACHE_ROOT'] == os.path.join(cache_a.local_dir, 'vllm')
    assert environ['TRITON_CACHE_DIR'] == os.path.join(
        cache_a.local_dir, 'triton')
    argv = engine.cmdline()
    assert argv[argv.index('--model-path') + 1] == model_stage.staged_path(
        REMOTE_MODEL)

  run_worker(engine_runs_staged_model_with_cache_a)
  entries = cache_entries.complete_entries(cache_a.remote)
  assert len(entries) == 1
  assert set(entries[0].files) == set(CACHE_TREE)

  # Worker B, cold: stages the model and restores A's entry before starting.
  new_machine(monkeypatch)
  cache_b = start_cache.StartCache(COMPILE_CACHE, key)
  assert not os.path.exists(cache_b.local_dir)
  run_worker()
  assert read_tree(cache_b.local_dir) == CACHE_TREE
  assert len(cache_entries.complete_entries(cache_a.remote)) == 1

  # Worker C: the entry is corrupt. A warning, a cold start, a good job;
  # its own cache is empty (the mocker compiles nothing): nothing published.
  flip_bytes(cache_entries._entry(cache_a.remote, entries[0].writer,
                                 cache_entries.ARCHIVE))
  new_machine(monkeypatch)
  cache_c = start_cache.StartCache(COMPILE_CACHE, key)
  with caplog.at_level(logging.WARNING):
    run_worker()
  assert 'does not verify' in caplog.text
  assert local.local_files(cache_c.local_dir) == {}


def test_a_model_that_cannot_be_staged_fails_naming_path_and_remedy(
    gcs, no_leftovers):
  missing = f'gs://{GCS_BUCKET}/models/missing'
  handler = VLLMCompletionsModelHandler(
      missing, {'speedup-ratio': '0'}, use_dynamo=True, engine='mocker',
      keep_alive_s=0, startup_timeout_s=60)
  with pytest.raises(StackStartupError) as failure:
    handler.load_model()
  message = str(failure.value)
  assert f"could not stage model_name '{missing}'" in message
  assert 'holds no files' in message and 'storage.objects.list' in message


def test_a_staged_dir_that_is_no_model_fails_on_the_worker(gcs, no_leftovers):
  remote = f'gs://{GCS_BUCKET}/models/notamodel'
  files.put(os.path.join(TINY_MODEL_DIR, 'config.json'),
            f'{remote}/config.json')
  handler = VLLMCompletionsModelHandler(
      remote, {'speedup-ratio': '0'}, use_dynamo=True, engine='mocker',
      keep_alive_s=0, startup_timeout_s=60)
  with pytest.raises(StackStartupError, match='lacks tokenizer.json'):
    handler.load_model()
