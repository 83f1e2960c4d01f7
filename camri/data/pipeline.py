"""One tf.data input pipeline for every dataset.

read (tfds, this process's shard) -> cache -> seeded shuffle -> decode, crop to
the ROI where the dataset has one (or to the centre square where the dataset
keeps the aspect ratio), scale to [0, 1] as the paper does, resize to
`config.image_size` (0 keeps the stored size) -> optional augmentation ->
batch -> prefetch. Evaluation reads in order: no cache, shuffle or
augmentation.

Training data order and augmentation are functions of (seed, epoch) only, so a
run resumed from a checkpoint sees exactly the batches an uninterrupted run
would. Evaluation pads the last batch and marks padding with mask = 0, so each
test example counts exactly once whatever the batch size and device count.
"""

import math

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from camri.config_lib import ConfigError
from camri.data.spec import DatasetSpec

def split_size(builder, split) -> int:
  try:
    return builder.info.splits[split].num_examples
  except KeyError:  # Split sizes are unknown under tfds.testing.mock_data: count.
    return int(_read(builder, split).reduce(0, lambda n, _: n + 1))


def _process_split(builder, split):
  """This process's share of `split` and its size (all examples are covered)."""
  if jax.process_count() > 1:
    split = tfds.split_for_jax_process(split, drop_remainder=False)
  return split, split_size(builder, split)


def _stored_shape(builder) -> tuple[int | None, ...]:
  """The image feature's (height, width, channels); None where they vary."""
  return tuple(builder.info.features["image"].shape)


def _read(builder, split):
  return builder.as_dataset(
      split=split, shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=0, add_tfds_id=False))


def _crop(image, top, left, bottom, right):
  """image[top:bottom, left:right], clipped to the image and at least 1x1."""
  shape = tf.shape(image)
  top = tf.clip_by_value(top, 0, shape[0] - 1)
  left = tf.clip_by_value(left, 0, shape[1] - 1)
  height = tf.clip_by_value(bottom - top, 1, shape[0] - top)
  width = tf.clip_by_value(right - left, 1, shape[1] - left)
  return tf.image.crop_to_bounding_box(image, top, left, height, width)


def _preprocess(example, spec: DatasetSpec, image_size, stored_shape):
  """Decoded, cropped, resized image in [0, 1] and its int32 label.

  Images decode to the stored channel count (a greyscale JPEG among RGB ones
  still gives 3 channels). image_size = 0 keeps the stored size, which must
  then be fixed.

  The ROI box is normalised (ymin, xmin, ymax, xmax); the crop is
  image[round(ymin * h):round(ymax * h), round(xmin * w):round(xmax * w)],
  the pixels of the box as the builder stored it (GTSRB's Roi.X1..Roi.Y2).
  """
  image = tf.io.decode_image(example["image"], channels=stored_shape[-1] or 0,
                             expand_animations=False)
  size = tf.shape(image)[:2]
  if spec.roi_key is not None:
    scale = tf.cast(tf.tile(size, [2]), tf.float32)
    box = tf.cast(tf.round(tf.cast(example[spec.roi_key], tf.float32) * scale),
                  tf.int32)
    image = _crop(image, box[0], box[1], box[2], box[3])
  elif spec.centre_crop:
    side = tf.reduce_min(size)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    image = _crop(image, top, left, top + side, left + side)
  image = tf.cast(image, tf.float32) / 255.0
  if image_size:
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    image = tf.clip_by_value(image, 0.0, 1.0)
  else:
    image = tf.ensure_shape(image, stored_shape)
  return {"image": image, "label": tf.cast(example["label"], tf.int32)}


def _augment(example, seed, augmentations):
  """Seeded, stateless augmentation: the same (seed, example) gives the same image."""
  image = example["image"]
  if "crop" in augmentations:
    height, width = image.shape[0], image.shape[1]
    pad = max(1, height // 8)
    image = tf.image.resize_with_crop_or_pad(image, height + 2 * pad, width + 2 * pad)
    image = tf.image.stateless_random_crop(
        image, (height, width, image.shape[2]), seed=seed)
  if "flip" in augmentations:
    image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
  return {**example, "image": image}


def steps_per_epoch(builder, spec: DatasetSpec, global_batch_size: int) -> int:
  """Full global batches in one epoch of the training split (the rest is dropped)."""
  n = split_size(builder, spec.train_split)
  local = n // jax.process_count()  # The smallest process share.
  steps = local // (global_batch_size // jax.process_count())
  if steps < 1:
    most = local * jax.process_count()
    raise ConfigError(f"config.batch_size={global_batch_size} is invalid: must be at most "
                      f"{most} (the training split has {n} examples)")
  return steps


def train_batches(builder, spec: DatasetSpec, *, global_batch_size, image_size,
                  seed, epoch, start_step=0, augmentations=()):
  """This process's batches for one training epoch, from `start_step` on.

  The order depends only on (seed, epoch): an epoch resumed at `start_step`
  yields the batches an uninterrupted epoch yields from that step.
  """
  split, count = _process_split(builder, spec.train_split)
  local_batch = global_batch_size // jax.process_count()
  steps = steps_per_epoch(builder, spec, global_batch_size)
  epoch_seed = int(seed) * 1_000_003 + int(epoch)

  ds = _read(builder, split).cache()
  ds = ds.shuffle(count, seed=epoch_seed, reshuffle_each_iteration=False)
  stored = _stored_shape(builder)
  ds = ds.map(lambda ex: _preprocess(ex, spec, image_size, stored),
              num_parallel_calls=tf.data.AUTOTUNE)
  if augmentations:
    ds = ds.enumerate().map(
        lambda i, ex: _augment(
            ex, tf.stack([tf.constant(epoch_seed, tf.int64), i]), augmentations),
        num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).take(steps).skip(start_step)
  ds = ds.map(lambda b: {**b, "mask": tf.ones([local_batch], tf.float32)})
  return tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))


def eval_steps(builder, split, global_batch_size) -> int:
  """Evaluation steps so that every process covers its whole share."""
  n = split_size(builder, split)
  share = math.ceil(n / jax.process_count())
  return math.ceil(share / (global_batch_size // jax.process_count()))


def eval_batches(builder, spec: DatasetSpec, split, *, global_batch_size,
                 image_size):
  """This process's evaluation batches, padded to full size with mask = 0.

  Every process yields `eval_steps` batches (all-padding ones at the end where
  its share is smaller) so that multi-host collectives stay in step.
  """
  name, _ = _process_split(builder, split)
  local_batch = global_batch_size // jax.process_count()
  stored = _stored_shape(builder)
  ds = _read(builder, name).map(
      lambda ex: _preprocess(ex, spec, image_size, stored),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda ex: {**ex, "mask": tf.constant(1.0)})
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  steps = eval_steps(builder, split, global_batch_size)
  done = 0
  for batch in tfds.as_numpy(ds):
    yield _pad(batch, local_batch)
    done += 1
  empty = {key: np.zeros((0, *spec_.shape[1:]), spec_.dtype.as_numpy_dtype)
           for key, spec_ in ds.element_spec.items()}
  for _ in range(done, steps):
    yield _pad(empty, local_batch)


def _pad(batch, size):
  n = batch["label"].shape[0]
  if n == size:
    return batch
  return jax.tree.map(
      lambda x: np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)]),
      batch)
