"""A run's data: the prepared tfds builder, its splits and the input pipeline over them.

Training, the readers of a run (`camri.inference`) and the benchmark open a
run's data through `open_dataset(config)`, so every one of them sees the same
splits, image shape and preprocessing.
"""

import dataclasses
from typing import Any

from camri import data as data_lib
from camri.data import pipeline
from camri.data import splits as splits_lib
from camri.data.spec import DatasetSpec
from camri.data.spec import Split


@dataclasses.dataclass(frozen=True)
class Dataset:
  """`config.dataset` as a run reads it.

  Attributes:
    spec, builder: the dataset's `DatasetSpec` and prepared tfds builder.
    splits: {"train", "val" (when there is a validation split), "test": Split}.
    image_shape: the model's input (height, width, channels).
    image_size: `config.image_size` (0: the stored size).
    class_names: the K class names.
  """
  spec: DatasetSpec
  builder: Any
  splits: dict[str, Split]
  image_shape: tuple[int, int, int]
  image_size: int
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def eval_splits(self) -> list[str]:
    """The splits evaluated every epoch: "val" (when there is one), then "test"."""
    return [name for name in ("val", "test") if name in self.splits]

  def steps_per_epoch(self, global_batch_size: int) -> int:
    return pipeline.steps_per_epoch(self.builder, self.splits["train"], global_batch_size)

  def train_batches(self, *, global_batch_size, seed, epoch, start_step=0):
    return pipeline.train_batches(
        self.builder, self.spec, self.splits["train"], global_batch_size=global_batch_size,
        image_size=self.image_size, seed=seed, epoch=epoch, start_step=start_step)

  def eval_batches(self, split: str, *, global_batch_size):
    return pipeline.eval_batches(self.builder, self.spec, self.splits[split],
                                 global_batch_size=global_batch_size, image_size=self.image_size)

  def describe(self) -> str:
    """"train 1293, val 144, test 360": the size of every split."""
    return ", ".join(f"{name} {split.size}" for name, split in self.splits.items())


def open_dataset(config, prepare=True, workdir=None) -> Dataset:
  """The data of a run with (validated) `config`; the builder is prepared unless `prepare` is False.

  `workdir`: the run's directory (its data is the prepared copy it is bound to, see `builder_for`).
  """
  spec, builder = data_lib.builder_for(config, prepare=prepare, workdir=workdir)
  return Dataset(
      spec=spec, builder=builder,
      splits=splits_lib.run_splits(builder, spec, config.get("validation_fraction", 0.0)),
      image_shape=data_lib.image_shape(builder, config.image_size),
      image_size=config.image_size,
      class_names=tuple(data_lib.class_names(spec, builder)))
