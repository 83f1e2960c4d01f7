"""Preparing a dataset while another process (a parallel grid run) prepares it too."""

import pytest
import tensorflow_datasets as tfds

from camri import data
from camri.data import download
from camri.data import spec as spec_lib


class _Builder:
  """Stands in for a tfds builder whose copy another process renamed into place first."""
  name = "x"
  data_dir_root = "/nonexistent/tensorflow_datasets"
  MANUAL_DOWNLOAD_INSTRUCTIONS = None

  def __init__(self, prepared):
    self.prepared = prepared

  def download_and_prepare(self):
    raise FileExistsError("Cannot rename .../incomplete.X. Destination .../1.0.0 already exists.")

  def is_prepared(self):
    return self.prepared


def test_the_copy_another_process_prepared_is_used(monkeypatch):
  builders = iter([_Builder(False), _Builder(True)])
  monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: next(builders))
  assert spec_lib.get_builder(spec_lib.DatasetSpec("x")).prepared


def test_a_rename_failure_without_a_prepared_copy_is_raised(monkeypatch):
  monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: _Builder(False))
  with pytest.raises(FileExistsError):
    spec_lib.get_builder(spec_lib.DatasetSpec("x"))


def test_a_copy_another_process_prepared_after_the_builder_was_made_is_read(tmp_path, monkeypatch):
  real = download.download_and_prepare

  def another_process_first(builder):
    real(tfds.builder(builder.name, data_dir=str(tmp_path)))  # A parallel run's copy lands first.
    real(builder)  # tfds finds it and reuses it, reading nothing of it.
  monkeypatch.setattr(download, "download_and_prepare", another_process_first)
  builder = spec_lib.get_builder(data.get_spec("digits"), data_dir=str(tmp_path))
  assert (builder.info.splits["train"].num_examples, builder.info.splits["test"].num_examples) == (1437, 360)
