"""Start cache entries and options through local paths (Beam's local
filesystem): keys, atomic publish, racing writers, bad entries. Staged
models: test_staging.py; the same code against gs://:
direct/test_storage_gcs.py."""

import logging
import os
import subprocess
import sys
import tempfile

import pytest

from apache_beam_dynamo import TINY_MODEL_DIR
from apache_beam_dynamo.config.stack import StackConfig
from apache_beam_dynamo.errors import ConfigError, StorageError
from apache_beam_dynamo.serving import commands
from apache_beam_dynamo.serving import start_cache
from apache_beam_dynamo.serving.machine import Machine
from apache_beam_dynamo.storage import archive
from apache_beam_dynamo.storage import cache_entries
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage import model_stage

from storage_support import CACHE_TREE, corrupt, read_tree, write_tree


@pytest.fixture
def remote(tmp_path):
  """A 'remote' directory on Beam's local filesystem."""
  return str(tmp_path / 'remote')


def cache_dir() -> str:
  return local.cache_root()


# -- the cache directory and keys ------------------------------------------


def test_cache_root_is_private_and_per_test_tmpdir():
  root = local.cache_root()
  assert root.startswith(tempfile.gettempdir())
  assert os.stat(root).st_mode & 0o777 == 0o700


def test_cache_root_of_someone_else_is_refused(monkeypatch, tmp_path):
  shared = tmp_path / 'shared'
  shared.mkdir(mode=0o777)
  os.chmod(shared, 0o777)
  monkeypatch.setenv(local.CACHE_DIR_ENV, str(shared))
  with pytest.raises(StorageError, match='writable by others'):
    local.cache_root()


def _key(**changes):
  config = StackConfig(**{
      'model': TINY_MODEL_DIR, 'use_dynamo': True,
      'compile_cache': '/tmp/x', **changes.pop('config', {})})
  machine = Machine(engine_gpus=((0, ), ), gpu_name=changes.pop('gpu', 'H200'),
                    gpu_defaults=changes.pop('gpu_defaults', ()))
  return start_cache.cache_key(config, machine, config.model, config.model)


def test_cache_key_names_what_the_compiled_cache_depends_on():
  key = _key()
  assert key['gpu'] == 'H200'
  assert key['engine'] == 'dynamo.vllm'
  assert key['tensor_parallel_size'] == 1
  assert set(key['versions']) == {'vllm', 'ai-dynamo', 'torch', 'triton'}
  assert key['versions']['ai-dynamo']  # installed here
  assert key['model_config_sha256'] == local.sha256_of(
      os.path.join(TINY_MODEL_DIR, 'config.json'))
  assert _key() == key  # stable
  # Secrets stay out of the key (it is written into the manifest).
  assert _key(config={'engine_env': (('HF_TOKEN', 'secret'), )}) == key
  for other in (_key(gpu='L4'),
                _key(config={'tensor_parallel_size': 2, 'gpus': (0, 1)}),
                _key(config={'engine_args': (('max-num-seqs', '32'), )}),
                _key(gpu_defaults=(('dtype', 'half'), )),
                _key(config={'engine_env': (('VLLM_ATTENTION_BACKEND', 'X'), )}),
                _key(config={'use_dynamo': False})):
    assert other != key


def test_engine_gets_the_start_cache_dirs_and_engine_env_wins():
  from apache_beam_dynamo.serving.placement import Placement
  placement = Placement('/run', 'ns', 1, 2, 3, (4, ))
  config = StackConfig(TINY_MODEL_DIR, use_dynamo=True)
  env = commands.engine_launch(
      config, placement, {}, start_cache_dir='/c/key').environ
  assert env['VLLM_CACHE_ROOT'] == '/c/key/vllm'
  assert env['TRITON_CACHE_DIR'] == '/c/key/triton'
  assert 'VLLM_CACHE_ROOT' not in commands.engine_launch(
      config, placement, {}).environ
  mine = StackConfig(TINY_MODEL_DIR, use_dynamo=True,
                     engine_env=(('VLLM_CACHE_ROOT', '/mine'), ))
  assert commands.engine_launch(
      mine, placement, {}, start_cache_dir='/c').environ['VLLM_CACHE_ROOT'] == '/mine'
  native = commands.native_vllm_launch(
      StackConfig(TINY_MODEL_DIR), placement, {}, start_cache_dir='/c').environ
  assert native['TRITON_CACHE_DIR'] == '/c/triton'


# -- options ------------------------------------------------------------------


def test_remote_model_is_served_under_its_basename():
  config = StackConfig('gs://bucket/models/qwen-small/', use_dynamo=True,
                       engine='mocker')
  assert config.served_model_name == 'qwen-small'
  assert model_stage.model_name('gs://b/m/qwen-small/') == 'qwen-small'


