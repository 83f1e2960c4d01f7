"""One tf.data input pipeline for every dataset.

read (this process's share: for training, each record by its index in the
epoch's seeded order, camri/data/records.py) -> decode, crop to the ROI where
the dataset has one (or to the centre square where the dataset keeps the
aspect ratio), scale to [0, 1] as the paper does, resize to
`config.image_size` (0 keeps the stored size) -> batch -> prefetch.
Evaluation reads in stored order.

Training data order is a function of (seed, epoch) only, so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would. Each
training example carries its global id (`first_example`), by which the feeds
augment it on the devices (camri/feeds.py). Evaluation pads the last batch and marks padding with mask = 0, so each
test example counts exactly once whatever the batch size and device count.
"""

import math
import re

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from camri import memory
from camri.config_lib import ConfigError
from camri.data import records as records_lib
from camri.data import shuffle
from camri.data.spec import DatasetSpec
from camri.data.spec import Split
from camri.data.spec import image_shape


class DamagedDataError(OSError):
  """A file of the prepared dataset could not be read: truncated or corrupt."""


def read_checked(examples, builder):
  """`examples` (any iterable read from `builder`'s data), with a read error raised as DamagedDataError.

  tf.data raises DataLossError for a truncated or corrupt record and
  InvalidArgumentError for an image it cannot decode, when the batch holding
  it is read; every reader of prepared data (batches, the validation split's
  labels) iterates through here.
  """
  iterator = iter(examples)
  while True:
    try:
      example = next(iterator)
    except StopIteration:
      return
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      # Without TensorFlow's "{{function_node ...}}" prefix and "[Op:...]" suffix.
      reason = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:.*", "", str(e.message))
      raise damaged(builder, type(e).__name__, reason) from e
    yield example


def damaged(builder, kind: str, reason: str) -> DamagedDataError:
  """The error for `builder`'s prepared data failing to read with `kind` of error, `reason`."""
  reason = (reason.strip().splitlines() or [""])[0][:200]
  return DamagedDataError(
      f"reading the prepared {builder.name} data failed ({kind}: {reason}): delete "
      f"{builder.data_dir} and the next run prepares it again (the checkpoints written so "
      "far are kept)")


def split_size(builder, tfds_split) -> int:
  """Examples in a tfds split (counted where tfds does not know, as under mock_data)."""
  try:
    return builder.info.splits[tfds_split].num_examples
  except KeyError:
    return int(_read_tfds(builder, tfds_split).reduce(0, lambda n, _: n + 1))


def _stored_shape(builder) -> tuple[int | None, ...]:
  """The image feature's (height, width, channels); None where they vary."""
  return tuple(builder.info.features["image"].shape)


# Pixel k as the model sees it, k / 255 correctly rounded: a table, so that
# every path computes the same float (tf.data's graph optimiser turns x / 255
# into x * (1 / 255) in some pipelines and not others, an ulp apart).
PIXEL_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def keeps_stored_pixels(builder, image_size: int) -> bool:
  """Whether preprocessing leaves every pixel a stored uint8 value / 255 (no resizing)."""
  height, width, _ = _stored_shape(builder)
  return image_size == 0 or (height, width) == (image_size, image_size)


def _read_tfds(builder, tfds_split):
  """A tfds split in its stored order, images still encoded, with each example's tfds_id."""
  return builder.as_dataset(
      split=tfds_split, shuffle_files=False,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=0, add_tfds_id=True))


def _share_split(split: Split):
  """The tfds split of this process's share of `split`, before holding examples out."""
  if jax.process_count() > 1:
    return tfds.split_for_jax_process(split.tfds_split, drop_remainder=False)
  return split.tfds_split


def _read(builder, split: Split):
  """This process's share of `split` (every example is in one process's share)."""
  ds = _read_tfds(builder, _share_split(split))
  if split.held_out is None:
    return ds
  ids = tf.constant(split.held_out.array, tf.string, shape=[len(split.held_out)])
  held_out = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(ids, tf.ones_like(ids, tf.int32)), default_value=0)
  keep = tf.constant(split.keep_held_out)
  return ds.filter(lambda ex: tf.equal(held_out.lookup(ex["tfds_id"]) == 1, keep))


_SHARE_SIZES = {}


def share_sizes(builder, split: Split) -> tuple[int, int]:
  """The smallest and the largest process share of `split`."""
  count = jax.process_count()
  if count == 1:
    return split.size, split.size
  if split.held_out is None:  # tfds's even split: shares differ by at most one.
    return split.size // count, math.ceil(split.size / count)
  key = (str(builder.data_dir), split)
  if key not in _SHARE_SIZES:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    local = int(_read(builder, split).reduce(0, lambda n, _: n + 1))
    shares = multihost_utils.process_allgather(np.int64(local))
    _SHARE_SIZES[key] = (int(np.min(shares)), int(np.max(shares)))
  return _SHARE_SIZES[key]


