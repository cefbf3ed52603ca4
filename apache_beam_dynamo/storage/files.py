"""Files on any Beam filesystem (gs://, a local dir, ...): list, fetch, put.

The one place that talks to remote storage, for staged models
(storage/model_stage.py) and the shared start cache
(storage/start_cache.py). Beam is imported on first use only: the
supervisor imports this module and should not pay for Beam unless a stack
uses one of those options.

Every copy is verified: a fetched file is written under a ``.partial``
name, its size (and the filesystem's checksum where it offers one we can
compute: GCS's crc32c) checked, and only then renamed into place, so a
file under its final name is complete.
"""

import base64
import concurrent.futures
import dataclasses
import hashlib
import os
import uuid
from typing import Callable, Iterable, Optional, TypeVar

from apache_beam_dynamo.config.remote_paths import is_remote, scheme
from apache_beam_dynamo.errors import StorageError

CHUNK = 8 << 20
# Parallel transfers per copy: enough to fill a worker's network with the
# many small files of a compile cache or the few big ones of a model.
WORKERS = 8
PARTIAL = '.partial'

T = TypeVar('T')


def join(base: str, *parts: str) -> str:
  if is_remote(base):
    return '/'.join([base.rstrip('/'), *(p.strip('/') for p in parts)])
  return os.path.join(base, *parts)


def _filesystems():
  from apache_beam.io.filesystems import FileSystems
  return FileSystems


def _open(path: str):
  """Bytes as stored: Beam would otherwise decompress a name ending in .gz."""
  from apache_beam.io.filesystem import CompressionTypes
  return _filesystems().open(
      path, compression_type=CompressionTypes.UNCOMPRESSED)


def _create(path: str):
  from apache_beam.io.filesystem import CompressionTypes
  return _filesystems().create(
      path, compression_type=CompressionTypes.UNCOMPRESSED)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One file under a remote directory: its path relative to it, size and
  the filesystem's checksum (None when we cannot check it)."""
  relpath: str
  size: int
  checksum: Optional[str] = None


def _checksum_kind(path: str) -> Optional[str]:
  return 'crc32c' if scheme(path) == 'gs' else None


def list_files(directory: str, with_checksums: bool = True) -> dict[str, RemoteFile]:
  """Every file under ``directory``, by path relative to it ({} if none)."""
  fs = _filesystems()
  base = directory.rstrip('/') + '/'
  try:
    fs.get_filesystem(base)
  except ValueError as e:
    raise StorageError(
        f'no Beam filesystem handles {directory!r} on this worker ({e}). '
        'Install the Beam extra for that scheme on the workers (gs:// comes '
        'with apache-beam[gcp]; s3:// needs apache-beam[aws]).') from e
  try:
    found = fs.match([base + '**'])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except
    raise StorageError(f'could not list {directory}: {e}') from e
  files = {}
  kind = _checksum_kind(directory) if with_checksums else None
  for meta in found:
    if not meta.path.startswith(base) or meta.path.endswith('/'):
      continue
    relpath = meta.path[len(base):]
    try:
      checksum = fs.checksum(meta.path) if kind else None
    except Exception as e:  # pylint: disable=broad-except
      raise StorageError(f'could not read the checksum of {meta.path}: {e}'
                         ) from e
    files[relpath] = RemoteFile(relpath, meta.size_in_bytes, checksum)
  return files


class _Hashes:
  """sha256 always; crc32c (base64, as GCS reports it) when asked for."""
  def __init__(self, kind: Optional[str]):
    self.sha256 = hashlib.sha256()
    self._crc = None
    if kind == 'crc32c':
      import google_crc32c  # comes with apache-beam[gcp]
      self._crc = google_crc32c.Checksum()

  def update(self, data: bytes) -> None:
    self.sha256.update(data)
    if self._crc is not None:
      self._crc.update(data)

  @property
  def crc32c(self) -> Optional[str]:
    if self._crc is None:
      return None
    return base64.b64encode(self._crc.digest()).decode()


def fetch(remote: str, local: str, size: int,
          checksum: Optional[str] = None,
          sha256: Optional[str] = None) -> None:
  """Copies ``remote`` to ``local`` (via ``local.partial``), verified against
  ``size``, the filesystem's ``checksum`` and/or a manifest's ``sha256``;
  raises StorageError (and leaves nothing at ``local``) when it differs."""
  os.makedirs(os.path.dirname(local) or '.', exist_ok=True)
  partial = local + PARTIAL
  hashes = _Hashes(_checksum_kind(remote) if checksum else None)
  try:
    with _open(remote) as source, open(partial, 'wb') as target:
      written = _copy(source, target, hashes)
  except Exception as e:  # pylint: disable=broad-except
    _remove(partial)
    raise StorageError(f'could not read {remote}: {e}') from e
  problem = None
  if written != size:
    problem = f'{written} bytes, expected {size}'
  elif checksum and hashes.crc32c and hashes.crc32c != checksum:
    problem = f'crc32c {hashes.crc32c}, expected {checksum}'
  elif sha256 and hashes.sha256.hexdigest() != sha256:
    problem = f'sha256 {hashes.sha256.hexdigest()}, expected {sha256}'
  if problem:
    _remove(partial)
    raise StorageError(f'{remote}: {problem}')
  os.replace(partial, local)


def put(local: str, remote: str) -> tuple[int, str]:
  """Copies a local file to ``remote``; returns the size and sha256 of the
  bytes written (the file may change under us: this is what went out)."""
  hashes = _Hashes(None)
  with open(local, 'rb') as source, _create(remote) as target:
    size = _copy(source, target, hashes)
  return size, hashes.sha256.hexdigest()


def _copy(source, target, hashes: '_Hashes') -> int:
  """Copies ``source`` to ``target`` in chunks, hashing; returns the bytes."""
  copied = 0
  while True:
    data = source.read(CHUNK)
    if not data:
      return copied
    hashes.update(data)
    target.write(data)
    copied += len(data)


def read_text(remote: str) -> str:
  with _open(remote) as f:
    return f.read().decode('utf-8')


def write_text_atomically(remote: str, text: str) -> None:
  """Writes under a temporary name, then renames into place, so readers see
  the whole file or none (object stores show an object only once written;
  a local file would be visible half-written)."""
  fs = _filesystems()
  temporary = f'{remote}.tmp-{uuid.uuid4().hex[:12]}'
  with _create(temporary) as f:
    f.write(text.encode('utf-8'))
  fs.rename([temporary], [remote])


def delete(paths: Iterable[str]) -> None:
  """Deletes what exists of ``paths``; never raises."""
  paths = list(paths)
  if not paths:
    return
  try:
    _filesystems().delete(paths)
  except Exception:  # pylint: disable=broad-except
    for path in paths:
      try:
        _filesystems().delete([path])
      except Exception:  # pylint: disable=broad-except
        pass


def parallel(fn: Callable[[T], None], items: Iterable[T],
             workers: int = WORKERS) -> None:
  """Runs ``fn`` on every item on a thread pool; raises the first error
  once all are done (a failed copy leaves the others complete)."""
  items = list(items)
  if not items:
    return
  errors = []
  with concurrent.futures.ThreadPoolExecutor(
      max_workers=min(workers, len(items)),
      thread_name_prefix='abd-copy') as pool:
    for future in [pool.submit(fn, item) for item in items]:
      error = future.exception()
      if error is not None:
        errors.append(error)
  if errors:
    raise errors[0]


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass
