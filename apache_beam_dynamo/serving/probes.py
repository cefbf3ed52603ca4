"""Readiness and liveness probes: small HTTP calls on loopback, through the
package's one HTTP stack (net/transport.py)."""

import json
import urllib.parse
from typing import Optional

from apache_beam_dynamo.errors import HTTPError
from apache_beam_dynamo.net import transport

PROBE_TIMEOUT_S = 2.0


def _request(
    base_url: str,
    method: str,
    path: str,
    body: Optional[dict] = None,
    timeout: float = PROBE_TIMEOUT_S) -> tuple[int, bytes]:
  """One HTTP exchange; raises HTTPError when it can't finish."""
  payload = b'' if body is None else json.dumps(body).encode()
  return transport.request(base_url + path, method, payload, timeout)


def get_ok(base_url: str, path: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
  try:
    status, _ = _request(base_url, 'GET', path, timeout=timeout)
  except HTTPError:
    return False
  return status == 200


def get_text(base_url: str, path: str,
             timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
  """The body of a 200 reply (None for any other outcome)."""
  try:
    status, body = _request(base_url, 'GET', path, timeout=timeout)
  except HTTPError:
    return None
  return body.decode('utf-8', errors='replace') if status == 200 else None


def answers(base_url: str, path: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
  """Any HTTP reply counts: the process runs its event loop.

  A Dynamo worker's status server answers 503 "notready" for as long as no
  endpoint health check is configured, so the status code means nothing
  here; a hung or SIGSTOPped process does not answer at all.
  """
  try:
    _request(base_url, 'GET', path, timeout=timeout)
  except HTTPError:
    return False
  return True


def etcd_healthy(client_url: str) -> bool:
  try:
    status, body = _request(client_url, 'GET', '/health')
    return status == 200 and json.loads(body).get('health') == 'true'
  except (HTTPError, ValueError):
    return False


def model_listed(base_url: str, model: str) -> bool:
  """``/v1/models`` lists ``model`` (it answers 200 with [] until then)."""
  try:
    status, body = _request(base_url, 'GET', '/v1/models')
    return status == 200 and any(
        entry.get('id') == model for entry in json.loads(body).get('data', []))
  except (HTTPError, ValueError, AttributeError):
    return False


def model_ready(base_url: str, model: str) -> bool:
  """Dynamo's per-model readiness: a worker of every needed type is up.

  The ready route can't address a name that starts with '/' (a model served
  under its local path); for those, being listed is the best signal there is.
  """
  if model.startswith('/'):
    return model_listed(base_url, model)
  path = f'/v1/models/{urllib.parse.quote(model, safe="")}/ready'
  try:
    status, body = _request(base_url, 'GET', path)
    return status == 200 and json.loads(body).get('ready') is True
  except (HTTPError, ValueError, AttributeError):
    return False


def model_workers(base_url: str, model: str) -> int:
  """How many workers serve ``model`` (0 if unknown or not ready)."""
  if model.startswith('/'):
    return 1 if model_listed(base_url, model) else 0
  path = f'/v1/models/{urllib.parse.quote(model, safe="")}/ready'
  try:
    status, body = _request(base_url, 'GET', path)
    namespaces = json.loads(body).get('namespaces', {}) if status == 200 else {}
    return sum(
        kind.get('workers', 0) for ns in namespaces.values()
        for kind in ns.get('worker_types', {}).values())
  except (HTTPError, ValueError, AttributeError):
    return 0


def warm_up(base_url: str, model: str, timeout: float) -> Optional[str]:
  """Sends one 1-token completion; returns None on success, else why not.

  A model can be listed before its first request succeeds, so readiness ends
  with a real request.
  """
  body = {'model': model, 'prompt': 'warm-up', 'max_tokens': 1}
  try:
    status, text = _request(
        base_url, 'POST', '/v1/completions', body, timeout=timeout)
  except HTTPError as e:
    return f'warm-up request failed: {e}'
  if status != 200:
    return f'warm-up request got HTTP {status}: {text[:300]!r}'
  return None
