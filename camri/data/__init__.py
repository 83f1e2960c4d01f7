"""Datasets: tfds builders for what tfds lacks, the registry, one input pipeline.

Importing this package registers the tfds builders defined here; it does not
load TensorFlow, so configs are validated before anything heavy starts. The
tf.data input pipeline is `camri.data.pipeline`.
"""

from camri.data import digits  # noqa: F401  (registers the `digits` builder)
from camri.data.spec import (
    AUGMENTATIONS,
    DatasetSpec,
    class_names,
    get_builder,
    image_shape,
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