def first_example(builder, split: Split) -> int:
  """The global id of this process's first example of `split`: the ids of process p's
  share are p * (the largest share) + its position there, distinct across processes."""
  return jax.process_index() * share_sizes(builder, split)[1]


def _crop(image, top, left, bottom, right):
  """image[top:bottom, left:right], clipped to the image and at least 1x1."""
  shape = tf.shape(image)
  top = tf.clip_by_value(top, 0, shape[0] - 1)
  left = tf.clip_by_value(left, 0, shape[1] - 1)
  height = tf.clip_by_value(bottom - top, 1, shape[0] - top)
  width = tf.clip_by_value(right - left, 1, shape[1] - left)
  return tf.image.crop_to_bounding_box(image, top, left, height, width)


def decode_image(encoded, channels: int):
  """uint8 (height, width, channels) of a PNG, JPEG, BMP or GIF (its first frame).

  Greyscale, RGB and RGBA files decode to the same `channels` (0: as stored):
  3 repeats grey or drops alpha; 1 takes the luma of RGB(A), which TensorFlow's
  BMP and GIF decoders cannot give, so every format is converted the same way.
  A 16-bit PNG keeps the high byte of each value (v // 256), as TensorFlow's
  PNG decoder does. With `channels` 1 or 3 the channel dimension is static.
  """
  if channels != 1:
    return tf.io.decode_image(encoded, channels=channels or 0, expand_animations=False)
  image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
  grey = tf.cond(tf.shape(image)[-1] < 3, lambda: image[..., :1],
                 lambda: tf.image.rgb_to_grayscale(image[..., :3]))
  return tf.ensure_shape(grey, (None, None, 1))  # tf.cond loses the static 1.


def preprocess_image(encoded, *, spec: DatasetSpec, image_size: int, channels: int,
                     roi=None, stored_shape=(None, None, None)):
  """An encoded image (PNG, JPEG, ...) as the model sees it: float32 in [0, 1].

  Decoded to `channels` channels (a greyscale JPEG among RGB ones still gives
  3), cropped to the ROI box where the dataset has one, or to the centre square
  where it keeps the aspect ratio, scaled to [0, 1] and resized to
  `image_size` (0 keeps the stored size, which `stored_shape` must then fix).
  Training, evaluation and `camri.predict` all preprocess through here.

  The ROI box is normalised (ymin, xmin, ymax, xmax); the crop is
  image[round(ymin * h):round(ymax * h), round(xmin * w):round(xmax * w)],
  the pixels of the box as the builder stored it (GTSRB's Roi.X1..Roi.Y2).
  """
  image = decode_image(encoded, channels)
  size = tf.shape(image)[:2]
  if roi is not None:
    scale = tf.cast(tf.tile(size, [2]), tf.float32)
    box = tf.cast(tf.round(tf.cast(roi, tf.float32) * scale), tf.int32)
    image = _crop(image, box[0], box[1], box[2], box[3])
  elif spec.centre_crop:
    side = tf.reduce_min(size)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    image = _crop(image, top, left, top + side, left + side)
  image = tf.gather(PIXEL_VALUES, tf.cast(image, tf.int32))
  if image_size:
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, stored_shape)


def _preprocess(example, spec: DatasetSpec, image_size, stored_shape):
  """A stored example's preprocessed image and its int32 label."""
  image = preprocess_image(
      example["image"], spec=spec, image_size=image_size, channels=stored_shape[-1],
      roi=example[spec.roi_key] if spec.roi_key else None, stored_shape=stored_shape)
  return {"image": image, "label": tf.cast(example["label"], tf.int32)}


def steps_per_epoch(builder, split: Split, global_batch_size: int) -> int:
  """Full global batches in one epoch of the training split (the rest is dropped)."""
  smallest, _ = share_sizes(builder, split)
  steps = smallest // (global_batch_size // jax.process_count())
  if steps < 1:
    most = smallest * jax.process_count()
    raise ConfigError(f"config.batch_size={global_batch_size} is invalid: must be at most "
                      f"{most} (the training split has {split.size} examples)")
  return steps


def _epoch_seed(seed, epoch) -> int:
  return int(seed) * 1_000_003 + int(epoch)


