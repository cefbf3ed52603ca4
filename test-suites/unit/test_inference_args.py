"""inference_args are checked when the pipeline is built."""

import json

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference

from apache_beam_dynamo import VLLMChatModelHandler, VLLMCompletionsModelHandler
from apache_beam_dynamo.beam import requests
from apache_beam_dynamo.errors import ConfigError


@pytest.fixture
def completions():
  return VLLMCompletionsModelHandler('m', use_dynamo=True)


@pytest.fixture
def chat():
  return VLLMChatModelHandler('m', use_dynamo=True)


def test_openai_vllm_and_dynamo_args_are_accepted(completions, chat):
  completions.validate_inference_args({
      'max_tokens': 16, 'temperature': 0.0, 'top_p': 1, 'stop': ['\n'],
      'seed': 1, 'logprobs': 2, 'ignore_eos': True, 'min_tokens': 4,
      'top_k': 5, 'nvext': {'annotations': []}, 'n': 1,
  })
  chat.validate_inference_args({
      'max_tokens': 16, 'logprobs': True, 'top_logprobs': 2,
      'max_completion_tokens': 8, 'chat_template_kwargs': {'x': 1},
  })
  completions.validate_inference_args(None)


def test_unknown_key_is_named_with_a_suggestion_and_the_accepted_list(
    completions):
  with pytest.raises(ConfigError) as error:
    completions.validate_inference_args({'max_token': 16})
  message = str(error.value)
  assert "'max_token'" in message
  assert "Did you mean 'max_tokens'?" in message
  assert 'temperature' in message and 'ignore_eos' in message


@pytest.mark.parametrize('args, message', [
    ({'max_tokens': '16'}, "must be int, got str"),
    ({'max_tokens': 0}, 'must be >= 1'),
    ({'temperature': 'hot'}, 'must be Real'),
    ({'ignore_eos': 1}, 'must be bool'),
    ({'max_tokens': True}, 'must be int, got bool'),
    ({'model': 'x'}, 'served model name'),
    ({'prompt': 'x'}, 'input element'),
    ({'stream': True}, 'whole responses'),
])
def test_wrong_values(completions, args, message):
  with pytest.raises(ConfigError, match=message):
    completions.validate_inference_args(args)


def test_chat_logprobs_is_a_bool(chat):
  with pytest.raises(ConfigError, match='must be bool'):
    chat.validate_inference_args({'logprobs': 3})


def test_n_above_one_is_rejected_through_dynamo(completions):
  # Dynamo 1.4's frontend silently returns one choice for n > 1.
  with pytest.raises(ConfigError, match='n > 1'):
    completions.validate_inference_args({'n': 2})


def test_n_above_one_is_fine_with_native_vllm():
  VLLMCompletionsModelHandler('m').validate_inference_args({'n': 2})


def test_not_a_dict(completions):
  with pytest.raises(ConfigError, match='must be a dict'):
    completions.validate_inference_args([('max_tokens', 1)])


def test_bad_args_fail_when_the_pipeline_is_built(completions):
  pipeline = beam.Pipeline()
  with pytest.raises(ConfigError, match='Unknown inference arg'):
    _ = (pipeline | beam.Create(['x'])
         | RunInference(completions, inference_args={'bogus': 1}))


def test_mocker_needs_max_tokens(tiny_model):
  handler = VLLMCompletionsModelHandler(tiny_model, use_dynamo=True, engine='mocker')
  with pytest.raises(ConfigError, match="needs inference_args={'max_tokens'"):
    handler.validate_inference_args(None)
  handler.validate_inference_args({'max_tokens': 3})


def test_extra_body_is_accepted_as_the_openai_sdk_does(completions):
  completions.validate_inference_args(
      {'max_tokens': 4, 'extra_body': {'ignore_eos': True, 'top_k': 2}})
  with pytest.raises(ConfigError, match="extra_body'] may not set 'model'"):
    completions.validate_inference_args({'extra_body': {'model': 'x'}})
  body = json.loads(requests.completion_body(
      'p', 'm', {'max_tokens': 4, 'extra_body': {'ignore_eos': True}}))
  assert body == {'model': 'm', 'prompt': 'p', 'max_tokens': 4,
                  'ignore_eos': True}
