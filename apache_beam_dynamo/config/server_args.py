"""Engine and frontend flags as users give them (``vllm_server_kwargs``,
``dynamo_frontend_kwargs``): normalized to flag pairs, and checked against
the flags the stack manages itself."""

from typing import Any, Mapping, Optional

from apache_beam_dynamo.errors import ConfigError

ServerArgs = tuple[tuple[str, Optional[str]], ...]

# Flags that carry the served model name, per engine program.
SERVED_NAME_FLAGS = ('served-model-name', 'model-name')

# Flags the stack owns: ports, hosts and discovery settings that keep every
# socket on loopback and every stack in its own namespace. A user value equal
# to ours is accepted (apache-beam 2.77 users often pass the defaults).
FRONTEND_MANAGED = {
    'http-host': None,
    'http-port': None,
    'namespace': None,
    'discovery-backend': 'etcd',
    'request-plane': 'tcp',
    'event-plane': 'zmq',
}
DYNAMO_ENGINE_MANAGED = {
    'tensor-parallel-size': None,
    'model': None,
    'model-path': None,
    'namespace': None,
    'discovery-backend': 'etcd',
    'request-plane': 'tcp',
    'event-plane': 'zmq',
}
NATIVE_MANAGED = {
    'model': None, 'host': None, 'port': None, 'tensor-parallel-size': None
}


def normalize_server_kwargs(
    kwargs: Optional[Mapping[str, Any]], what: str) -> ServerArgs:
  """Turns ``{'max_num_seqs': 32, 'enforce-eager': None}`` into flag pairs.

  Keys may be written with dashes or underscores and with or without leading
  dashes; values are strings, numbers or None for a bare flag.
  """
  if kwargs is None:
    return ()
  if not isinstance(kwargs, Mapping):
    raise ConfigError(
        f'{what} must be a dict of flag name to value, got '
        f'{type(kwargs).__name__}.')
  pairs = []
  for key, value in kwargs.items():
    if not isinstance(key, str) or not key.strip('-'):
      raise ConfigError(f'{what}: flag names must be non-empty strings, '
                        f'got {key!r}.')
    flag = key.strip().lstrip('-').replace('_', '-')
    if value is None or value is True:
      pairs.append((flag, None))
    elif value is False:
      raise ConfigError(
          f'{what}[{key!r}] is False. To turn a flag off pass its negative '
          f"form, e.g. {{'no-{flag}': None}}; to leave it out, omit the key.")
    elif isinstance(value, (str, int, float)):
      pairs.append((flag, str(value)))
    else:
      raise ConfigError(
          f'{what}[{key!r}] must be a string, a number or None, got '
          f'{type(value).__name__}.')
  return tuple(pairs)


def reject_managed(args: ServerArgs, managed: Mapping[str, Optional[str]],
                    what: str) -> None:
  for flag, value in args:
    if flag in managed and (managed[flag] is None or value != managed[flag]):
      raise ConfigError(
          f'{what} sets --{flag}, which apache_beam_dynamo manages itself (it '
          'keeps every socket on 127.0.0.1 and each stack in its own '
          f'namespace). Remove {flag!r} from {what}.')