def _shuffled(ds, builder, split: Split, seed, epoch):
  """`ds` (this process's share of `split`) in epoch `epoch`'s order: `epoch_order`'s.

  tf.data's shuffle with a buffer holding the whole share: the order depends
  only on (seed, epoch) and the share's size, never on the examples.
  """
  return ds.shuffle(share_sizes(builder, split)[1], seed=_epoch_seed(seed, epoch),
                    reshuffle_each_iteration=False)


def epoch_order(builder, split: Split, *, local_size, global_batch_size, seed,
                epoch) -> np.ndarray:
  """(steps, local batch), int32: the positions, in this process's share of `split` (of
  `local_size` examples), of the examples `train_batches` yields in epoch `epoch`.

  `_shuffled`'s order of the positions (tf.data's), computed in NumPy, 4 bytes a
  position (`camri.data.shuffle`).
  """
  local_batch = global_batch_size // jax.process_count()
  steps = steps_per_epoch(builder, split, global_batch_size)
  order = shuffle.tf_data_order(local_size, steps * local_batch, _epoch_seed(seed, epoch))
  return order.reshape(steps, local_batch)


def _examples(builder, spec: DatasetSpec, split: Split, image_size):
  """This process's share of `split` in stored order, preprocessed, each example with
  its tfds id ("id") and mask 1."""
  stored = _stored_shape(builder)
  return _read(builder, split).map(
      lambda ex: {**_preprocess(ex, spec, image_size, stored), "id": ex["tfds_id"],
                  "mask": tf.constant(1.0)},
      num_parallel_calls=tf.data.AUTOTUNE)


def _no_examples(examples, builder, image_size) -> dict[str, np.ndarray]:
  """A batch of none of `examples`, its images of the run's `image_shape`."""
  shapes = {"image": image_shape(builder, image_size)}
  return {key: np.zeros((0, *shapes.get(key, spec.shape)), spec.dtype.as_numpy_dtype)
          for key, spec in examples.element_spec.items()}


def stored_pixels(images: np.ndarray) -> np.ndarray | None:
  """float32 images in [0, 1] as uint8, when `PIXEL_VALUES` gives them back exactly; else None."""
  as_uint8 = np.round(images * np.float32(255.0)).astype(np.uint8)
  return as_uint8 if np.array_equal(PIXEL_VALUES[as_uint8], images) else None


def decoded_split(builder, spec: DatasetSpec, split: Split, *, image_size) -> dict[str, np.ndarray]:
  """This process's share of `split`, in stored order, preprocessed as the model sees it.

  {"image": (N, H, W, C), "label": int32 (N,), "id": bytes (N,), "mask": ones
  (N,)}: what `eval_batches` yields, unbatched and unpadded, and what
  `train_batches` yields before shuffling and augmentation. Images are uint8
  where every pixel is a stored value (the model sees `PIXEL_VALUES[k]`),
  float32 in [0, 1] otherwise (resized).

  Decoded `memory.DECODE_BATCH_BYTES` of float32 at a time, each batch
  stored as it arrives into arrays of the share's size, so the peak is those
  arrays and a few batches (`memory.feed_bytes`). The images stay uint8 until
  a batch is not exact; the rows stored by then are converted to float32
  (the only moment both are held).
  """
  examples = _examples(builder, spec, split, image_size)
  shape = image_shape(builder, image_size)
  rows = max(1, memory.DECODE_BATCH_BYTES // (4 * math.prod(shape)))
  capacity = share_sizes(builder, split)[1]
  stored = {key: np.zeros((capacity, *x.shape[1:]), np.uint8 if key == "image" else x.dtype)
            for key, x in _no_examples(examples, builder, image_size).items()}
  filled = 0
  batches = tfds.as_numpy(examples.batch(rows).prefetch(1))
  for batch in read_checked(batches, builder):
    n = len(batch["label"])
    if filled + n > capacity:
      raise RuntimeError(f"{split.name} split has more than its {capacity} examples")
    if stored["image"].dtype == np.uint8:
      as_uint8 = stored_pixels(batch["image"])
      if as_uint8 is None:
        stored["image"] = _as_float(stored["image"], filled)
      else:
        batch["image"] = as_uint8
    for key, x in stored.items():
      x[filled:filled + n] = batch[key]
    filled += n
  return {key: x[:filled] for key, x in stored.items()}


def _as_float(images: np.ndarray, filled: int) -> np.ndarray:
  """uint8 `images` as float32 `PIXEL_VALUES`, of which the first `filled` rows are set."""
  floats = np.zeros(images.shape, np.float32)
  floats[:filled] = PIXEL_VALUES[images[:filled]]
  return floats


def train_batches(builder, spec: DatasetSpec, split: Split, *, global_batch_size, image_size,
                  seed, epoch, start_step=0):
  """This process's batches for one training epoch, from `start_step` on; each example
  with its global id ("example", int32, `first_example`).

  The order depends only on (seed, epoch): an epoch resumed at `start_step`
  yields the batches an uninterrupted epoch yields from that step. The
  examples are read by index (`camri.data.records`), in `epoch_order`, from
  `start_step` on: memory holds a few batches, whatever the split's size, and
  a resume reads nothing it skips. Data that is not TFRecord files on disk
  (tfds's mock data) is read whole and shuffled (`_shuffled`).
  """
  local_batch = global_batch_size // jax.process_count()
  records = _share_records(builder, split)
  if records is None:
    return _shuffled_batches(builder, spec, split, global_batch_size=global_batch_size,
                             image_size=image_size, seed=seed, epoch=epoch,
                             start_step=start_step)
  order = epoch_order(builder, split, local_size=len(records),
                      global_batch_size=global_batch_size, seed=seed, epoch=epoch)
  first = first_example(builder, split)
  stored = _stored_shape(builder)
  features = builder.info.features

  def read(position):
    serialized = tf.numpy_function(records.read, [position], tf.string, stateful=False)
    example = features.deserialize_example(tf.ensure_shape(serialized, ()),
                                           decoders={"image": tfds.decode.SkipDecoding()})
    return {**_preprocess(example, spec, image_size, stored),
            "example": tf.cast(position + first, tf.int32)}

  ds = tf.data.Dataset.from_tensor_slices(order[start_step:].reshape(-1))
  ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch)
  return _with_mask(ds, builder, local_batch)


