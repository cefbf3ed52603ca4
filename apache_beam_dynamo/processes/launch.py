"""A child program as data: its component name, argv and full environment.

Built only by :mod:`apache_beam_dynamo.serving.commands`; run by
:class:`apache_beam_dynamo.processes.process.ManagedProcess`.
"""

import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Launch:
  component: str
  argv: tuple[str, ...]
  env: tuple[tuple[str, str], ...]

  @property
  def environ(self) -> dict[str, str]:
    return dict(self.env)

  @staticmethod
  def of(component: str, argv, env: Mapping[str, str]) -> 'Launch':
    return Launch(component, tuple(argv), tuple(sorted(env.items())))
