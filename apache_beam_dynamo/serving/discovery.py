"""Dynamo's worker registrations in the stack's etcd, and their cleanup.

A worker registers its endpoints under ``v1/instances/<namespace>/`` with a
lease that expires about 10 s after the worker dies. Until then the frontend
keeps routing requests to the dead worker, which fail. When the supervisor
replaces a dead engine it first revokes the leases of registrations whose
request-plane address no longer accepts connections, so the frontend drops
them at once. Uses etcd's JSON gateway through net/transport.py.
"""

import base64
import json
import logging
import socket

from apache_beam_dynamo.errors import HTTPError
from apache_beam_dynamo.net import transport

_LOGGER = logging.getLogger(__name__)


def _b64(text: str) -> str:
  return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
  return _b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _post(etcd_url: str, path: str, body: dict) -> dict:
  status, reply = transport.request(
      etcd_url.rstrip('/') + path, 'POST', json.dumps(body).encode(), 3.0)
  if status != 200:
    raise HTTPError(f'etcd {path}: HTTP {status}: {reply[:200]!r}')
  return json.loads(reply)


def instances(etcd_url: str, namespace: str) -> list[tuple[str, str]]:
  """(lease id, request-plane host:port) of each registered endpoint."""
  prefix = f'v1/instances/{namespace}/'
  reply = _post(etcd_url, '/v3/kv/range', {
      'key': _b64(prefix), 'range_end': _prefix_end(prefix)
  })
  found = []
  for kv in reply.get('kvs', []):
    try:
      value = json.loads(base64.b64decode(kv['value']))
      address = value['transport']['tcp'].split('/')[0]
    except (KeyError, ValueError, AttributeError):
      continue
    found.append((kv.get('lease', '0'), address))
  return found


def accepts_connections(address: str) -> bool:
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host, int(port)), timeout=1.0):
      return True
  except OSError:
    return False


def revoke_dead(etcd_url: str, namespace: str) -> int:
  """Revokes the leases of registrations nobody listens behind any more.

  Returns how many leases were revoked; a failure to talk to etcd is
  logged and ignored (the leases then expire on their own).
  """
  try:
    dead = {
        lease for lease, address in instances(etcd_url, namespace)
        if lease != '0' and not accepts_connections(address)
    }
    for lease in dead:
      _post(etcd_url, '/v3/lease/revoke', {'ID': lease})
  except (HTTPError, OSError, ValueError) as e:
    _LOGGER.warning('Could not clean up dead worker registrations: %s', e)
    return 0
  if dead:
    _LOGGER.info('Revoked %d registration(s) of dead workers.', len(dead))
  return len(dead)
