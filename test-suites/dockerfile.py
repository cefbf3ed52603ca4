"""docker/Dockerfile as data, for the tests that check the worker image
without Docker: build-arg defaults, COPY steps and the pip commands of its
RUN instructions.

Only the Dockerfile syntax the image uses is understood: line continuations,
comments, ``ARG NAME[=default]``, ``COPY src... dest`` and shell-form ``RUN``
whose commands are joined with ``&&``.
"""

import dataclasses
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / 'docker' / 'Dockerfile'
DOCKERIGNORE = REPO / '.dockerignore'

_VARIABLE = re.compile(r'\$\{(\w+)\}|\$(\w+)')


@dataclasses.dataclass(frozen=True)
class Instruction:
  keyword: str  # upper case: FROM, ARG, RUN...
  args: str  # continuation lines joined with a space
  line: int  # 1-based line of the keyword


@dataclasses.dataclass(frozen=True)
class Copy:
  sources: tuple[str, ...]  # relative to the build context (the repo root)
  dest: str  # absolute path in the image


@dataclasses.dataclass(frozen=True)
class Dockerfile:
  instructions: tuple[Instruction, ...]

  @property
  def build_args(self) -> dict[str, str]:
    """Each ARG's default (a re-declaration without one keeps it)."""
    defaults: dict[str, str] = {}
    for instruction in self.of('ARG'):
      name, has_default, default = instruction.args.partition('=')
      if has_default:
        defaults.setdefault(name.strip(), default.strip().strip('"'))
    return defaults

  @property
  def copies(self) -> list[Copy]:
    found = []
    for instruction in self.of('COPY'):
      words = [w for w in shlex.split(instruction.args) if not w.startswith('--')]
      found.append(Copy(tuple(words[:-1]), words[-1]))
    return found

  def pip_commands(self) -> list[list[str]]:
    """argv of every ``pip ...`` command in the RUN instructions, in order,
    with build args not yet expanded."""
    commands = []
    for instruction in self.of('RUN'):
      for command in instruction.args.split('&&'):
        argv = shlex.split(command)
        if argv and argv[0] == 'pip':
          commands.append(argv)
    return commands

  def of(self, keyword: str) -> list[Instruction]:
    return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> Dockerfile:
  instructions = []
  pending: list[str] = []
  start = 0
  for number, raw in enumerate(text.splitlines(), start=1):
    line = raw.strip()
    if not line or line.startswith('#'):
      continue  # Docker drops comment lines, even inside a continuation
    if not pending:
      start = number
    continued = line.endswith('\\')
    pending.append(line[:-1].strip() if continued else line)
    if not continued:
      keyword, _, args = ' '.join(pending).partition(' ')
      instructions.append(Instruction(keyword.upper(), args.strip(), start))
      pending = []
  return Dockerfile(tuple(instructions))


def load(path: Path = DOCKERFILE) -> Dockerfile:
  return parse(path.read_text(encoding='utf-8'))


def expand(word: str, variables: Mapping[str, str]) -> str:
  """``$NAME`` / ``${NAME}`` from ``variables``; an unknown name is an error,
  so a renamed build arg cannot silently become an empty string."""
  def value(match: re.Match) -> str:
    name = match.group(1) or match.group(2)
    if name not in variables:
      raise KeyError(f'{word!r} uses ${name}, which is not a build arg')
    return variables[name]

  return _VARIABLE.sub(value, word)
