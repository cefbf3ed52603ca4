"""Free TCP ports on 127.0.0.1 for the stack's listeners.

Ports come from a range below the kernel's ephemeral range, so an outgoing
connection can't take a port between our check and the child's bind, and so
that the engine's system port fits Dynamo's signed 16-bit parse (<= 32767).
``APACHE_BEAM_DYNAMO_PORT_RANGE=LOW-HIGH`` narrows the range.
"""

import errno
import os
import random
import socket

from apache_beam_dynamo.errors import DynamoHandlerError, NoFreePortError

PORT_RANGE_ENV = 'APACHE_BEAM_DYNAMO_PORT_RANGE'
_DEFAULT_RANGE = (20000, 32767)
_MAX_PROBES = 400


def port_range() -> tuple[int, int]:
  spec = os.environ.get(PORT_RANGE_ENV)
  if not spec:
    return _DEFAULT_RANGE
  try:
    low, high = (int(part) for part in spec.split('-'))
  except ValueError:
    raise DynamoHandlerError(
        f'{PORT_RANGE_ENV}={spec!r} is not of the form LOW-HIGH.') from None
  if not 1024 <= low <= high <= 65535:
    raise DynamoHandlerError(
        f'{PORT_RANGE_ENV}={spec!r} must satisfy 1024 <= LOW <= HIGH <= 65535.')
  return low, high


def is_free(port: int) -> bool:
  """Whether something could listen on 127.0.0.1:port right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    try:
      probe.bind(('127.0.0.1', port))
    except OSError as e:
      if e.errno in (errno.EADDRINUSE, errno.EACCES):
        return False
      raise
  return True


def pick_ports(count: int, *, exclude: frozenset[int] = frozenset()) -> list[int]:
  """Returns ``count`` distinct free loopback ports from the port range."""
  low, high = port_range()
  rng = random.SystemRandom()
  chosen: list[int] = []
  for _ in range(_MAX_PROBES):
    if len(chosen) == count:
      return chosen
    port = rng.randint(low, high)
    if port in chosen or port in exclude:
      continue
    if is_free(port):
      chosen.append(port)
  if len(chosen) == count:
    return chosen
  raise NoFreePortError(
      f'No free TCP port on 127.0.0.1 in {low}-{high} after {_MAX_PROBES} '
      f'tries (needed {count}). Free some ports, or point {PORT_RANGE_ENV} '
      'at a range with unused ports.')
