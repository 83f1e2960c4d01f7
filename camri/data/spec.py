"""What the pipeline needs to know about a dataset, and its tfds builder.

TensorFlow is not imported here (tfds loads it lazily, and reading a builder's
info does not need it), so a config's dataset and class names are checked in
about a second, before a run loads TensorFlow for `camri.data.pipeline`.
"""

from collections.abc import Callable, Iterable
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from camri.config_lib import ConfigError
from camri.data import download

AUGMENTATIONS = ("flip", "crop")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How the pipeline reads one dataset.

  Attributes:
    tfds_name: the tfds builder name.
    train_split, test_split: tfds split names.
    roi_key: feature holding a tfds BBox (ymin, xmin, ymax, xmax in [0, 1]) to
      crop to before resizing, or None.
    augmentations: the augmentations that make sense for this dataset
      (a subset of `AUGMENTATIONS`; e.g. no horizontal flip for traffic signs).
    class_names: the class names, where the builder only learns them when the
      data is prepared (tfds's cifar10); None: the builder's ClassLabel names.
    centre_crop: crop the largest centred square before resizing, so that
      images of any aspect ratio are resized without distortion (AwA2);
      False: resize the whole image (or ROI) to a square.
    validation_split: a tfds split the builder provides as the validation
      split; None, or a split this builder's data lacks (an image-folder
      tree without val/): it is held out of `train_split` by
      `config.validation_fraction` (`camri.data.splits`).
    builder_kwargs: (the run's config, its workdir or None) -> extra keyword
      arguments of `tfds.builder` (e.g. the folder a builder reads, or the
      prepared copy the run in the workdir is bound to); None: none.
    check_classes: (the validated config, the builder) -> None, raising
      ConfigError where a class the run needs has no examples in a split;
      None: every split has every class.
    run_files: the builder -> {file name: text} written in a run's workdir
      with its config.json; None: none.
  """
  tfds_name: str
  train_split: str = "train"
  test_split: str = "test"
  roi_key: str | None = None
  augmentations: tuple[str, ...] = AUGMENTATIONS
  class_names: tuple[str, ...] | None = None
  centre_crop: bool = False
  validation_split: str | None = None
  builder_kwargs: Callable[..., dict] | None = None
  check_classes: Callable[..., None] | None = None
  run_files: Callable[..., dict[str, str]] | None = None


class TfdsIds:
  """An immutable set of tfds ids (`<shard file>__<index>`, ASCII), held as one sorted
  NumPy bytes array: the longest id's width an id (about 40 bytes), not a Python
  string and a set slot each (about 130), so a large folder's held-out ids cost
  little memory. Iterating yields the ids as str, in sorted order.
  """

  __slots__ = ("array", "_hash")

  def __init__(self, ids: Iterable[str | bytes]):
    ids = [i.encode("ascii") if isinstance(i, str) else i for i in ids]
    self.array = np.unique(np.array(ids, np.bytes_)) if ids else np.zeros(0, "S1")
    self._hash = hash(self.array.tobytes() + str(self.array.dtype).encode())

  def contains(self, ids: np.ndarray) -> np.ndarray:
    """Whether each id of `ids` (a bytes array) is in the set: a bool array of its shape."""
    if not len(self.array):
      return np.zeros(np.shape(ids), bool)
    where = np.minimum(np.searchsorted(self.array, ids), len(self.array) - 1)
    return self.array[where] == ids

  def __contains__(self, tfds_id) -> bool:
    tfds_id = tfds_id.encode("ascii") if isinstance(tfds_id, str) else tfds_id
    return bool(self.contains(np.array([tfds_id], np.bytes_))[0])

  def __len__(self) -> int:
    return len(self.array)

  def __iter__(self):
    return (i.decode("ascii") for i in self.array)

  def __eq__(self, other) -> bool:
    return (isinstance(other, TfdsIds) and self.array.dtype == other.array.dtype
            and np.array_equal(self.array, other.array))

  def __hash__(self) -> int:
    return self._hash

  def __repr__(self) -> str:
    return f"TfdsIds({len(self)} ids)"


@dataclasses.dataclass(frozen=True)
class Split:
  """The examples of one split a run reads: a tfds split, or part of one.

  Attributes:
    name: the run's name for it: "train", "val" or "test" (metric prefixes,
      predictions/<name>.npz).
    tfds_split: the tfds split read.
    held_out: tfds ids of the validation examples carved out of
      `tfds_split`; None: no example is held out.
    keep_held_out: True: only the `held_out` examples (the validation split);
      False: all the others (the training split).
    size: its number of examples, over all processes.
  """
  name: str
  tfds_split: str
  size: int
  held_out: TfdsIds | None = None
  keep_held_out: bool = False


def get_builder(spec: DatasetSpec, data_dir=None, prepare=True, **kwargs):
  """The tfds builder, prepared on first use (never downloads when mocked).

  Raises:
    download.DownloadError: the dataset's files could not be downloaded.
  """
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **kwargs)
  if prepare:
    try:
      download.download_and_prepare(builder)
    except FileExistsError:
      # Another process (a parallel run of a grid) prepared it first: tfds
      # renames a complete copy into place, so theirs is ready to read.
      builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **kwargs)
      if not builder.is_prepared():
        raise
    else:
      if not builder.info.splits:
        # Another process's copy was renamed into place after this builder
        # was made: tfds reuses it without reading its info (no splits).
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **kwargs)
  return builder


def class_names(spec: DatasetSpec, builder=None) -> list[str]:
  """The spec's class names, else the builder's (from its info: no data needed)."""
  return list(spec.class_names or builder.info.features["label"].names)


def image_shape(builder, image_size: int) -> tuple[int, int, int]:
  """(height, width, channels) of the model's input: resized, or the dataset's own."""
  height, width, channels = builder.info.features["image"].shape
  if image_size:
    return (image_size, image_size, channels)
  if height is None or width is None:
    raise ConfigError("config.image_size=0 is invalid: this dataset's images vary "
                      "in size, set image_size (e.g. 32)")
  return (height, width, channels)
