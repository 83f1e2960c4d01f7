"""The input pipeline: every test example once, seeded order, ROI and centre crops."""

import collections
import os
import shutil
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from camri import config_lib
from camri import data
from camri import feeds
from camri import metrics
from camri import prepare
from camri import train
from camri.data import pipeline
from camri.data import records
from camri.data import shuffle
from tests.data import gtsrb_archives

_GREEN, _BLUE, _RED = (0, 255, 0), (0, 0, 255), (255, 0, 0)


@pytest.fixture(scope="module")
def digits(tfds_dir):
  spec = data.get_spec("digits")
  return data.get_builder(spec, tfds_dir), spec


_TEST = data.Split("test", "test", 360)
_TRAIN = data.Split("train", "train", 1437)  # validation_fraction 0: the whole tfds split.


def _examples(batches):
  """Counter of (image bytes, label) over the unmasked examples of `batches`."""
  seen = collections.Counter()
  for batch in batches:
    for image, label, mask in zip(batch["image"], batch["label"], batch["mask"]):
      if mask:
        seen[image.tobytes(), int(label)] += 1
  return seen


def _split_examples(builder, split):
  """The same Counter, read independently of the pipeline."""
  return collections.Counter(
      ((ex["image"].astype(np.float32) / np.float32(255)).tobytes(), int(ex["label"]))
      for ex in tfds.as_numpy(builder.as_dataset(split=split)))


