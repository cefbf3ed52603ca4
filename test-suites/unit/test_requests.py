"""Elements as request bodies: strings, message lists, and dicts that carry
request parameters of their own."""

import json

import pytest

from apache_beam_dynamo import OpenAIChatMessage
from apache_beam_dynamo.beam import requests
from apache_beam_dynamo.errors import InvalidElementError


def completion(element, args=None, **kw):
  return json.loads(requests.completion_body(element, 'm', args or {}, **kw))


def chat(element, args=None, **kw):
  return json.loads(requests.chat_body(element, 'm', args or {}, **kw))


def test_a_dict_element_overrides_inference_args():
  args = {'max_tokens': 4, 'temperature': 0.5}
  assert completion({'prompt': 'p', 'max_tokens': 9}, args) == {
      'model': 'm', 'prompt': 'p', 'max_tokens': 9, 'temperature': 0.5}
  assert completion({'prompt': 'p'}, args) == completion('p', args)


def test_a_dict_element_may_carry_structured_output_parameters():
  schema = {'type': 'object', 'properties': {'a': {'type': 'integer'}}}
  body = completion({'prompt': 'p', 'guided_json': schema,
                     'response_format': {'type': 'json_object'}})
  assert body['guided_json'] == schema
  assert body['response_format'] == {'type': 'json_object'}


def test_an_element_key_beats_the_same_key_in_extra_body():
  args = {'extra_body': {'ignore_eos': True, 'top_k': 2}}
  body = completion({'prompt': 'p', 'ignore_eos': False}, args)
  assert body['ignore_eos'] is False and body['top_k'] == 2
  body = completion({'prompt': 'p', 'extra_body': {'top_k': 5}}, args)
  assert body['ignore_eos'] is True and body['top_k'] == 5


def test_chat_dict_elements_take_message_objects_or_dicts():
  expected = [{'role': 'system', 'content': 's'}, {'role': 'user', 'content': 'u'}]
  as_dicts = chat({'messages': expected, 'max_completion_tokens': 3},
                  {'max_tokens': 8})
  as_objects = chat({'messages': [OpenAIChatMessage('system', 's'),
                                  OpenAIChatMessage('user', 'u')],
                     'max_completion_tokens': 3}, {'max_tokens': 8})
  assert as_dicts == as_objects == {
      'model': 'm', 'messages': expected, 'max_tokens': 8,
      'max_completion_tokens': 3}


@pytest.mark.parametrize('element, message', [
    ({'prompt': 'p', 'max_token': 3}, "'max_token'.*Did you mean 'max_tokens'"),
    ({'prompt': 'p', 'max_tokens': '3'}, r"element\['max_tokens'\] must be int"),
    ({'prompt': 'p', 'max_tokens': 0}, r"element\['max_tokens'\] must be >= 1"),
    ({'prompt': 'p', 'temperature': 'hot'}, r"element\['temperature'\]"),
    ({'prompt': 'p', 'model': 'x'}, "element may not set 'model'"),
    ({'prompt': 'p', 'stream': True}, "element may not set 'stream'"),
    ({'prompt': 'p', 'n': 2}, 'n > 1'),
    ({'prompt': 'p', 'top_logprobs': 2}, "'top_logprobs'"),  # chat only
    ({'text': 'p'}, "needs a 'prompt' key; it has 'text'"),
    ({'prompt': ''}, 'must not be empty'),
    ({'prompt': 3}, 'must be a str, got int'),
    ({'messages': [{'role': 'user', 'content': 'x'}]}, 'not "messages"'),
])
def test_a_bad_completion_element_names_its_key(element, message):
  with pytest.raises(InvalidElementError, match=message):
    completion(element, {'max_tokens': 4})


@pytest.mark.parametrize('element, message', [
    ({'messages': [{'role': 'user', 'content': 'x'}], 'logprobs': 3},
     r"element\['logprobs'\] must be bool"),
    ({'messages': [{'role': 'user', 'content': 'x'}], 'echo_all': True},
     "'echo_all'"),
    ({'messages': []}, 'at least one message'),
    ({'messages': 'hi'}, 'got str'),
    ({'messages': [{'role': 'robot', 'content': 'x'}]}, 'role must be one of'),
    ({'prompt': 'hi'}, "needs a 'messages' key"),
    ({'role': 'user', 'content': 'hi'}, "needs a 'messages' key"),
])
def test_a_bad_chat_element_names_its_key(element, message):
  with pytest.raises(InvalidElementError, match=message):
    chat(element, {'max_tokens': 4})


def test_n_above_one_per_element_is_fine_with_native_vllm():
  assert completion({'prompt': 'p', 'n': 2}, use_dynamo=False)['n'] == 2
