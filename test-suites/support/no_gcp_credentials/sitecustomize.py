"""Test support, never installed: Beam finds no Google credentials.

Put on the ``PYTHONPATH`` of processes that a test points at the local GCS
emulator (``STORAGE_EMULATOR_HOST``). Without it, Beam's first GCS call in
each process looks for Google credentials: about 25 s of retries when there
are none, a 120 s hang when some are configured. With it, that lookup
returns "none", so Beam's GCS client connects anonymously, to the emulator.

The change waits for ``apache_beam.internal.gcp.auth`` to be imported, so
processes that never use Beam (etcd, the Dynamo frontend and engine) do not
import it.
"""

import importlib.abc
import sys

_AUTH = 'apache_beam.internal.gcp.auth'


def _no_credentials(module) -> None:
  module._Credentials._credentials_init = True
  module._Credentials._credentials = None


class _AfterAuthImport(importlib.abc.MetaPathFinder):
  """Finds Beam's auth module as the other finders do, then patches it."""
  def find_spec(self, name, path, target=None):
    if name != _AUTH:
      return None
    sys.meta_path.remove(self)  # once is enough, and no recursion
    for finder in sys.meta_path:
      find = getattr(finder, 'find_spec', None)
      spec = find(name, path, target) if find else None
      if spec is not None and spec.loader is not None:
        exec_module = spec.loader.exec_module

        def exec_then_patch(module, exec_module=exec_module):
          exec_module(module)
          _no_credentials(module)

        spec.loader.exec_module = exec_then_patch
        return spec
    return None


if _AUTH in sys.modules:
  _no_credentials(sys.modules[_AUTH])
else:
  sys.meta_path.insert(0, _AfterAuthImport())
