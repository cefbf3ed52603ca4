"""A directory as one uncompressed tar file, and back, checked file by file.

A compile cache is hundreds of small files (Triton keeps several per
kernel); one object moves them in one request instead of hundreds, which
is what makes restoring it cheaper than recompiling. Packing records each
file's size and sha256 (the manifest's ``files``); unpacking takes only
those files, as regular files under the target, and checks each against
its record.
"""

import hashlib
import io
import os
import tarfile

from apache_beam_dynamo.errors import StorageError
from apache_beam_dynamo.storage import local


def pack(source: str, archive: str) -> dict[str, tuple[int, str]]:
  """Writes every regular file under ``source`` into the tar ``archive``;
  returns relative path -> (size, sha256) of what went in. A file that
  vanishes meanwhile (an engine's temporary file) is left out."""
  members: dict[str, tuple[int, str]] = {}
  with tarfile.open(archive, 'w', format=tarfile.PAX_FORMAT) as tar:
    for relpath in sorted(local.local_files(source)):
      try:
        with open(os.path.join(source, relpath), 'rb') as f:
          data = f.read()
      except OSError:
        continue
      info = tarfile.TarInfo(relpath)
      info.size = len(data)
      info.mode = 0o600
      tar.addfile(info, io.BytesIO(data))
      members[relpath] = (len(data), hashlib.sha256(data).hexdigest())
  return members


def unpack(archive: str, members: dict[str, tuple[int, str]],
           target: str) -> None:
  """Extracts exactly ``members`` from ``archive`` into the directory
  ``target`` (created), each checked; raises StorageError otherwise."""
  os.makedirs(target, mode=0o700, exist_ok=True)
  seen = set()
  try:
    with tarfile.open(archive, 'r:') as tar:
      for info in tar:
        if info.name not in members:
          raise StorageError(f'the archive holds {info.name!r}, which its '
                             'manifest does not list')
        if not info.isreg():
          raise StorageError(f'{info.name!r} in the archive is not a file')
        size, digest = members[info.name]
        data = tar.extractfile(info).read()
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
          raise StorageError(f'{info.name!r} in the archive does not match '
                             'its manifest (size or sha256)')
        path = os.path.join(target, info.name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, 'wb') as f:
          f.write(data)
        seen.add(info.name)
  except (tarfile.TarError, OSError, EOFError) as e:
    raise StorageError(f'unreadable archive: {e}') from e
  missing = set(members) - seen
  if missing:
    raise StorageError(f'the archive lacks {len(missing)} files its manifest '
                       f'lists (e.g. {sorted(missing)[0]!r})')
