"""Datasets: tfds builders for what tfds lacks, and one input pipeline.

Importing this package registers the tfds builders defined here.
"""

# Importing a builder module registers its tfds builder.
from camri.data import awa2  # noqa: F401
from camri.data import digits  # noqa: F401
from camri.data import gtsrb  # noqa: F401
from camri.data.manual import MissingArchiveError
from camri.data.pipeline import (
    AUGMENTATIONS,
    DatasetSpec,
    class_names,
    eval_batches,
    eval_steps,
    get_builder,
    steps_per_epoch,
    train_batches,
)

DATASETS = {
    "digits": DatasetSpec("digits", augmentations=()),
    "cifar10": DatasetSpec("cifar10", class_names=(
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
        "ship", "truck")),
    # Crop to the sign's ROI; no horizontal flip: it turns "turn left ahead"
    # into "turn right ahead" and "keep left" into "keep right".
    "gtsrb": DatasetSpec("gtsrb", roi_key="roi", augmentations=("crop",)),
    # Photos of every aspect ratio: centre square, then resize.
    "awa2": DatasetSpec("awa2", centre_crop=True),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"config.dataset={name!r} is unknown: choose one of {sorted(DATASETS)}")
  return DATASETS[name]
