"""The machine's per-user cache directory, the lock that guards what is in
it, and manifests: what a directory holds, with sizes and sha256.

The cache directory (``$APACHE_BEAM_DYNAMO_CACHE_DIR``, else
``$TMPDIR/abd-cache-<uid>``, mode 0700) is shared by every SDK process and
stack of the machine and user: staged models under ``models/``, start
caches under ``start-cache/``. A lock file per entry (``fcntl.flock``)
makes one process do the work while the others wait; the kernel releases
it if its holder dies.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from typing import Iterator, Optional

from apache_beam_dynamo.errors import StorageError

CACHE_DIR_ENV = 'APACHE_BEAM_DYNAMO_CACHE_DIR'
MANIFEST_VERSION = 1


def cache_root() -> str:
  """The per-user cache directory, created owner-only if missing."""
  root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
      tempfile.gettempdir(), f'abd-cache-{os.getuid()}')
  os.makedirs(root, mode=0o700, exist_ok=True)
  info = os.stat(root)
  if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o022:
    raise StorageError(
        f'The cache directory {root} belongs to another user or is writable '
        f'by others; remove it, or set {CACHE_DIR_ENV} to a directory of '
        'your own.')
  return root


def key_digest(*parts: str) -> str:
  """A short stable name for what ``parts`` identify."""
  return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:20]


@contextlib.contextmanager
def exclusive(lock_path: str) -> Iterator[None]:
  """Holds ``lock_path``'s lock; blocks while another process holds it."""
  os.makedirs(os.path.dirname(lock_path), mode=0o700, exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(8 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def local_files(directory: str) -> dict[str, int]:
  """Every regular file under ``directory`` (relative path: size), leaving
  out partial copies and files that vanish while we look."""
  found = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      if name.endswith('.partial'):
        continue
      path = os.path.join(parent, name)
      try:
        if not os.path.islink(path) and os.path.isfile(path):
          found[os.path.relpath(path, directory)] = os.path.getsize(path)
      except OSError:
        continue
  return found


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a published directory holds; written after its files, so a
  manifest that verifies proves the entry is complete.

  Attributes:
    files: relative path -> (size, sha256).
    writer: who published it (unique per publish).
    created: the writer's clock when it published (seconds since epoch);
      with ``writer``, orders entries: the first complete one wins.
    key: what the entry is for (informational).
    archive: (size, sha256) of the tar holding ``files``, when they were
      published as one (storage/archive.py).
  """
  files: dict[str, tuple[int, str]]
  writer: str
  created: float
  key: dict
  archive: Optional[tuple[int, str]] = None

  @property
  def order(self) -> tuple[float, str]:
    return (self.created, self.writer)

  @property
  def total_bytes(self) -> int:
    return sum(size for size, _ in self.files.values())

  def to_json(self) -> str:
    archive = None
    if self.archive is not None:
      archive = {'size': self.archive[0], 'sha256': self.archive[1]}
    return json.dumps({
        'version': MANIFEST_VERSION,
        'archive': archive,
        'writer': self.writer,
        'created': self.created,
        'key': self.key,
        'files': {p: {'size': s, 'sha256': h}
                  for p, (s, h) in sorted(self.files.items())},
    }, indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'Manifest':
    """Parses a manifest; raises StorageError when it is not one."""
    try:
      raw = json.loads(text)
      if raw.get('version') != MANIFEST_VERSION:
        raise ValueError(f"version {raw.get('version')!r}")
      files = {}
      for path, entry in raw['files'].items():
        if os.path.isabs(path) or '..' in path.split('/'):
          raise ValueError(f'bad path {path!r}')
        files[path] = _size_and_digest(entry)
      archive = raw.get('archive')
      return cls(files, str(raw['writer']), float(raw['created']),
                 dict(raw.get('key') or {}),
                 _size_and_digest(archive) if archive is not None else None)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise StorageError(f'not a valid manifest: {e}') from e


def _size_and_digest(entry: dict) -> tuple[int, str]:
  size, digest = entry['size'], entry['sha256']
  if (isinstance(size, bool) or not isinstance(size, int) or size < 0 or
      not isinstance(digest, str) or len(digest) != 64):
    raise ValueError(f'bad size or sha256 {entry!r}')
  return size, digest


def remove_tree(path: Optional[str]) -> None:
  if path:
    shutil.rmtree(path, ignore_errors=True)