@pytest.mark.parametrize('model', ['gs://bucket', 'gs://bucket/models/*'])
def test_remote_model_must_name_a_directory(model):
  with pytest.raises(ConfigError, match='one model directory'):
    StackConfig(model, use_dynamo=True)


@pytest.mark.parametrize('value', ['', 3, 'gs://b/cache/*'])
def test_bad_compile_cache_fails_when_the_pipeline_is_built(value):
  with pytest.raises(ConfigError, match='compile_cache'):
    StackConfig(TINY_MODEL_DIR, compile_cache=value)


def test_unknown_scheme_is_left_to_the_worker(caplog):
  with caplog.at_level(logging.WARNING):
    StackConfig('nosuchfs://b/m', compile_cache='nosuchfs://b/c')
  assert 'No Beam filesystem here handles model_name' in caplog.text
  assert 'compile_cache' in caplog.text


def test_unknown_scheme_on_the_worker_names_path_and_remedy():
  with pytest.raises(StorageError, match=r"nosuchfs://b/m.*Install the Beam"):
    model_stage.stage('nosuchfs://b/m')


def test_handler_takes_compile_cache():
  from apache_beam_dynamo import VLLMChatModelHandler, VLLMCompletionsModelHandler
  for kind in (VLLMCompletionsModelHandler, VLLMChatModelHandler):
    handler = kind('gs://b/models/m', use_dynamo=True,
                   compile_cache='gs://b/cache')
    assert handler.stack_config.compile_cache == 'gs://b/cache'
    assert handler.stack_config.served_model_name == 'm'


# -- start cache entries ---------------------------------------------------------


def publish_tree(root: str, tree: dict, key=None):
  source = tempfile.mkdtemp()
  write_tree(source, tree)
  return cache_entries.publish(root, source, key or {'k': 1})


def test_publish_then_restore_gives_the_same_files(remote, tmp_path):
  manifest = publish_tree(remote, CACHE_TREE)
  assert set(manifest.files) == set(CACHE_TREE)
  target = str(tmp_path / 'restored')
  restored, bad = cache_entries.restore(remote, target)
  assert restored == manifest and not bad
  assert read_tree(target) == CACHE_TREE


def test_only_one_entry_is_published(remote):
  assert publish_tree(remote, CACHE_TREE) is not None
  assert publish_tree(remote, {'vllm/other': b'x'}) is None
  assert len(cache_entries.complete_entries(remote)) == 1
  assert len([p for p in files.list_files(remote)
              if p.endswith(cache_entries.MANIFEST)]) == 1


def test_a_writer_that_lost_the_race_withdraws(remote, monkeypatch):
  """Both writers saw no entry at first; the later manifest is removed,
  with its files, and the first stays."""
  first = publish_tree(remote, CACHE_TREE)
  real = cache_entries.complete_entries
  calls = []

  def not_yet_visible(root, ignore=frozenset()):
    calls.append(root)
    return [] if len(calls) <= 2 else real(root, ignore)

  monkeypatch.setattr(cache_entries, 'complete_entries', not_yet_visible)
  assert publish_tree(remote, {'vllm/late': b'late'}) is None
  monkeypatch.undo()
  assert [m.writer for m in cache_entries.complete_entries(remote)] == [
      first.writer]
  assert not [p for p in files.list_files(remote) if first.writer not in p]


def test_entry_without_manifest_is_not_used(remote, tmp_path, caplog):
  manifest = publish_tree(remote, CACHE_TREE)
  files.delete([cache_entries._entry(remote, manifest.writer,
                                     cache_entries.MANIFEST)])
  assert cache_entries.restore(remote, str(tmp_path / 't')) == (None, set())
  assert not os.path.exists(tmp_path / 't')


def test_partial_entry_is_ignored_with_a_warning(remote, tmp_path, caplog):
  manifest = publish_tree(remote, CACHE_TREE)
  archive = cache_entries._entry(remote, manifest.writer, cache_entries.ARCHIVE)
  with open(archive, 'r+b') as f:
    f.truncate(1000)
  with caplog.at_level(logging.WARNING):
    assert cache_entries.restore(remote, str(tmp_path / 't'))[0] is None
  assert 'archive is missing or of another size' in caplog.text


def test_corrupt_entry_is_ignored_with_a_warning(remote, tmp_path, caplog):
  manifest = publish_tree(remote, CACHE_TREE)
  corrupt(cache_entries._entry(remote, manifest.writer,
                               cache_entries.ARCHIVE))
  target = str(tmp_path / 't')
  with caplog.at_level(logging.WARNING):
    restored, bad = cache_entries.restore(remote, target)
  assert restored is None and bad == {manifest.writer}
  assert 'does not verify' in caplog.text and 'sha256' in caplog.text
  assert not os.path.exists(target)
  assert not [n for n in os.listdir(tmp_path) if 'restoring' in n]
  assert not [n for n in os.listdir(local.cache_root()) if 'restoring' in n]
  # A fresh entry can still be published past the corrupt one, and wins
  # for readers that skip it.
  source = str(tmp_path / 'src')
  write_tree(source, CACHE_TREE)
  assert cache_entries.publish(remote, source, {}, frozenset(bad)) is not None
  restored, _ = cache_entries.restore(remote, target)
  assert restored is not None and read_tree(target) == CACHE_TREE


