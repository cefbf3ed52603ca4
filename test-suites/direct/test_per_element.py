"""Elements that carry their own request parameters, in real DirectRunner
pipelines on the mocker engine (which returns exactly max_tokens tokens, so
usage.completion_tokens shows which max_tokens a request got)."""

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import OpenAIChatMessage

from conftest import counter, run_pipeline


def _tokens(result):
  return result.inference.usage.completion_tokens


def test_completion_rows_override_inference_args(completions_handler,
                                                 no_leftovers):
  rows = [{'prompt': f'p{i}', 'max_tokens': 1 + i % 9} for i in range(200)]
  plain = [f'plain {i}' for i in range(50)]

  def pipeline(p):
    results = (
        p | beam.Create(rows + plain)
        | RunInference(completions_handler(), inference_args={'max_tokens': 4})
        | beam.Map(lambda r: (
            r.example['prompt'] if isinstance(r.example, dict) else r.example,
            _tokens(r), type(r.example).__name__)))
    assert_that(
        results,
        equal_to([(r['prompt'], r['max_tokens'], 'dict') for r in rows] +
                 [(x, 4, 'str') for x in plain]))

  result = run_pipeline(pipeline)
  assert counter(result, 'completion_tokens') == sum(
      r['max_tokens'] for r in rows) + 4 * len(plain)


def test_chat_rows_with_message_objects_or_dicts(chat_handler, no_leftovers):
  rows = [{
      'messages': [{'role': 'user', 'content': f'q{i}'}], 'max_tokens': 2 + i % 5
  } for i in range(60)] + [{
      'messages': [OpenAIChatMessage('system', 'brief'),
                   OpenAIChatMessage('user', f'o{i}')],
      'max_completion_tokens': 3, 'seed': i
  } for i in range(20)]
  plain = [[OpenAIChatMessage('user', 'plain')]] * 10

  def last_content(example):
    messages = example['messages'] if isinstance(example, dict) else example
    last = messages[-1]
    return last['content'] if isinstance(last, dict) else last.content

  def expected(row):
    return (last_content(row), row.get('max_tokens', 3))

  def pipeline(p):
    results = (
        p | beam.Create(rows + plain)
        | RunInference(chat_handler(), inference_args={'max_tokens': 6})
        | beam.Map(lambda r: (last_content(r.example), _tokens(r))))
    assert_that(
        results,
        equal_to([expected(r) for r in rows] + [('plain', 6)] * len(plain)))

  run_pipeline(pipeline)


def test_rows_with_bad_keys_are_dead_letters_alone(completions_handler,
                                                   chat_handler, no_leftovers):
  good = [{'prompt': f'g{i}', 'max_tokens': 3} for i in range(30)]
  bad = [
      {'prompt': 'typo', 'max_token': 3},
      {'prompt': 'string', 'max_tokens': '3'},
      {'prompt': 'zero', 'max_tokens': 0},
      {'prompt': 'model', 'model': 'other'},
      {'text': 'no prompt'},
  ]
  bad_chats = [
      {'messages': [{'role': 'user', 'content': 'x'}], 'logprobs': 5},
      {'messages': [{'role': 'user', 'content': 'y'}], 'n': 2},
  ]

  def failure(pair):
    result, (error_type, message, _) = pair
    return result.example, error_type.__name__, message

  def pipeline(p):
    main, dead = (
        p | beam.Create(good + bad)
        | RunInference(completions_handler(), inference_args={'max_tokens': 2})
        .with_exception_handling())
    assert_that(main | beam.Map(_tokens), equal_to([3] * len(good)))
    failed = dead.failed_postprocessing[0] | beam.Map(failure)
    keys = ["'max_token'", "element['max_tokens'] must be int",
            "element['max_tokens'] must be >= 1", "may not set 'model'",
            "needs a 'prompt' key"]
    assert_that(
        failed | beam.Map(
            lambda f: (f[0], f[1], [k for k in keys if k in f[2]])),
        equal_to([(b, 'InvalidElementError', [k]) for b, k in zip(bad, keys)]),
        label='Dead')
    assert_that(dead.failed_inferences, equal_to([]), label='NoBatchFailure')

    chats, chat_dead = (
        p | 'Chats' >> beam.Create(bad_chats + [
            {'messages': [{'role': 'user', 'content': 'ok'}]}])
        | 'Chat' >> RunInference(
            chat_handler(), inference_args={'max_tokens': 2})
        .with_exception_handling())
    assert_that(chats | 'ChatTokens' >> beam.Map(_tokens), equal_to([2]),
                label='ChatMain')
    assert_that(
        chat_dead.failed_postprocessing[0] | 'ChatFailure' >> beam.Map(
            lambda pair: [k for k in ("element['logprobs'] must be bool",
                                      'element n > 1') if k in pair[1][1]]),
        equal_to([["element['logprobs'] must be bool"], ['element n > 1']]),
        label='ChatDead')

  result = run_pipeline(pipeline)
  assert counter(result, 'request_failures') == 0  # none reached the server
