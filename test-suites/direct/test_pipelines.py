"""Real DirectRunner pipelines through the handlers, on the mocker engine."""


import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.util import assert_that, equal_to

from apache_beam_dynamo import OpenAIChatMessage, raise_failed_element
from apache_beam_dynamo.errors import InvalidElementError

from conftest import (
    ProcessWatch, counter, pipeline_script, run_pipeline, run_python,
    stack_leftovers)

# Renders as "[role] content\n" per message then "[assistant] ": with the tiny
# model's byte-level tokenizer every byte is one token, so the prompt token
# count tells whether the engine used this template.
CUSTOM_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "[assistant] ")


def custom_template_tokens(messages):
  rendered = ''.join(f'[{m.role}] {m.content}\n' for m in messages)
  return len((rendered + '[assistant] ').encode())


def test_500_completions(completions_handler, no_leftovers):
  prompts = [f'prompt number {i}' for i in range(500)]
  handler = completions_handler()

  def pipeline(p):
    results = (
        p | beam.Create(prompts)
        | RunInference(handler, inference_args={'max_tokens': 12})
        | beam.Map(lambda r: (
            r.example, r.inference.usage.completion_tokens,
            r.inference.choices[0].finish_reason, r.model_id,
            type(r.inference).__name__)))
    assert_that(
        results,
        equal_to([(x, 12, 'length', handler.stack_config.served_model_name,
                   'Completion') for x in prompts]))

  result = run_pipeline(pipeline)
  assert counter(result, 'completion_tokens') == 500 * 12
  assert counter(result, 'requests') == 500
  assert counter(result, 'num_inferences') == 500


def test_500_chats_with_a_chat_template(chat_handler, tmp_path, no_leftovers):
  template = tmp_path / 'template.jinja'
  template.write_text(CUSTOM_TEMPLATE)
  conversations = [[
      OpenAIChatMessage('system', 'be brief'),
      OpenAIChatMessage('user', f'question {i}' + '?' * (i % 7)),
  ] for i in range(500)]

  def pipeline(p):
    results = (
        p | beam.Create(conversations)
        | RunInference(chat_handler(str(template)),
                       inference_args={'max_tokens': 6})
        | beam.Map(lambda r: (
            r.example[1].content, r.inference.usage.prompt_tokens,
            r.inference.usage.completion_tokens, r.inference.object)))
    assert_that(
        results,
        equal_to([(c[1].content, custom_template_tokens(c), 6,
                   'chat.completion') for c in conversations]))

  run_pipeline(pipeline)


def test_chat_uses_the_models_own_template_by_default(chat_handler, no_leftovers):
  messages = [OpenAIChatMessage('user', 'hi')]
  # ChatML: 3 special tokens + the bytes of "user\nhi", "\n", "assistant\n".
  expected = 3 + len('user\nhi') + 1 + len('assistant\n')

  def pipeline(p):
    results = (
        p | beam.Create([messages])
        | RunInference(chat_handler(), inference_args={'max_tokens': 2})
        | beam.Map(lambda r: r.inference.usage.prompt_tokens))
    assert_that(results, equal_to([expected]))

  run_pipeline(pipeline)


def test_inference_args_reach_the_engine(completions_handler, no_leftovers):
  handler = completions_handler()

  def pipeline(p):
    prompts = p | beam.Create(['a', 'bb', 'ccc'])
    for max_tokens in (1, 7, 33):
      tokens = (
          prompts
          | f'Infer{max_tokens}' >> RunInference(
              handler,
              inference_args={
                  'max_tokens': max_tokens, 'temperature': 0.5, 'seed': 3,
                  'ignore_eos': True, 'top_k': 4
              })
          | f'Tokens{max_tokens}' >> beam.Map(
              lambda r: r.inference.usage.completion_tokens))
      assert_that(tokens, equal_to([max_tokens] * 3), label=f'Check{max_tokens}')

  run_pipeline(pipeline)


def test_hundreds_of_prompts_in_many_small_batches(completions_handler,
                                                   no_leftovers):
  handler = completions_handler(max_batch_size=7)

  def pipeline(p):
    results = (
        p | beam.Create(list(range(300)))
        | beam.Map(lambda i: f'p{i}')
        | RunInference(handler, inference_args={'max_tokens': 3})
        | beam.Map(lambda r: r.example))
    assert_that(results, equal_to([f'p{i}' for i in range(300)]))

  result = run_pipeline(pipeline)
  batches = result.metrics().query(
      MetricsFilter().with_name('inference_batch_latency_micro_secs')
  )['distributions']
  assert sum(d.committed.count for d in batches) >= 300 // 7


