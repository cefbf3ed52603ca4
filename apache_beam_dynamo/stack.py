"""The embedded serving stack: its processes, readiness and liveness.

``DynamoStack`` runs etcd (unless ``ETCD_ENDPOINTS`` names one),
``dynamo.frontend`` and one engine (``dynamo.vllm`` or ``dynamo.mocker``);
``NativeVLLMStack`` runs vLLM's own OpenAI server. Both have the same small
interface: ``start``, ``wait_ready``, ``healthy``, ``restart``, ``stop``.
Restart policy lives in :mod:`apache_beam_dynamo.supervisor`, not here.
"""

import abc
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable, Mapping, Optional

from apache_beam_dynamo import commands
from apache_beam_dynamo import discovery
from apache_beam_dynamo import gpu
from apache_beam_dynamo import ports
from apache_beam_dynamo import probes
from apache_beam_dynamo.commands import Placement
from apache_beam_dynamo.config import StackConfig, looks_like_local_path
from apache_beam_dynamo.errors import ComponentFailure
from apache_beam_dynamo.launch import Launch
from apache_beam_dynamo.process import LineSink, ManagedProcess
from apache_beam_dynamo.reaper import Reaper

_LOGGER = logging.getLogger(__name__)

READY_POLL_S = 0.1
ETCD_START_TIMEOUT_S = 15.0
# Consecutive failed probes (one per liveness interval) before a running
# component counts as hung and is restarted.
UNRESPONSIVE_PROBES = 3
# How long the frontend may go without listing the engine's model before the
# engine is restarted. The frontend drops a worker for a few seconds after a
# request fails inside it, then lists it again: that is not a failure.
UNREGISTERED_GRACE_S = 60.0
_ADDRESS_IN_USE = ('address already in use', 'addrinuse', 'address in use')


def port_conflict(failure: ComponentFailure) -> bool:
  text = '\n'.join(failure.log_tail).lower()
  return any(marker in text for marker in _ADDRESS_IN_USE)


def _require_module(name: str, component: str, what: str, remedy: str) -> None:
  if importlib.util.find_spec(name) is None:
    raise ComponentFailure(
        component, f'{what} is not installed on this worker', remedy=remedy)


@dataclasses.dataclass
class _Component:
  name: str
  build: Callable[[], Launch]
  probe: Callable[[], bool]
  ports: Callable[[], list[int]]
  registered: Optional[Callable[[], bool]] = None
  process: Optional[ManagedProcess] = None
  failed_probes: int = 0
  unregistered_since: Optional[float] = None