_SHARE_RECORDS = {}


def _share_records(builder, split: Split):
  """`records.share_records` of this process's share of `split`, indexed once per process; a
  truncated file raises DamagedDataError."""
  key = (str(builder.data_dir), split)
  if key not in _SHARE_RECORDS:
    try:
      _SHARE_RECORDS[key] = records_lib.share_records(
          builder, _share_split(split), split.held_out, split.keep_held_out)
    except records_lib.TruncatedRecordError as e:
      raise damaged(builder, "DataLossError", str(e)) from e
  return _SHARE_RECORDS[key]


def _with_mask(ds, builder, local_batch):
  ds = ds.map(lambda b: {**b, "mask": tf.ones([local_batch], tf.float32)})
  return read_checked(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)), builder)


def _shuffled_batches(builder, spec: DatasetSpec, split: Split, *, global_batch_size,
                      image_size, seed, epoch, start_step):
  """`train_batches` of data without random access: the share read in stored order into a
  shuffle buffer that holds all of it, every batch up to `start_step` decoded and dropped."""
  local_batch = global_batch_size // jax.process_count()
  steps = steps_per_epoch(builder, split, global_batch_size)
  ds = _read(builder, split).enumerate(start=first_example(builder, split))
  ds = _shuffled(ds, builder, split, seed, epoch)
  stored = _stored_shape(builder)
  ds = ds.map(lambda i, ex: {**_preprocess(ex, spec, image_size, stored),
                             "example": tf.cast(i, tf.int32)},
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).take(steps).skip(start_step)
  return _with_mask(ds, builder, local_batch)


def eval_steps(builder, split: Split, global_batch_size) -> int:
  """Evaluation steps so that every process covers its whole share."""
  _, largest = share_sizes(builder, split)
  return math.ceil(largest / (global_batch_size // jax.process_count()))


def eval_batches(builder, spec: DatasetSpec, split: Split, *, global_batch_size, image_size):
  """This process's evaluation batches, padded to full size with mask = 0.

  Each example carries its tfds id ("id", bytes; b"" for padding), for the
  saved predictions. Every process yields `eval_steps` batches (all-padding
  ones at the end where its share is smaller, their images of the run's
  `image_shape`) so that multi-host collectives stay in step.
  """
  local_batch = global_batch_size // jax.process_count()
  examples = _examples(builder, spec, split, image_size)
  ds = examples.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  steps = eval_steps(builder, split, global_batch_size)
  done = 0
  for batch in read_checked(tfds.as_numpy(ds), builder):
    yield pad_batch(batch, local_batch)
    done += 1
  if done < steps:
    padding = pad_batch(_no_examples(examples, builder, image_size), local_batch)
    for _ in range(done, steps):
      yield padding


def pad_batch(batch, size):
  """`batch` (arrays of N rows) padded to `size` rows of zeros (b"" for ids): mask 0."""
  n = batch["label"].shape[0]
  if n == size:
    return batch
  return jax.tree.map(
      lambda x: np.concatenate([x, np.full((size - n,) + x.shape[1:],
                                           b"" if x.dtype == object else 0, x.dtype)]),
      batch)
