"""A model directory on a Beam filesystem (``gs://bucket/models/name``),
staged to a local directory that vLLM (or the mocker) can read.

One copy per machine and user, shared by every SDK process and stack:
``<cache dir>/models/<digest of the remote path>/<name>``, so the engine
serves it under ``name``, the remote directory's basename, as it would a
local directory. Staging holds the entry's lock: a second process staging
the same model waits, then finds the copy complete. Files are fetched in
parallel, each verified (size; GCS's crc32c; the sha256 of a manifest
``abd-manifest.json`` in the remote directory when there is one) before it
takes its final name, so an interrupted copy resumes with the files still
missing; a later stage (a restart, another pipeline) only lists the remote
directory to see that nothing changed.
"""

import json
import logging
import os
import time

from apache_beam_dynamo.errors import StorageError
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local

_LOGGER = logging.getLogger(__name__)

# An optional manifest (storage/local.py's format) in the remote model dir:
# its sha256s are checked too. It is not copied.
MODEL_MANIFEST = 'abd-manifest.json'
_STATE = 'staged.json'


def model_name(remote: str) -> str:
  """The name a staged model is served under: its directory's basename."""
  return remote.rstrip('/').rsplit('/', 1)[-1]


def entry_dir(remote: str) -> str:
  """Where ``remote`` is staged on this machine (the model dir's parent)."""
  return os.path.join(local.cache_root(), 'models',
                      local.key_digest(remote.rstrip('/')))


def staged_path(remote: str) -> str:
  return os.path.join(entry_dir(remote), model_name(remote))


def stage(remote: str) -> str:
  """Copies the model directory ``remote`` here (once per machine) and
  returns the local directory; raises StorageError with the path and
  what to do when it cannot."""
  remote = remote.rstrip('/')
  entry = entry_dir(remote)
  target = os.path.join(entry, model_name(remote))
  with local.exclusive(entry + '.lock'):
    listing = files.list_files(remote)
    sha256s = _manifest_digests(remote, listing)
    listing.pop(MODEL_MANIFEST, None)
    if not listing:
      raise StorageError(
          f'The model directory {remote} holds no files (or this worker '
          'cannot list it). Check the path, and that the workers may read '
          'it (on Dataflow: the worker service account needs '
          'storage.objects.list and storage.objects.get on the bucket).')
    wanted = {p: [f.size, f.checksum] for p, f in listing.items()}
    state_path = os.path.join(entry, _STATE)
    previous = _read_state(state_path)
    if previous.get('complete') and previous.get('files') == wanted and all(
        _has(target, p, f.size) for p, f in listing.items()):
      _LOGGER.info('Model %s: staged copy %s is complete.', remote, target)
      return target
    # Files staged against the same listing entry are complete (they were
    # verified before they took their final name): keep them.
    before = previous.get('files') or {}
    missing = [
        f for p, f in sorted(listing.items())
        if not (before.get(p) == wanted[p] and _has(target, p, f.size))
    ]
    _write_state(state_path, {'remote': remote, 'files': wanted,
                              'complete': False})
    started = time.monotonic()
    total = sum(f.size for f in missing)
    _LOGGER.info('Model %s: staging %d of %d files (%.1f MB) to %s.', remote,
                 len(missing), len(listing), total / 1e6, target)
    files.parallel(
        lambda f: files.fetch(
            files.join(remote, f.relpath), os.path.join(target, f.relpath),
            f.size, f.checksum, sha256s.get(f.relpath)), missing)
    _remove_extra(target, listing)
    _write_state(state_path, {'remote': remote, 'files': wanted,
                              'complete': True})
    _LOGGER.info('Model %s: staged in %.1f s.', remote,
                 time.monotonic() - started)
  return target


def _has(target: str, relpath: str, size: int) -> bool:
  try:
    return os.path.getsize(os.path.join(target, relpath)) == size
  except OSError:
    return False


def _manifest_digests(remote: str, listing) -> dict[str, str]:
  if MODEL_MANIFEST not in listing:
    return {}
  manifest = local.Manifest.from_json(
      files.read_text(files.join(remote, MODEL_MANIFEST)))
  for path, (size, _) in manifest.files.items():
    found = listing.get(path)
    if found is None or found.size != size:
      raise StorageError(
          f'{remote}/{MODEL_MANIFEST} lists {path} with {size} bytes, but the '
          f'directory has {found.size if found else "no such file"}. Upload '
          'the model again, or remove the manifest.')
  return {path: digest for path, (_, digest) in manifest.files.items()}


def _remove_extra(target: str, listing) -> None:
  """Files the remote directory no longer has, and partial copies."""
  for parent, _, names in os.walk(target):
    for name in names:
      path = os.path.join(parent, name)
      if os.path.relpath(path, target) not in listing:
        os.remove(path)


def _read_state(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_state(path: str, state: dict) -> None:
  os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
  temporary = f'{path}.tmp-{os.getpid()}'
  with open(temporary, 'w') as f:
    json.dump(state, f, sort_keys=True)
  os.replace(temporary, path)