class Stack(abc.ABC):
  """Processes of one stack, in start order, with a private run directory."""
  MODEL_COMPONENT: str  # the component that loads the model
  def __init__(
      self,
      config: StackConfig,
      on_line: LineSink,
      parent_env: Optional[Mapping[str, str]] = None):
    self.config = config
    self._on_line = on_line
    self._parent_env = dict(os.environ if parent_env is None else parent_env)
    self._reaper: Optional[Reaper] = None
    self._components: list[_Component] = []
    self._gpu_defaults: tuple = ()
    # GPUs of each engine; a CPU engine has none.
    self._engine_gpus: list[tuple[int, ...]] = [()] * (config.num_engines or 1)
    self.placement: Optional[Placement] = None

  # -- the interface ---------------------------------------------------------

  @property
  def base_url(self) -> str:
    return self.placement.base_url

  @property
  def served_model_name(self) -> str:
    return self.config.served_model_name

  @property
  def engine_count(self) -> int:
    return len(self._engine_gpus)

  @property
  def max_num_seqs(self) -> Optional[int]:
    """Each engine's --max-num-seqs when a flag sets it, else None."""
    value = dict(commands.with_defaults(
        self._gpu_defaults, self.config.engine_args)).get('max-num-seqs')
    return int(value) if value and value.isdigit() else None

  def start(self) -> None:
    """Checks the machine, claims ports and a private dir, starts everything.

    Raises ComponentFailure when a component cannot even be launched.
    """
    self._check_model()
    self._check_machine()
    self._reaper = Reaper()
    run_dir = tempfile.mkdtemp(prefix='apache-beam-dynamo-')  # mode 0700
    self._reaper.watch_dir(run_dir)
    self.placement = self._place(run_dir)
    self._prepare_files()
    self._components = self._define_components()
    self._start_components(self._components)

  def wait_ready(
      self,
      timeout_s: float,
      cancelled: Callable[[], bool] = lambda: False) -> None:
    """Blocks until the model answers a request; raises ComponentFailure.

    Polls every READY_POLL_S; gives up early once ``cancelled()`` is true.
    """
    deadline = time.monotonic() + timeout_s
    waiting_on = self._components[-1]
    for step, component_name, check in self._readiness_steps():
      waiting_on = self._component(component_name)
      while not check():
        self._raise_if_exited()
        if cancelled():
          raise waiting_on.process.failure('startup cancelled')
        if time.monotonic() > deadline:
          raise waiting_on.process.failure(
              f'not ready after {timeout_s:.0f} s (waiting for {step})',
              remedy='Raise startup_timeout_s if the model needs longer to '
              'load; otherwise see the log below.')
        time.sleep(READY_POLL_S)
    remaining = max(deadline - time.monotonic(), 5.0)
    problem = probes.warm_up(self.base_url, self.served_model_name, remaining)
    if problem:
      self._raise_if_exited()
      raise waiting_on.process.failure(problem)

  def healthy(self) -> Optional[ComponentFailure]:
    """None when every component runs and answers its probe.

    A component that answers no probe UNRESPONSIVE_PROBES times in a row (it
    hangs, or was stopped with SIGSTOP) counts as failed; so does an engine
    whose model the frontend has not listed for UNREGISTERED_GRACE_S.
    """
    for component in self._components:
      process = component.process
      if not process.alive():
        return process.failure('exited unexpectedly')
      if component.probe():
        component.failed_probes = 0
      else:
        component.failed_probes += 1
        if component.failed_probes >= UNRESPONSIVE_PROBES:
          return process.failure(
              f'stopped answering its health probe '
              f'({component.failed_probes} probes in a row)')
      if component.registered is None or component.registered():
        component.unregistered_since = None
        continue
      now = time.monotonic()
      if component.unregistered_since is None:
        component.unregistered_since = now
      elif now - component.unregistered_since > UNREGISTERED_GRACE_S:
        return process.failure(
            f'its model has not been listed by the frontend for '
            f'{UNREGISTERED_GRACE_S:.0f} s')
    return None

  def restart(self, component_name: str) -> None:
    """Replaces a failed component; restarting the first restarts them all.

    Ports stay the same (clients keep their URL) unless one was taken
    meanwhile, in which case the whole stack moves to new ports.
    """
    index = next(
        i for i, c in enumerate(self._components) if c.name == component_name)
    affected = self._components[index:] if index == 0 else [
        self._components[index]
    ]
    for component in reversed(affected):
      self._stop_component(component)
    if not all(ports.is_free(p) for c in affected for p in c.ports()):
      _LOGGER.warning('A port of the stack was taken; moving it to new ports.')
      for component in reversed(self._components):
        self._stop_component(component)
      self.placement = self._place(self.placement.run_dir)
      affected = self._components
    self._start_components(affected)

  def engines_alive_besides(self, name: str) -> bool:
    """Whether another engine still serves while ``name`` is replaced."""
    return False

  def pids(self) -> dict[str, int]:
    """Process id of each running component, by component name."""
    return {
        c.name: c.process.pid for c in self._components if c.process is not None
    }

  def stop(self, grace_s: Optional[float] = None) -> None:
    """Stops every component (SIGTERM, grace, SIGKILL) and removes the dir.

    ``grace_s`` defaults to the config's ``shutdown_grace_s``.
    """
    for component in reversed(self._components):
      self._stop_component(component, grace_s)
    if self.placement is not None:
      shutil.rmtree(self.placement.run_dir, ignore_errors=True)
    if self._reaper is not None:
      if self.placement is not None:
        self._reaper.forget_dir(self.placement.run_dir)
      self._reaper.close()
      self._reaper = None

  # -- shared machinery ------------------------------------------------------

  def _check_model(self) -> None:
    model = self.config.model
    if looks_like_local_path(model) and not os.path.isdir(
        os.path.expanduser(model)):
      raise ComponentFailure(
          self.MODEL_COMPONENT,
          f'the model directory {model!r} does not exist on this worker',
          remedy='Use a hub id, or a directory that exists on every worker '
          '(baked into the container image or on a mounted disk).')

  def _component(self, name: str) -> _Component:
    return next(c for c in self._components if c.name == name)

  def _start_components(self, components: list[_Component]) -> None:
    for component in components:
      self._before_launch(component)
      component.process = ManagedProcess(component.build(), self._on_line)
      component.failed_probes = 0
      component.unregistered_since = None
      self._reaper.watch_group(component.process.pgid)
      self._after_launch(component)

  def _stop_component(
      self, component: _Component, grace_s: Optional[float] = None) -> None:
    if component.process is None:
      return
    component.process.stop(
        self.config.shutdown_grace_s if grace_s is None else grace_s)
    self._reaper.forget_group(component.process.pgid)
    component.process = None

  def _raise_if_exited(self) -> None:
    for component in self._components:
      if not component.process.alive():
        raise component.process.failure('exited during startup')

  def _write_private(self, path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w') as f:
      f.write(text)

  def _prepare_files(self) -> None:
    if self.config.chat_template:
      self._write_private(
          self.placement.chat_template_file, self.config.chat_template)

  # -- what differs per stack ------------------------------------------------

  @abc.abstractmethod
  def _check_machine(self) -> None:
    """Fails fast, before any process starts, when the worker can't run it."""

  def _assign_gpus(self, component: str, remedy: str) -> None:
    """Splits the worker's GPUs into one group per engine, and picks the
    flags that GPU model needs; fails if there are none or too few."""
    if not gpu.gpu_visible(self._parent_env):
      raise ComponentFailure(
          component,
          'vLLM needs an NVIDIA GPU and this machine has none visible (no '
          '/dev/nvidiaN, or CUDA_VISIBLE_DEVICES is empty)',
          remedy=remedy)
    ids = list(self.config.gpus or gpu.visible_gpu_ids(self._parent_env))
    try:
      self._engine_gpus = gpu.engine_groups(
          ids, self.config.tensor_parallel_size, self.config.num_engines)
    except ValueError as e:
      raise ComponentFailure(component, str(e), remedy=remedy) from None
    if self.config.adapt_to_gpu:
      found = gpu.describe_gpu(self._engine_gpus[0][0])
      self._gpu_defaults = gpu.engine_defaults(found)
      if found is not None:
        _LOGGER.info(
            'GPU %s (compute capability %s, %d MiB): engine defaults %s',
            found.name, found.compute_capability, found.memory_mib,
            self._gpu_defaults or 'none')
    _LOGGER.info('Engines on GPUs %s.', self._engine_gpus)

  @abc.abstractmethod
  def _place(self, run_dir: str) -> Placement:
    """Claims free loopback ports."""

  @abc.abstractmethod
  def _define_components(self) -> list[_Component]:
    """Components in start order; a restart of the first restarts all."""

  @abc.abstractmethod
  def _readiness_steps(self) -> list[tuple[str, str, Callable[[], bool]]]:
    """(description, component responsible, check) in the order to pass."""

  def _before_launch(self, component: _Component) -> None:
    """Hook run right before a component is launched."""

  def _after_launch(self, component: _Component) -> None:
    """Hook run right after a component is launched."""


class DynamoStack(Stack):
  """etcd + dynamo.frontend + one or more Dynamo engines, on loopback."""
  MODEL_COMPONENT = 'engine'
  def _check_machine(self) -> None:
    _require_module(
        'dynamo', 'frontend', 'the ai-dynamo package',
        "Install it: pip install 'apache-beam-dynamo[vllm]' on GPU workers, "
        "or 'ai-dynamo' for engine=\"mocker\".")
    if self.config.engine == 'vllm':
      _require_module(
          'vllm', 'engine', 'vLLM (dynamo.vllm needs it)',
          "Install it: pip install 'apache-beam-dynamo[vllm]'. For a run "
          'without a GPU use engine="mocker".')
      self._assign_gpus(
          'engine',
          remedy='Run on GPU workers (Dataflow: --dataflow_service_options '
          '"worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"'
          '), or use engine="mocker" for a CPU run.')
    if self._external_etcd() and not probes.etcd_healthy(self._external_etcd()):
      raise ComponentFailure(
          'etcd',
          f'ETCD_ENDPOINTS={self._external_etcd()} does not answer /health',
          remedy='Start that etcd, or unset ETCD_ENDPOINTS to let the handler '
          'run its own.')
    if not self._external_etcd():
      self._etcd_binary = commands.resolve_etcd(self.config.etcd_binary)

  def _external_etcd(self) -> Optional[str]:
    endpoints = self._parent_env.get('ETCD_ENDPOINTS', '').strip()
    return endpoints.split(',')[0] if endpoints else None

  def _place(self, run_dir: str) -> Placement:
    engines = len(self._engine_gpus)
    kv_ports = engines if self.config.router_mode == 'kv' else 0
    http, client, peer, *rest = ports.pick_ports(3 + engines + kv_ports)
    return Placement(
        run_dir=run_dir,
        namespace=f'abd-{uuid.uuid4().hex[:12]}',
        http_port=http,
        etcd_client_port=client,
        etcd_peer_port=peer,
        system_ports=tuple(rest[:engines]),
        kv_event_ports=tuple(rest[engines:]),
        external_etcd=self._external_etcd())

  def _prepare_files(self) -> None:
    super()._prepare_files()
    if self.config.engine == 'mocker' and self.config.chat_template:
      self._shadow_model_dir()

  def _shadow_model_dir(self) -> None:
    """The mocker has no template flag: serve a copy of the model directory
    whose tokenizer config carries the custom template."""
    target = self.placement.mocker_model_dir
    os.mkdir(target, 0o700)
    for name in os.listdir(self.config.model):
      if name not in ('tokenizer_config.json', 'chat_template.jinja'):
        os.symlink(
            os.path.join(os.path.abspath(self.config.model), name),
            os.path.join(target, name))
    with open(os.path.join(self.config.model, 'tokenizer_config.json')) as f:
      tokenizer_config = json.load(f)
    tokenizer_config['chat_template'] = self.config.chat_template
    self._write_private(
        os.path.join(target, 'tokenizer_config.json'),
        json.dumps(tokenizer_config, indent=1))
    self._write_private(
        os.path.join(target, 'chat_template.jinja'), self.config.chat_template)

  def _define_components(self) -> list[_Component]:
    env, cfg = self._parent_env, self.config
    components = []
    if not self.placement.external_etcd:
      components.append(
          _Component(
              'etcd',
              lambda: commands.etcd_launch(self._etcd_binary, self.placement, env),
              lambda: probes.etcd_healthy(self.placement.etcd_endpoints),
              lambda: [self.placement.etcd_client_port,
                       self.placement.etcd_peer_port]))
    components.append(
        _Component(
            'frontend',
            lambda: commands.frontend_launch(cfg, self.placement, env),
            lambda: probes.get_ok(self.placement.base_url, '/live'),
            lambda: [self.placement.http_port]))
    for index in range(len(self._engine_gpus)):
      components.append(self._engine_component(index))
    return components

  def _engine_component(self, index: int) -> _Component:
    def ports_of_engine():
      kv = self.placement.kv_event_ports
      return [self.placement.system_ports[index]] + ([kv[index]] if kv else [])

    return _Component(
        commands.engine_name(index, len(self._engine_gpus)),
        lambda: commands.engine_launch(
            self.config, self.placement, self._parent_env, index,
            self._engine_gpus[index], self._gpu_defaults),
        # '/' is not routed: the 404 proves the worker's event loop answers,
        # without the ERROR line its status routes log for every 503.
        lambda: probes.answers(self.placement.system_url(index), '/'),
        ports_of_engine,
        registered=lambda: probes.model_ready(
            self.base_url, self.served_model_name))

  def engines_alive_besides(self, name: str) -> bool:
    """Whether another engine still serves while engine ``name`` is
    replaced (replacing etcd or the frontend leaves nothing serving)."""
    return name.startswith('engine') and any(
        c.name != name and c.name.startswith('engine') and c.process is not
        None and c.process.alive() for c in self._components)

  def _before_launch(self, component: _Component) -> None:
    # A restarted etcd starts empty: registrations of dead processes must not
    # survive it, and its member identity changes with its ports.
    if component.name == 'etcd':
      shutil.rmtree(self.placement.etcd_data_dir, ignore_errors=True)
    # A replaced engine's registration would outlive it by its lease (~10 s)
    # and draw requests that fail: drop it now.
    elif component.name.startswith('engine') and self._etcd_up():
      discovery.revoke_dead(
          self.placement.etcd_endpoints, self.placement.namespace)

  def _etcd_up(self) -> bool:
    if self.placement.external_etcd:
      return True
    etcd = self._components[0]
    return etcd.process is not None and etcd.process.alive()

  def _after_launch(self, component: _Component) -> None:
    # Frontend and engine connect to etcd as they start: let it come up first
    # (tens of milliseconds) rather than race it.
    if component.name != 'etcd':
      return
    deadline = time.monotonic() + ETCD_START_TIMEOUT_S
    while not component.probe():
      if not component.process.alive():
        raise component.process.failure('exited at start')
      if time.monotonic() > deadline:
        raise component.process.failure(
            f'not healthy {ETCD_START_TIMEOUT_S:.0f} s after start')
      time.sleep(0.02)

  def _readiness_steps(self):
    name = self.served_model_name
    engine = commands.engine_name(0, len(self._engine_gpus))
    return [
        ('frontend /live', 'frontend',
         lambda: probes.get_ok(self.base_url, '/live')),
        (f'model {name!r} listed in /v1/models', engine,
         lambda: probes.model_listed(self.base_url, name)),
        (f'/v1/models/{name}/ready', engine,
         lambda: probes.model_ready(self.base_url, name)),
        (f'{len(self._engine_gpus)} engine(s) registered', engine,
         lambda: probes.model_workers(self.base_url, name) >= len(
             self._engine_gpus)),
    ]


class NativeVLLMStack(Stack):
  """vLLM's own OpenAI-compatible server (``use_dynamo=False``)."""
  MODEL_COMPONENT = 'vllm-server'
  def _check_machine(self) -> None:
    _require_module('vllm', 'vllm-server', 'vLLM',
                    "Install it: pip install 'apache-beam-dynamo[vllm]'.")
    self._assign_gpus(
        'vllm-server',
        remedy='Run on GPU workers, or use use_dynamo=True, engine="mocker" '
        'for a CPU run.')

  def _place(self, run_dir: str) -> Placement:
    http, = ports.pick_ports(1)
    return Placement(run_dir, namespace='', http_port=http)

  def _define_components(self) -> list[_Component]:
    return [
        _Component(
            'vllm-server',
            lambda: commands.native_vllm_launch(
                self.config, self.placement, self._parent_env,
                self._engine_gpus[0], self._gpu_defaults),
            lambda: probes.get_ok(self.base_url, '/health'),
            lambda: [self.placement.http_port])
    ]

  def _readiness_steps(self):
    name = self.served_model_name
    return [
        ('/health', 'vllm-server', lambda: probes.get_ok(self.base_url, '/health')),
        (f'model {name!r} listed in /v1/models', 'vllm-server',
         lambda: probes.model_listed(self.base_url, name)),
    ]


def build_stack(
    config: StackConfig,
    on_line: LineSink,
    parent_env: Optional[Mapping[str, str]] = None) -> Stack:
  kind = DynamoStack if config.use_dynamo else NativeVLLMStack
  return kind(config, on_line, parent_env)