def test_unpack_takes_only_what_the_manifest_lists(tmp_path):
  source = str(tmp_path / 'source')
  write_tree(source, CACHE_TREE)
  packed = str(tmp_path / 'c.tar')
  members = archive.pack(source, packed)
  assert set(members) == set(CACHE_TREE)
  archive.unpack(packed, members, str(tmp_path / 'ok'))
  assert read_tree(str(tmp_path / 'ok')) == CACHE_TREE
  one = 'vllm/modelinfos/Qwen3.json'
  forged = dict(members, **{one: (members[one][0], '0' * 64)})
  with pytest.raises(StorageError, match='does not match its manifest'):
    archive.unpack(packed, forged, str(tmp_path / 'forged'))
  fewer = {p: m for p, m in members.items() if p != one}
  with pytest.raises(StorageError, match='does not list'):
    archive.unpack(packed, fewer, str(tmp_path / 'fewer'))
  more = dict(members, **{'extra': (1, '0' * 64)})
  with pytest.raises(StorageError, match='lacks 1 files'):
    archive.unpack(packed, more, str(tmp_path / 'more'))


def test_garbage_manifest_is_ignored_with_a_warning(remote, tmp_path, caplog):
  manifest = publish_tree(remote, CACHE_TREE)
  path = cache_entries._entry(remote, manifest.writer, cache_entries.MANIFEST)
  with open(path, 'w') as f:
    f.write('{"version": 1, "files": {"../../etc/passwd": ')
  with caplog.at_level(logging.WARNING):
    assert cache_entries.restore(remote, str(tmp_path / 't'))[0] is None
  assert 'not a valid manifest' in caplog.text


def test_start_cache_restores_once_per_machine_and_publishes_once(
    remote, caplog):
  key = {'model': 'm', 'gpu': 'H200'}
  first = start_cache.StartCache(remote, key)
  with caplog.at_level(logging.WARNING):
    first.prepare()
  assert first.restored is None
  assert 'no entry for this key yet' in caplog.text
  write_tree(first.local_dir, CACHE_TREE)
  first.publish()
  # Another machine (its own cache dir): restores, and does not publish.
  os.environ[local.CACHE_DIR_ENV] = tempfile.mkdtemp()
  try:
    second = start_cache.StartCache(remote, key)
    second.prepare()
    assert second.restored is not None
    assert read_tree(second.local_dir) == CACHE_TREE
    assert os.path.isdir(os.path.join(second.local_dir, 'triton'))
    second.publish()
    assert len(cache_entries.complete_entries(second.remote)) == 1
  finally:
    del os.environ[local.CACHE_DIR_ENV]


def test_unreadable_shared_cache_starts_cold_with_a_warning(caplog):
  cache = start_cache.StartCache('nosuchfs://b/cache', {'k': 1})
  with caplog.at_level(logging.WARNING):
    cache.prepare()
    cache.publish()
  assert 'could not be read' in caplog.text
  assert 'publishing failed' in caplog.text
  assert os.path.isdir(os.path.join(cache.local_dir, 'vllm'))


PUBLISH = '''
import sys, tempfile, os
from apache_beam_dynamo.storage import cache_entries
source = tempfile.mkdtemp()
os.makedirs(os.path.join(source, 'vllm'))
with open(os.path.join(source, 'vllm', 'who'), 'w') as f:
  f.write(sys.argv[2] * 1000)
manifest = cache_entries.publish(sys.argv[1], source, {})
print('PUBLISHED' if manifest else 'SKIPPED')
'''


def test_writers_racing_leave_complete_entries_only(remote, tmp_path):
  """Three processes publish at once: whatever the interleaving, readers
  get one complete entry, the first, and nothing half-written remains."""
  processes = [
      subprocess.Popen([sys.executable, '-c', PUBLISH, remote, name],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) for name in 'abc'
  ]
  outputs = [process.communicate(timeout=120)[0] for process in processes]
  assert [process.returncode for process in processes] == [0, 0, 0], outputs
  entries = cache_entries.complete_entries(remote)
  assert entries and 'PUBLISHED' in ''.join(outputs), outputs
  listing = files.list_files(remote)
  writers = {path.split('/')[1] for path in listing}
  assert writers == {m.writer for m in entries}  # no orphan archives
  restored, _ = cache_entries.restore(remote, str(tmp_path / 'r'))
  assert restored == entries[0]
  assert len(set(open(tmp_path / 'r' / 'vllm' / 'who').read())) == 1
