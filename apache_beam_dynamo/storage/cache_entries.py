"""Start cache entries on a Beam filesystem: found, restored and published
so that readers only ever use complete ones.

Layout under ``<compile_cache>/<key digest>/``::

  entries/<writer>/cache.tar       the cache directory as one tar, uploaded first
  entries/<writer>/MANIFEST.json   its size and sha256, and each file's, written last

A writer uploads under a name of its own (no two writers ever write the
same object), then writes its manifest under a temporary name and renames
it into place. An entry counts only once its manifest parses and its
archive is there with the listed size; a reader then checks the archive's
sha256 as it copies it, and every file's as it unpacks it. Of several
complete entries the first (the manifest's ``created``, then ``writer``)
wins: a writer that finds one before it publishes, or finds an earlier one
right after, removes its own (first its manifest, then its archive) and
leaves the winner's.
"""

import logging
import os
import socket
import time
import uuid
from typing import Optional

from apache_beam_dynamo.errors import StorageError
from apache_beam_dynamo.storage import archive as archives
from apache_beam_dynamo.storage import files
from apache_beam_dynamo.storage import local
from apache_beam_dynamo.storage.local import Manifest

_LOGGER = logging.getLogger(__name__)

ENTRIES = 'entries'
MANIFEST = 'MANIFEST.json'
ARCHIVE = 'cache.tar'


def _entry(root: str, writer: str, *parts: str) -> str:
  return files.join(root, ENTRIES, writer, *parts)


def complete_entries(root: str, ignore: frozenset = frozenset()
                     ) -> list[Manifest]:
  """Entries under ``root`` whose manifest parses and whose archive is
  there with the listed size, first first. Others are logged and skipped."""
  listing = files.list_files(root, with_checksums=False)
  found = []
  for relpath in sorted(listing):
    parts = relpath.split('/')
    if len(parts) != 3 or parts[0] != ENTRIES or parts[2] != MANIFEST:
      continue
    writer = parts[1]
    if writer in ignore:
      continue
    where = _entry(root, writer)
    try:
      manifest = Manifest.from_json(files.read_text(_entry(root, writer,
                                                           MANIFEST)))
    except StorageError as e:
      _LOGGER.warning('Start cache entry %s ignored: %s', where, e)
      continue
    if manifest.writer != writer or manifest.archive is None:
      _LOGGER.warning('Start cache entry %s ignored: its manifest is not '
                      "this entry's.", where)
      continue
    found_archive = listing.get(f'{ENTRIES}/{writer}/{ARCHIVE}')
    if found_archive is None or found_archive.size != manifest.archive[0]:
      _LOGGER.warning(
          'Start cache entry %s ignored: its archive is missing or of '
          'another size (%s bytes, the manifest says %d).', where,
          getattr(found_archive, 'size', 'no'), manifest.archive[0])
      continue
    found.append(manifest)
  return sorted(found, key=lambda m: m.order)


def restore(root: str, target: str) -> tuple[Optional[Manifest], set[str]]:
  """Unpacks the first entry that verifies into the new directory
  ``target``. Returns its manifest (None when no entry verified) and the
  writers of entries that failed verification (each logged as a WARNING).
  Raises StorageError when ``root`` cannot even be listed."""
  bad: set[str] = set()
  for manifest in complete_entries(root):
    staging = f'{target}.restoring-{os.getpid()}'
    local.remove_tree(staging)
    try:
      size, digest = manifest.archive
      files.fetch(_entry(root, manifest.writer, ARCHIVE), staging + '.tar',
                  size, sha256=digest)
      archives.unpack(staging + '.tar', manifest.files, staging)
      os.rename(staging, target)
      return manifest, bad
    except (StorageError, OSError) as e:
      _LOGGER.warning(
          'Start cache entry %s ignored: it does not verify (%s).',
          _entry(root, manifest.writer), e)
      bad.add(manifest.writer)
    finally:
      local.remove_tree(staging)
      _remove(staging + '.tar')
  return None, bad


def publish(root: str, source: str, key: dict,
            ignore: frozenset = frozenset()) -> Optional[Manifest]:
  """Uploads every file under ``source`` as a new entry, unless it has none
  or a complete one (other than those in ``ignore``) is already there or
  appears first. Returns the published manifest, or None."""
  if complete_entries(root, ignore):
    _LOGGER.info('Start cache %s: an entry is already published.', root)
    return None
  writer = (f'{int(time.time() * 1000):013d}-{socket.gethostname()[:40]}-'
            f'{os.getpid()}-{uuid.uuid4().hex[:8]}')
  packed = f'{source.rstrip(os.sep)}.publishing-{writer}.tar'
  uploaded = False
  try:
    members = archives.pack(source, packed)
    if not members:
      _LOGGER.info('Start cache %s: nothing to publish (%s is empty).', root,
                   source)
      return None
    uploaded = True
    archive = files.put(packed, _entry(root, writer, ARCHIVE))
    if complete_entries(root, ignore):
      _withdraw(root, writer)
      _LOGGER.info('Start cache %s: another worker published first.', root)
      return None
    manifest = Manifest(members, writer, time.time(), key, archive)
    files.write_text_atomically(
        _entry(root, writer, MANIFEST), manifest.to_json())
  except Exception:
    if uploaded:
      _withdraw(root, writer)
    raise
  finally:
    _remove(packed)
  first = complete_entries(root, ignore)
  if first and first[0].writer != writer:
    _withdraw(root, writer)
    _LOGGER.info('Start cache %s: another worker published first.', root)
    return None
  return manifest


def _withdraw(root: str, writer: str) -> None:
  """Removes a writer's entry: the manifest first, so it is never complete
  with its archive gone."""
  files.delete([_entry(root, writer, MANIFEST)])
  files.delete([_entry(root, writer, ARCHIVE)])


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
