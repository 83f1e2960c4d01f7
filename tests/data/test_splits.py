"""The validation split: held out of train, stratified, the same for every run."""

import collections
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from camri import prepare
from camri.data import dataset as dataset_lib
from camri.data import pipeline
from camri.data.spec import TfdsIds


def _ids_and_labels(dataset, split):
  """{tfds id: label} of the examples `split` reads."""
  return {ex["tfds_id"].decode(): int(ex["label"])
          for ex in tfds.as_numpy(pipeline._read(dataset.builder, dataset.splits[split]))}  # pylint: disable=protected-access


def _open(config, **fields):
  for key, value in fields.items():
    config[key] = value
  return dataset_lib.open_dataset(prepare.validated_config(config)[0])


@pytest.fixture(scope="module")
def splits(tfds_dir):
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.data_dir = tfds_dir
  dataset = _open(config)
  return dataset, {name: _ids_and_labels(dataset, name) for name in ("train", "val", "test")}


def test_validation_split_is_disjoint_from_train_and_test_and_sized(splits):
  dataset, ids = splits
  train, val, test = ids["train"], ids["val"], ids["test"]
  assert not set(train) & set(val) and not set(val) & set(test) and not set(train) & set(test)
  assert len(train) + len(val) == 1437 and len(test) == 360
  assert {name: split.size for name, split in dataset.splits.items()} == {
      "train": len(train), "val": len(val), "test": 360}
  assert dataset.describe() == f"train {len(train)}, val {len(val)}, test 360"


def test_validation_split_holds_each_class_within_one_of_the_fraction(splits):
  _, ids = splits
  per_class = collections.Counter(ids["train"].values()) + collections.Counter(
      ids["val"].values())
  held = collections.Counter(ids["val"].values())
  for label, n in per_class.items():
    assert abs(held[label] - 0.1 * n) <= 1, (label, held[label], n)
    assert held[label] == int(0.1 * n + 0.5)  # Halves rounded up, as documented.


def test_validation_split_is_the_documented_hash_order(splits):
  # The module doc's rule, written out: per class, the first round(0.1 n) ids
  # in the order of SHA-256('0:<tfds id>').
  _, ids = splits
  by_class = collections.defaultdict(list)
  for tfds_id, label in {**ids["train"], **ids["val"]}.items():
    by_class[label].append(tfds_id)
  expected = set()
  for members in by_class.values():
    members.sort(key=lambda i: hashlib.sha256(f"0:{i}".encode()).hexdigest())
    expected |= set(members[:int(0.1 * len(members) + 0.5)])
  assert set(ids["val"]) == expected


def test_validation_split_is_the_same_for_every_seed(splits, digits_config):
  _, ids = splits
  for seed in (1, 7):
    other = _open(digits_config.copy_and_resolve_references(), seed=seed)
    assert _ids_and_labels(other, "val") == ids["val"]


def test_fraction_zero_leaves_the_train_split_unchanged(digits_config):
  dataset = _open(digits_config, validation_fraction=0.0)
  assert set(dataset.splits) == {"train", "test"} and dataset.eval_splits == ["test"]
  read = [ex["tfds_id"] for ex in tfds.as_numpy(
      pipeline._read(dataset.builder, dataset.splits["train"]))]  # pylint: disable=protected-access
  whole = [ex["tfds_id"] for ex in tfds.as_numpy(pipeline._read_tfds(dataset.builder, "train"))]  # pylint: disable=protected-access
  np.testing.assert_array_equal(read, whole)
  assert len(read) == dataset.splits["train"].size == 1437


def test_held_out_ids_are_a_set_of_tfds_ids_in_one_bytes_array():
  ids = TfdsIds(["f-train__10", "f-train__2", b"f-train__2", "g__0"])
  assert len(ids) == 3 and list(ids) == ["f-train__10", "f-train__2", "g__0"]
  assert ids.array.dtype.kind == "S"
  assert "f-train__2" in ids and b"g__0" in ids
  # A prefix, an extension and an id past the last are not members.
  assert "f-train__1" not in ids and "f-train__100" not in ids and "zz" not in ids
  np.testing.assert_array_equal(
      ids.contains(np.char.add(b"f-train__", np.arange(9, 12).astype(np.bytes_))),
      [False, True, False])
  assert ids == TfdsIds([b"g__0", "f-train__2", "f-train__10"])
  assert hash(ids) == hash(TfdsIds([b"g__0", "f-train__2", "f-train__10"]))
  assert ids != TfdsIds(["g__0"])
  empty = TfdsIds([])
  assert len(empty) == 0 and "g__0" not in empty and list(empty) == []