def test_two_handlers_in_one_pipeline(completions_handler, chat_handler,
                                      tmp_path, no_leftovers):
  template = tmp_path / 'template.jinja'
  template.write_text(CUSTOM_TEMPLATE)

  def pipeline(p):
    completions = (
        p | 'Prompts' >> beam.Create([f'p{i}' for i in range(50)])
        | 'Complete' >> RunInference(
            completions_handler(), inference_args={'max_tokens': 2})
        | 'Text' >> beam.Map(lambda r: r.inference.object))
    chats = (
        p | 'Chats' >> beam.Create(
            [[OpenAIChatMessage('user', f'q{i}')] for i in range(50)])
        | 'Chat' >> RunInference(
            chat_handler(str(template)), inference_args={'max_tokens': 2})
        | 'Kind' >> beam.Map(lambda r: r.inference.object))
    assert_that(completions, equal_to(['text_completion'] * 50), label='C')
    assert_that(chats, equal_to(['chat.completion'] * 50), label='Ch')

  with ProcessWatch('dynamo.frontend') as frontends:
    run_pipeline(pipeline)
  # Different configs (one has a chat template): two separate stacks.
  assert frontends.most == 2


def test_bad_elements_go_to_the_dead_letter_output(completions_handler,
                                                   no_leftovers):
  handler = completions_handler(
      vllm_server_kwargs={'speedup-ratio': '0', 'max-model-len': '64'})
  good = [f'good {i}' for i in range(20)]
  bad = ['', 12345, 'x' * 100]  # empty, not a str, longer than the model allows

  def pipeline(p):
    main, dead = (
        p | beam.Create(good + bad)
        | RunInference(
            handler, inference_args={'max_tokens': 4}).with_exception_handling())
    assert_that(
        main | 'Ok' >> beam.Map(lambda r: r.example), equal_to(good),
        label='Main')
    # Beam's dead letters are (element, (exception type, repr, traceback)).
    failed = dead.failed_postprocessing[0] | beam.Map(
        lambda pair: (repr(pair[0].example)[:12], pair[1][0].__name__,
                      'HTTP 400' in pair[1][1] or 'must' in pair[1][1]))
    assert_that(
        failed,
        equal_to([("''", 'InvalidElementError', True),
                  ('12345', 'InvalidElementError', True),
                  (repr('x' * 100)[:12], 'RequestFailedError', True)]),
        label='Dead')
    assert_that(dead.failed_inferences, equal_to([]), label='NoBatchFailure')

  result = run_pipeline(pipeline)
  assert counter(result, 'request_failures') == 1  # the 400; the rest never left


def test_failed_elements_raise_mode_fails_the_batch(completions_handler,
                                                    caplog, no_leftovers):
  handler = completions_handler(failed_elements='raise')
  with pytest.raises(InvalidElementError, match='must not be empty'):
    run_pipeline(lambda p: p | beam.Create(['ok', ''])
        | RunInference(handler, inference_args={'max_tokens': 2}))
  # Beam logged the failure with its traceback, which references the
  # pipeline's DoFns (and so the stack's lease); pytest would keep those
  # records until after teardown.
  caplog.clear()


def test_return_mode_works_inside_keyed_model_handler(completions_handler,
                                                      no_leftovers):
  # KeyedModelHandler refuses inner handlers with postprocessing steps:
  # failed_elements="return" plus raise_failed_element on the outer handler
  # gives keyed dead letters.
  handler = KeyedModelHandler(
      completions_handler(failed_elements='return')).with_postprocess_fn(
          raise_failed_element)

  def pipeline(p):
    main, dead = (
        p | beam.Create([('a', 'hello'), ('b', ''), ('c', 'world')])
        | RunInference(handler, inference_args={'max_tokens': 2})
        .with_exception_handling())
    assert_that(main | beam.Map(lambda kv: kv[0]), equal_to(['a', 'c']))
    assert_that(
        dead.failed_postprocessing[0] | beam.Map(lambda pair: pair[0][0]),
        equal_to(['b']), label='Dead')

  run_pipeline(pipeline)


def test_nothing_is_left_the_moment_a_pipeline_script_exits(tiny_model):
  assert not stack_leftovers()
  finished = run_python(pipeline_script(tiny_model, prompts=2))
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert 'done' in finished.stdout
  assert not stack_leftovers()  # no grace period: checked right after exit