@pytest.mark.parametrize("batch_size", [14, 362])  # 360 test images.
def test_eval_batches_cover_every_test_example_once(digits, batch_size):
  builder, spec = digits
  batches = list(pipeline.eval_batches(builder, spec, _TEST, global_batch_size=batch_size,
                                   image_size=0))
  assert len(batches) == pipeline.eval_steps(builder, _TEST, batch_size) == -(-360 // batch_size)
  assert all(b["image"].shape == (batch_size, 8, 8, 1) for b in batches)
  assert sum(float(b["mask"].sum()) for b in batches) == 360
  assert _examples(batches) == _split_examples(builder, "test")


@pytest.mark.parametrize("channels, image_size, stored", [
    (1, 12, (None, None, 1)), (3, 12, (None, None, 3)), (1, 0, (8, 8, 1)), (3, 0, (8, 8, 3))])
def test_preprocessed_images_have_a_static_shape(channels, image_size, stored):
  preprocess = tf.function(
      lambda encoded: pipeline.preprocess_image(
          encoded, spec=data.DatasetSpec("x"), image_size=image_size, channels=channels,
          stored_shape=stored),
      input_signature=[tf.TensorSpec([], tf.string)])
  shape = preprocess.get_concrete_function().structured_outputs.shape
  assert shape == (image_size or 8, image_size or 8, channels)


def test_all_padding_batches_have_the_runs_image_shape(digits, monkeypatch):
  # A process whose share is smaller than another's pads with whole batches;
  # resized, the stored (8, 8, 1) is not the run's image shape.
  builder, spec = digits
  monkeypatch.setattr(pipeline, "eval_steps", lambda *args: 2)
  real, padding = pipeline.eval_batches(builder, spec, _TEST, global_batch_size=362,
                                        image_size=12)
  assert real["image"].shape == padding["image"].shape == (362, 12, 12, 1)
  assert real["mask"].sum() == 360 and padding["mask"].sum() == 0
  assert padding["label"].dtype == real["label"].dtype and set(padding["id"]) == {b""}


def test_sharded_eval_step_counts_every_test_example_once(digits, digits_config):
  assert jax.device_count() == 2
  builder, spec = digits
  config, _ = prepare.validated_config(digits_config)
  model, objective = train.make_model(config, 10)
  sharding = train.Sharding.over_all_devices()
  state = jax.device_put(train.create_train_state(config, model, (8, 8, 1)),
                         sharding.replicated)
  eval_step = jax.jit(train.make_eval_step(objective),
                      out_shardings=(sharding.replicated, sharding.batch))
  sums = metrics.empty(10)
  # 26 batches of 14 (7 per device), the last holding 10 examples and 4 padding.
  for batch in pipeline.eval_batches(builder, spec, _TEST, global_batch_size=14,
                                 image_size=0):
    global_batch = sharding.put_batch(batch)
    assert len(global_batch["image"].sharding.device_set) == 2
    sums, _ = eval_step(state, sums, global_batch)
  labels = [int(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(split="test"))]
  assert float(sums["count"]) == 360
  np.testing.assert_array_equal(np.asarray(sums["confusion"]).sum(axis=1),
                                np.bincount(labels, minlength=10))
  row = metrics.summarize(sums, [8], "test", per_class=True)
  assert row["test_accuracy"] == pytest.approx(np.trace(sums["confusion"]) / 360)


def _train_epoch(digits, **kwargs):
  builder, spec = digits
  args = dict(global_batch_size=64, image_size=0, seed=3, epoch=0) | kwargs
  return list(pipeline.train_batches(builder, spec, _TRAIN, **args))


def test_train_order_is_a_function_of_seed_and_epoch_and_resumes_exactly(digits):
  first = _train_epoch(digits)
  assert len(first) == 1437 // 64
  assert all(b["mask"].shape == (64,) and b["mask"].all() for b in first)
  # No example twice in an epoch (the last 1437 - 22 * 64 = 29 are dropped).
  assert sum(_examples(first).values()) == len(_examples(first)) == 22 * 64
  again = _train_epoch(digits)
  reads = []
  original_read = records.Records.read

  def read(self, position):
    reads.append(int(position))
    return original_read(self, position)

  with mock.patch.object(records.Records, "read", read):
    resumed = _train_epoch(digits, start_step=5)
  # The resumed epoch reads its own examples, once each, and none it skips.
  order = pipeline.epoch_order(digits[0], _TRAIN, local_size=1437, global_batch_size=64,
                               seed=3, epoch=0)
  assert sorted(reads) == sorted(order[5:].ravel())
  for a, b in zip(first + first[5:], again + resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for other in (_train_epoch(digits, epoch=1), _train_epoch(digits, seed=4)):
    assert not np.array_equal(other[0]["label"], first[0]["label"])


@pytest.mark.parametrize("n, buffer, take, seed", [
    (1437, 1437, 1408, 3 * 1_000_003 + 1),
    (10, 13, 8, 2**31 + 5),  # A larger share's buffer; a seed tf.random truncates.
    (70_000, 70_000, 69_952, 0),  # Past the first chunk of draws.
])
def test_the_epoch_order_is_tfdatas_shuffle_computed_in_numpy(n, buffer, take, seed):
  """`shuffle.tf_data_order` is the order runs have always trained in, tf.data's shuffle
  of the positions, so a run checkpointed before it came resumes on its own batches."""
  expected = tf.data.Dataset.range(n).shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
  expected = expected.take(take).batch(take).get_single_element().numpy()
  order = shuffle.tf_data_order(n, take, seed)
  assert order.dtype == np.int32
  np.testing.assert_array_equal(order, expected)
  # Pinned, should a TensorFlow release change its shuffle.
  np.testing.assert_array_equal(shuffle.tf_data_order(1000, 6, 5), [791, 615, 648, 222, 780, 444])


def test_record_spans_read_across_chunks_give_each_record(tmp_path, monkeypatch):
  """Chunks of 40 bytes: headers split across chunks, records longer than a chunk, empty
  records; each span is the record tf.data reads, and a cut file raises."""
  payloads = [bytes([k]) * n for k, n in enumerate((0, 5, 100, 23, 0, 41, 7))]
  path = str(tmp_path / "x.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for payload in payloads:
      writer.write(payload)
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == payloads
  monkeypatch.setattr(records, "_CHUNK", 40)
  offsets, lengths = records.record_spans(path, len(payloads))
  with open(path, "rb") as f:
    data = f.read()
  assert [data[o:o + n] for o, n in zip(offsets, lengths)] == payloads
  for cut in (len(data) - 1, offsets[-1] - 1, offsets[-1] - 12):  # In a record, its header.
    os.truncate(path, cut)
    with pytest.raises(records.TruncatedRecordError, match=f"truncated record at {offsets[-1] - 12}"):
      records.record_spans(path, len(payloads))


def test_a_truncated_tfrecord_stops_the_host_feed_naming_the_directory_to_delete(
    digits, tmp_path):
  builder, spec = digits
  shutil.copytree(str(builder.data_dir), tmp_path / "digits" / "1.0.0")
  (record,) = (tmp_path / "digits" / "1.0.0").glob("digits-train.tfrecord-*")
  size = record.stat().st_size
  os.truncate(record, size * 9 // 10)
  copy = tfds.builder("digits", data_dir=tmp_path)
  with pytest.raises(pipeline.DamagedDataError,
                     match=r"\(DataLossError: truncated record at \d+\): delete "
                           f"{copy.data_dir} and the next run"):
    _train_epoch((copy, spec))


def test_train_batches_carry_each_examples_id(digits):
  """The feeds augment each example by its id: its position in the stored split (one
  process), the same in every epoch."""
  builder, spec = digits
  decoded = pipeline.decoded_split(builder, spec, _TRAIN, image_size=0)
  assert decoded["image"].dtype == np.uint8  # Stored pixels: the model sees PIXEL_VALUES[k].
  images = pipeline.PIXEL_VALUES[decoded["image"]]
  for epoch in (0, 1):
    batches = _train_epoch(digits, epoch=epoch)
    ids = np.concatenate([b["example"] for b in batches])
    assert ids.dtype == np.int32 and len(set(ids)) == len(ids) == 22 * 64
    for batch in batches:
      np.testing.assert_array_equal(batch["image"], images[batch["example"]])


def _two_colour_roi(rng, height, width, roi):
  """Red outside the ROI; inside it, its left half green and its right half blue."""
  del rng
  x1, y1, x2, y2 = roi
  image = np.empty((height, width, 3), np.uint8)
  image[:] = _RED
  image[y1:y2, x1:x2] = _BLUE
  image[y1:y2, x1:(x1 + x2) // 2] = _GREEN
  return image


@pytest.fixture(scope="module")
def gtsrb_builder(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("gtsrb")
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  gtsrb_archives.write_archives(manual_dir, make_image=_two_colour_roi)
  return gtsrb_archives.prepare(tmp_path, manual_dir)


def test_gtsrb_images_are_cropped_to_their_roi_and_resized(gtsrb_builder):
  spec = data.get_spec("gtsrb")
  batches = list(pipeline.eval_batches(gtsrb_builder, spec, data.Split("test", "test", 4),
                                       global_batch_size=4,
                                   image_size=32))
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (4, 32, 32, 3) and batches[0]["mask"].all()
  # Nothing of the red surround; green on the left edge, blue on the right.
  assert images[..., 0].max() < 1e-6
  np.testing.assert_allclose(images[:, :, 0], np.broadcast_to([0, 1, 0], (4, 32, 3)),
                             atol=1e-6)
  np.testing.assert_allclose(images[:, :, -1], np.broadcast_to([0, 0, 1], (4, 32, 3)),
                             atol=1e-6)


def test_gtsrb_is_never_flipped(gtsrb_builder, digits_config):
  spec = data.get_spec("gtsrb")
  assert "flip" not in spec.augmentations
  digits_config.dataset = "gtsrb"
  digits_config.image_size = 32
  digits_config.augment = ("flip",)
  with pytest.raises(config_lib.ConfigError, match=r"config.augment=\('flip',\) is "
                     r"invalid: this dataset allows \['crop'\]"):
    prepare.validated_config(digits_config)
  # Shifted by the crop augmentation (up to 4 pixels), never mirrored: the
  # left quarter stays green or black padding, the right quarter blue or black.
  for epoch in range(4):
    for batch in pipeline.train_batches(gtsrb_builder, spec, data.Split("train", "train", 8),
                                        global_batch_size=8, image_size=32, seed=0, epoch=epoch):
      batch = jax.device_get(feeds.fed_batch(batch, step=epoch, steps_per_epoch=1, seed=0,
                                             augmentations=spec.augmentations))
      left, right = batch["image"][:, :, :8], batch["image"][:, :, -8:]
      assert left[..., 2].max() < 1e-6 and right[..., 1].max() < 1e-6
      assert left[..., 1].max() == pytest.approx(1) and right[..., 2].max() == pytest.approx(1)


def _encoded(image, fmt):
  return (tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg)(image)


def test_centre_crop_keeps_the_aspect_ratio_and_greyscale_decodes_to_rgb():
  # 16x48, the centre 16x16 square grey, the sides black: aligned to JPEG's
  # 8x8 blocks, so the JPEG keeps each region's value.
  wide = np.zeros((16, 48, 1), np.uint8)
  wide[:, 16:32] = 200
  spec = data.get_spec("awa2")
  assert spec.centre_crop
  out = pipeline._preprocess(  # pylint: disable=protected-access
      {"image": _encoded(wide, "jpeg"), "label": 7}, spec, 8, (None, None, 3))
  assert out["image"].shape == (8, 8, 3) and int(out["label"]) == 7
  # A greyscale JPEG decodes to 3 equal channels; only the centre is left.
  image = out["image"].numpy()
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  np.testing.assert_allclose(image, 200 / 255, atol=0.01)
  squashed = pipeline._preprocess(  # pylint: disable=protected-access
      {"image": _encoded(wide, "png"), "label": 7}, data.DatasetSpec("x"), 8, (None, None, 3))
  np.testing.assert_allclose(squashed["image"][:, 0], 0)  # Without: the black sides stay.
