"""Preparing a manual-download tfds builder offline, in a test's tmp_path."""

import tensorflow_datasets as tfds


def prepare(builder_cls, tmp_path, manual_dir):
  """`builder_cls` prepared under `tmp_path` from the archives in `manual_dir`."""
  builder = builder_cls(data_dir=tmp_path / "tfds")
  builder.download_and_prepare(
      download_dir=tmp_path / "downloads",
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
  return builder
