"""Datasets: tfds builders for what tfds lacks, and one input pipeline.

Importing this package registers the tfds builders defined here.
"""

from camri.data import digits  # noqa: F401  (registers the `digits` builder)
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
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"config.dataset={name!r} is unknown: choose one of {sorted(DATASETS)}")
  return DATASETS[name]
