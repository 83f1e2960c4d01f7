"""The splits a run reads: train, validation and test.

No dataset camri reads ships a validation split, so one is held out of the
training split, as big_vision carves `train[90%:]`, but stratified by class:
of the n_k training examples of class k, the first round(f * n_k) (halves
rounded up) in the order of SHA-256(`<SPLIT_SEED>:<tfds id>`) are the
validation split, f = `config.validation_fraction` (no validation split when
that holds no example out). The ids are tfds's
(`digits-train.tfrecord-00000-of-00001__17`), so the choice depends only on
the prepared dataset and f: it is the same for every `config.seed`, every
process count and every run of a grid. f = 0 holds nothing out.

Finding the held-out ids takes one pass over the training split's labels (the
images are not decoded); it is cached next to the prepared dataset
(`<data_dir>/<name>/<version>/camri-validation-*.json`) where that directory is
writable.
"""

import collections
import json
import os

import tensorflow_datasets as tfds

from camri import run_log
from camri.data import pipeline
from camri.data import stratify
from camri.data.spec import DatasetSpec
from camri.data.spec import Split
from camri.data.spec import TfdsIds

SPLIT_SEED = 0


def held_out_ids(builder, tfds_split: str, fraction: float) -> TfdsIds:
  """The tfds ids of the validation examples held out of `tfds_split` (see the module doc)."""
  if fraction == 0:
    return TfdsIds([])
  cache = os.path.join(str(builder.data_dir),
                       f"camri-validation-{tfds_split}-{fraction!r}-seed{SPLIT_SEED}.json")
  try:
    with open(cache) as f:
      return TfdsIds(json.load(f)["held_out"])
  except (OSError, ValueError, KeyError):
    pass
  by_class = collections.defaultdict(list)
  labels = pipeline._read_tfds(builder, tfds_split).map(  # pylint: disable=protected-access
      lambda ex: (ex["tfds_id"], ex["label"]))
  for tfds_id, label in pipeline.read_checked(tfds.as_numpy(labels), builder):
    by_class[int(label)].append(tfds_id.decode())
  held_out = stratify.stratified_split(by_class, fraction, SPLIT_SEED)["test"]
  _write_cache(builder, cache, held_out)
  return TfdsIds(held_out)


def _write_cache(builder, path, held_out):
  """Best effort: a read-only or not yet prepared data directory is left alone."""
  if not builder.is_prepared():
    return
  try:
    run_log.atomic_write(path, json.dumps({"held_out": held_out}))
  except OSError:  # Leaves no temporary file behind.
    pass


def _splits(builder, spec: DatasetSpec, fraction: float):
  test = Split("test", spec.test_split, pipeline.split_size(builder, spec.test_split))
  train_size = pipeline.split_size(builder, spec.train_split)
  if spec.validation_split is not None and spec.validation_split in builder.info.splits:
    val = Split("val", spec.validation_split,
                pipeline.split_size(builder, spec.validation_split))
    return {"train": Split("train", spec.train_split, train_size), "val": val, "test": test}
  held_out = held_out_ids(builder, spec.train_split, fraction)
  if not held_out:  # f = 0, or classes too small for f to hold any example out.
    return {"train": Split("train", spec.train_split, train_size), "test": test}
  return {
      "train": Split("train", spec.train_split, train_size - len(held_out), held_out, False),
      "val": Split("val", spec.train_split, len(held_out), held_out, True),
      "test": test,
  }


def run_splits(builder, spec: DatasetSpec, validation_fraction: float) -> dict[str, Split]:
  """{"train", "val", "test": Split}; no "val" when there is no validation split.

  The dataset's own validation split where its data has one (`spec.validation_split`),
  else one held out of the training split by `validation_fraction`.
  """
  return _splits(builder, spec, float(validation_fraction))
