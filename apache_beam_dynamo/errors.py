"""Exceptions raised by apache_beam_dynamo.

Every message says what went wrong and what to do about it. Errors about a
child process carry its exit code and the tail of its log.
"""

from typing import Optional, Sequence


class DynamoHandlerError(RuntimeError):
  """Base class for errors raised while running the embedded stack."""


class ConfigError(DynamoHandlerError, ValueError):
  """A handler option is invalid; raised when the pipeline is built."""


class HTTPError(DynamoHandlerError):
  """An HTTP exchange with the stack did not complete (refused, reset,
  closed, malformed, timed out)."""


class NoFreePortError(DynamoHandlerError):
  """No free loopback port in the allowed range."""


class ComponentFailure(DynamoHandlerError):
  """A stack component (etcd, frontend, engine) exited or stopped answering."""
  def __init__(
      self,
      component: str,
      reason: str,
      *,
      exit_code: Optional[int] = None,
      log_tail: Sequence[str] = (),
      first_error: Sequence[str] = (),
      remedy: str = ''):
    self.component = component
    self.reason = reason
    self.exit_code = exit_code
    self.log_tail = tuple(log_tail)
    self.first_error = tuple(first_error)
    self.remedy = remedy
    super().__init__(self._render())

  def _render(self) -> str:
    parts = [f'{self.component}: {self.reason}']
    if self.exit_code is not None:
      parts.append(f'(exit code {self.exit_code})')
    text = ' '.join(parts) + '.'
    if self.remedy:
      text += ' ' + self.remedy
    if self.first_error:
      text += (
          f'\nThe {self.component} log from its first error on:\n' +
          '\n'.join('  | ' + line for line in self.first_error) + '\n  | ...')
    if self.log_tail:
      text += (
          f'\nLast {len(self.log_tail)} lines of the {self.component} log:\n' +
          '\n'.join('  | ' + line for line in self.log_tail))
    return text


class StackStartupError(DynamoHandlerError):
  """The stack did not become ready; the message names the failing part."""


class StackUnavailableError(DynamoHandlerError):
  """The stack failed for good: its restart budget is spent or it was stopped."""


class RequestFailedError(DynamoHandlerError):
  """The server rejected one element's request; retrying cannot help.

  Raised for that element only (for example a prompt longer than the model's
  context), so ``RunInference(...).with_exception_handling()`` can route it to
  the dead-letter output while the rest of its batch succeeds.
  """
  def __init__(self, status: int, message: str):
    self.status = status
    self.message = message
    super().__init__(f'HTTP {status}: {message}')


class StorageError(DynamoHandlerError):
  """A file on a Beam filesystem (a staged model, a start cache entry) is
  missing, unreadable or not what its listing or manifest says."""


class InvalidElementError(DynamoHandlerError, ValueError):
  """An input element cannot be turned into a request (wrong type, empty)."""
