"""Which ``RunInference(inference_args=...)`` keys a request accepts.

Checked when the pipeline is built, so a typo fails on the user's machine
with the list of valid keys, not as a 400 on every element of a job. The
same check applies to the parameters a dict element carries (beam/requests.py),
where a bad key fails that element alone.
"""

import difflib
import numbers
from typing import Any, Mapping, Optional

from apache_beam_dynamo.errors import ConfigError

_INT = (int, )
_NUMBER = (numbers.Real, )
_BOOL = (bool, )
_STR = (str, )
_LIST = (list, tuple)
_DICT = (dict, )

# OpenAI request parameters common to both routes.
_COMMON = {
    'frequency_penalty': _NUMBER,
    'logit_bias': _DICT,
    'max_tokens': _INT,
    'n': _INT,
    'presence_penalty': _NUMBER,
    'response_format': _DICT,
    'seed': _INT,
    'stop': _STR + _LIST,
    'temperature': _NUMBER,
    'top_p': _NUMBER,
    'user': _STR,
}
# vLLM sampling extras, accepted by vLLM's server and Dynamo's frontend.
_VLLM_EXTRAS = {
    'ignore_eos': _BOOL,
    'min_tokens': _INT,
    'top_k': _INT,
    'min_p': _NUMBER,
    'repetition_penalty': _NUMBER,
    'length_penalty': _NUMBER,
    'stop_token_ids': _LIST,
    'include_stop_str_in_output': _BOOL,
    'skip_special_tokens': _BOOL,
    'spaces_between_special_tokens': _BOOL,
    'truncate_prompt_tokens': _INT,
    'allowed_token_ids': _LIST,
    'prompt_logprobs': _INT,
    'add_special_tokens': _BOOL,
    'guided_json': _DICT + _STR,
    'guided_regex': _STR,
    'guided_choice': _LIST,
    'guided_grammar': _STR,
    'structured_outputs': _DICT,
    'priority': _INT,
}
# Dynamo's extension object (routing hints, annotations, ...), and the
# openai SDK's escape hatch, merged into the request body as it is there
# (apache-beam 2.77 users pass vLLM extras this way).
_DYNAMO_EXTRAS = {'nvext': _DICT, 'extra_body': _DICT}

COMPLETION_ARGS = {
    **_COMMON,
    'best_of': _INT,
    'echo': _BOOL,
    'logprobs': _INT,
    'suffix': _STR,
    **_VLLM_EXTRAS,
    **_DYNAMO_EXTRAS,
}
CHAT_ARGS = {
    **_COMMON,
    'logprobs': _BOOL,
    'top_logprobs': _INT,
    'max_completion_tokens': _INT,
    'tools': _LIST,
    'tool_choice': _STR + _DICT,
    'parallel_tool_calls': _BOOL,
    'reasoning_effort': _STR,
    'chat_template_kwargs': _DICT,
    'add_generation_prompt': _BOOL,
    'continue_final_message': _BOOL,
    'echo': _BOOL,
    **_VLLM_EXTRAS,
    **_DYNAMO_EXTRAS,
}

_SET_BY_HANDLER = {
    'model': 'the handler sets it to the served model name',
    'prompt': 'the prompt is the input element',
    'messages': 'the messages are the input element',
    'stream': 'the handler needs whole responses, not streams',
    'stream_options': 'the handler needs whole responses, not streams',
}
_POSITIVE = ('max_tokens', 'max_completion_tokens', 'n', 'best_of', 'top_logprobs')


def validate(
    inference_args: Optional[Mapping[str, Any]],
    accepted: Mapping[str, tuple],
    *,
    use_dynamo: bool,
    mocker: bool = False) -> None:
  """Raises ConfigError naming the bad key and listing the accepted ones."""
  if mocker and not (inference_args or {}).get('max_tokens') and not (
      inference_args or {}).get('max_completion_tokens'):
    raise ConfigError(
        "engine='mocker' needs inference_args={'max_tokens': N}: the mocker "
        'generates exactly N tokens and rejects requests without a limit.')
  if inference_args is None:
    return
  if not isinstance(inference_args, Mapping):
    raise ConfigError(
        'inference_args must be a dict, got '
        f'{type(inference_args).__name__}.')
  problem = find_problem(
      inference_args, accepted, use_dynamo=use_dynamo, where='inference_args')
  if problem:
    raise ConfigError(problem)


def find_problem(
    args: Mapping[str, Any],
    accepted: Mapping[str, tuple],
    *,
    use_dynamo: bool,
    where: str) -> Optional[str]:
  """What is wrong with request parameters ``args`` (None if nothing).

  ``where`` names them in the message: ``inference_args`` when the pipeline
  is built, ``element`` for the parameters one input element carries.
  """
  for key, value in args.items():
    if key in _SET_BY_HANDLER:
      return f'{where} may not set {key!r}: {_SET_BY_HANDLER[key]}.'
    if key not in accepted:
      close = difflib.get_close_matches(str(key), accepted, n=1)
      hint = f' Did you mean {close[0]!r}?' if close else ''
      what = 'inference arg' if where == 'inference_args' else (
          f'request parameter in the {where}:')
      return (f'Unknown {what} {key!r}.{hint} Accepted: '
              f'{", ".join(sorted(accepted))}.')
    types = accepted[key]
    if value is None:
      continue
    wrong = not isinstance(value, types) or (
        isinstance(value, bool) and bool not in types)
    if wrong:
      names = ' or '.join(t.__name__ for t in types)
      return (f'{where}[{key!r}] must be {names}, got '
              f'{type(value).__name__} {value!r}.')
    if key in _POSITIVE and value < 1:
      return f'{where}[{key!r}] must be >= 1, got {value}.'
    if key == 'extra_body':
      for inner in value:
        if inner in _SET_BY_HANDLER:
          return (f"{where}['extra_body'] may not set {inner!r}: "
                  f'{_SET_BY_HANDLER[inner]}.')
  n = args.get('n') or 1
  best_of = args.get('best_of') or 1
  if use_dynamo and (n > 1 or best_of > 1):
    return (
        f'{where} n > 1 (or best_of > 1) is not supported through '
        'Dynamo: its frontend returns a single choice whatever n is, so the '
        'extra samples would be lost silently. Duplicate the input elements '
        'instead, or use use_dynamo=False (native vLLM honours n).')
  return None
