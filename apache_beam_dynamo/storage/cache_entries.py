"""Start cache entries on a Beam filesystem: found, restored and published
so that readers only ever use complete ones.

Layout under ``<compile_cache>/<key digest>/``::

  entries/<writer>/files/<relative path>   the cached files, uploaded first
  entries/<writer>/MANIFEST.json           sizes and sha256s, written last

A writer uploads under a name of its own (no two writers ever write the
same object), then writes its manifest under a temporary name and renames
it into place. An entry counts only once its manifest parses and every file
it lists is there with its size; a reader then checks every file's sha256
as it copies it. Of several complete entries the first (the manifest's
``created``, then ``writer``) wins: a writer that finds one before it
publishes, or finds an earlier one right after, removes its own (first its
manifest, then its files) and leaves the winner's.
"""

import logging
import os
import socket
import time
import uuid
from typing import Optional

from apache_beam_dynamo.errors import StorageError
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage.local import Manifest

_LOGGER = logging.getLogger(__name__)

ENTRIES = 'entries'
MANIFEST = 'MANIFEST.json'
DATA = 'files'


def _entry(root: str, writer: str, *parts: str) -> str:
  return files.join(root, ENTRIES, writer, *parts)


def complete_entries(root: str, ignore: frozenset = frozenset()
                     ) -> list[Manifest]:
  """Entries under ``root`` whose manifest parses and whose files are all
  there with the listed sizes, first first. Others are logged and skipped."""
  listing = files.list_files(root, with_checksums=False)
  found = []
  for relpath in sorted(listing):
    parts = relpath.split('/')
    if len(parts) != 3 or parts[0] != ENTRIES or parts[2] != MANIFEST:
      continue
    writer = parts[1]
    if writer in ignore:
      continue
    try:
      manifest = Manifest.from_json(
          files.read_text(_entry(root, writer, MANIFEST)))
    except StorageError as e:
      _LOGGER.warning('Start cache entry %s ignored: %s', _entry(root, writer),
                      e)
      continue
    if manifest.writer != writer:
      _LOGGER.warning('Start cache entry %s ignored: its manifest names '
                      'writer %r.', _entry(root, writer), manifest.writer)
      continue
    short = [
        path for path, (size, _) in manifest.files.items()
        if getattr(listing.get(f'{ENTRIES}/{writer}/{DATA}/{path}'),
                   'size', None) != size
    ]
    if short:
      _LOGGER.warning(
          'Start cache entry %s ignored: %d of its files are missing or of '
          'another size (e.g. %s).', _entry(root, writer), len(short),
          short[0])
      continue
    found.append(manifest)
  return sorted(found, key=lambda m: m.order)


def restore(root: str, target: str) -> tuple[Optional[Manifest], set[str]]:
  """Copies the first entry that verifies into the new directory
  ``target``. Returns its manifest (None when no entry verified) and the
  writers of entries that failed verification (each logged as a WARNING).
  Raises StorageError when ``root`` cannot even be listed."""
  bad: set[str] = set()
  for manifest in complete_entries(root):
    staging = f'{target}.restoring-{os.getpid()}'
    local.remove_tree(staging)
    try:
      files.parallel(
          lambda item: files.fetch(
              _entry(root, manifest.writer, DATA, item[0]),
              os.path.join(staging, item[0]), item[1][0], sha256=item[1][1]),
          sorted(manifest.files.items()))
      os.makedirs(staging, mode=0o700, exist_ok=True)
      os.rename(staging, target)
      return manifest, bad
    except (StorageError, OSError) as e:
      _LOGGER.warning(
          'Start cache entry %s ignored: it does not verify (%s).',
          _entry(root, manifest.writer), e)
      bad.add(manifest.writer)
    finally:
      local.remove_tree(staging)
  return None, bad


def publish(root: str, source: str, key: dict,
            ignore: frozenset = frozenset()) -> Optional[Manifest]:
  """Uploads every file under ``source`` as a new entry, unless a complete
  one (other than those in ``ignore``) is already there or appears first.
  Returns the published manifest, or None when another writer's won."""
  if complete_entries(root, ignore):
    _LOGGER.info('Start cache %s: an entry is already published.', root)
    return None
  writer = (f'{int(time.time() * 1000):013d}-{socket.gethostname()[:40]}-'
            f'{os.getpid()}-{uuid.uuid4().hex[:8]}')
  snapshot = sorted(local.local_files(source))
  uploaded: dict[str, tuple[int, str]] = {}

  def upload(relpath: str) -> None:
    path = os.path.join(source, relpath)
    try:
      uploaded[relpath] = files.put(path, _entry(root, writer, DATA, relpath))
    except FileNotFoundError:  # a temporary file the engine removed
      pass

  try:
    files.parallel(upload, snapshot)
    if complete_entries(root, ignore):
      _withdraw(root, writer, uploaded)
      _LOGGER.info('Start cache %s: another worker published first.', root)
      return None
    manifest = Manifest(uploaded, writer, time.time(), key)
    files.write_text_atomically(
        _entry(root, writer, MANIFEST), manifest.to_json())
  except Exception:
    _withdraw(root, writer, uploaded)
    raise
  first = complete_entries(root, ignore)
  if first and first[0].writer != writer:
    _withdraw(root, writer, uploaded)
    _LOGGER.info('Start cache %s: another worker published first.', root)
    return None
  return manifest


def _withdraw(root: str, writer: str, uploaded) -> None:
  """Removes a writer's entry: the manifest first, so it is never complete
  with files missing."""
  files.delete([_entry(root, writer, MANIFEST)])
  files.delete([_entry(root, writer, DATA, p) for p in uploaded])
