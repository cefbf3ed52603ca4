"""The package brings apache-beam's GCP extras: gs:// and DataflowRunner."""

import importlib.metadata

from apache_beam.io.filesystems import FileSystems
from packaging.requirements import Requirement


def test_requires_apache_beam_with_gcp():
  requirements = [
      Requirement(r) for r in importlib.metadata.requires('apache-beam-dynamo')
  ]
  beam = [r for r in requirements if r.name == 'apache-beam' and not r.marker]
  assert beam and 'gcp' in beam[0].extras, requirements


def test_gs_paths_and_dataflow_runner_are_usable():
  assert type(FileSystems.get_filesystem('gs://bucket/x')).__name__ == (
      'GCSFileSystem')
  # Launching on Dataflow needs apitools (without [gcp]: "apitools not found").
  from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
  from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
  assert DataflowRunner().__class__.__name__ == 'DataflowRunner'
