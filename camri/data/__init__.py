"""Datasets: tfds builders for what tfds lacks, the registry, one input pipeline.

Importing this package registers the tfds builders defined here; it does not
load TensorFlow, so configs are validated before anything heavy starts. The
tf.data input pipeline is `camri.data.pipeline`.
"""

# Importing a builder module registers its tfds builder.
from camri.data import awa2  # noqa: F401
from camri.data import digits  # noqa: F401
from camri.data import folder
from camri.data import gtsrb  # noqa: F401
from camri.data.download import DownloadError
from camri.data.manual import MissingArchiveError
from camri.data.spec import (
    AUGMENTATIONS,
    DatasetSpec,
    Split,
    class_names,
    get_builder,
    image_shape,
)

DATASETS = {
    # Crop shifts an 8x8 digit by up to a pixel; a flip would turn digits into others'
    # mirror images.
    "digits": DatasetSpec("digits", augmentations=("crop",)),
    "cifar10": DatasetSpec("cifar10", class_names=(
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
        "ship", "truck")),
    # Crop to the sign's ROI; no horizontal flip: it turns "turn left ahead"
    # into "turn right ahead" and "keep left" into "keep right".
    "gtsrb": DatasetSpec("gtsrb", roi_key="roi", augmentations=("crop",)),
    # Photos of every aspect ratio: centre square, then resize.
    "awa2": DatasetSpec("awa2", centre_crop=True),
    # A user's image-folder tree (config.folder); val/ where the tree has one.
    "folder": DatasetSpec("folder", validation_split="val",
                          builder_kwargs=folder.builder_kwargs,
                          check_classes=folder.check_classes, run_files=folder.run_files),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"config.dataset={name!r} is unknown: choose one of {sorted(DATASETS)}")
  return DATASETS[name]


def builder_for(config, prepare=True, workdir=None):
  """(spec, tfds builder) of `config.dataset`, prepared on first use unless `prepare` is False.

  `workdir`: the run's directory, when there is one: a run bound to a prepared
  copy of its data (an image-folder tree's) reads that copy.
  """
  spec = get_spec(config.dataset)
  kwargs = spec.builder_kwargs(config, workdir) if spec.builder_kwargs else {}
  return spec, get_builder(spec, config.data_dir, prepare=prepare, **kwargs)


def config_class_names(config) -> list[str]:
  """The class names of `config.dataset` (an image folder's: its tree's), without preparing it."""
  spec = get_spec(config.dataset)
  builder = None if spec.class_names else builder_for(config, prepare=False)[1]
  return class_names(spec, builder)
