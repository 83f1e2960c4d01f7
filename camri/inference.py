"""A trained run, loaded for use: its config, data, model and newest checkpoint.

`load_run(workdir)` is the one restore for every reader of a run
(`camri.features`, `camri.predict`, `camri.export`): the model and the state
are built by `camri.train`, the data opened by `camri.data.dataset`, exactly
as training built them, and the checkpoint is opened read-only, so a reader
never changes a workdir and is safe on a run still training.

The model needs only the dataset's image shape and class names (config.json
records both), so the data itself is opened on first use of
`Run.dataset`: predicting on new images or exporting the model never reads,
prepares or downloads the run's dataset.
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from camri import checkpoint
from camri import prepare
from camri import data as data_lib
from camri import run_log
from camri import train
from camri.data import dataset as dataset_lib
from camri.data.dataset import Dataset
from camri.data.spec import DatasetSpec
from camri.models import heads
from camri.objectives import Objective


class RunNotFoundError(ValueError):
  """The directory holds no run, or no checkpoint of it that restores."""


def _config(record: dict, data_dir=None) -> ml_collections.ConfigDict:
  """The run's resolved config from its config.json `record` (data_dir replaced when given)."""
  config = ml_collections.ConfigDict(
      {k: v for k, v in record.items() if k not in prepare.DERIVED_FIELDS})
  config.loss.important_classes = tuple(config.loss.important_classes)
  if data_dir is not None:
    config.data_dir = data_dir
  return config


@dataclasses.dataclass(frozen=True)
class Run:
  """A run restored from its newest intact checkpoint."""
  workdir: str
  config: ml_collections.ConfigDict
  record: dict  # config.json as written (with class_names).
  spec: DatasetSpec
  image_shape: tuple[int, int, int]  # The model's input (height, width, channels).
  class_names: tuple[str, ...]
  model: Any  # The flax module.
  objective: Objective
  variables: dict  # {"params", "batch_stats"}.
  step: int
  prepare_data: bool = True

  @functools.cached_property
  def dataset(self) -> Dataset:
    """The run's splits and input pipeline, opened (and prepared, if asked) on first use.

    An image-folder run reads the prepared copy it trained on (`camri.data.folder`).

    Raises:
      ConfigError: the copy is gone and the tree changed since the run started.
    """
    return dataset_lib.open_dataset(self.config, prepare=self.prepare_data, workdir=self.workdir)

  @property
  def angular(self) -> bool:
    """Whether the head is angular (CAMRI, ArcFace, ...): its scores are cos(theta_k)."""
    return isinstance(self.objective.head, heads.AngularHead)

  def apply(self, variables, images):
    """The model's outputs ({"features", "cosine", "logits", ...}) at inference (no margin)."""
    return self.model.apply(variables, images, train=False)

  def scores(self, variables, images) -> jax.Array:
    """(N, K) prediction-rule scores of images in [0, 1]; their argmax is the prediction."""
    return self.objective.scores(self.apply(variables, images))


def load_run(workdir, data_dir=None, prepare_data=True) -> Run:
  """Restores the run in `workdir` from its newest intact checkpoint, read-only.

  Args:
    workdir: a run directory written by `camri.main`.
    data_dir: the tfds data_dir, when not the run's own.
    prepare_data: prepare the dataset if it is not, when `Run.dataset` is
      first used (readers of the test split need it; predicting on new
      images never opens it).

  Raises:
    RunNotFoundError: no config.json, or no checkpoint that restores.
  """
  record = run_log.read_config(workdir)
  if record is None:
    raise RunNotFoundError(f"{workdir} holds no {run_log.CONFIG_FILE}: not a run directory "
                           "(give the --workdir of a camri.main run)")
  config = _config(record, data_dir)
  spec = data_lib.get_spec(config.dataset)
  if "image_shape" in record:  # Without the data: an image-folder tree may be gone.
    image_shape, class_names = tuple(record["image_shape"]), tuple(record["class_names"])
  else:  # config.json from before "image_shape" was recorded.
    _, builder = data_lib.builder_for(config, prepare=False)
    image_shape = data_lib.image_shape(builder, config.image_size)
    class_names = tuple(record.get("class_names") or data_lib.class_names(spec, builder))
  model, objective = train.make_model(config, len(class_names))
  sharding = train.Sharding.over_all_devices()
  manager = checkpoint.manager(workdir, read_only=True)
  try:
    restored = train.restore_train_state(manager, config, model, image_shape,
                                         sharding.replicated,
                                         train.empty_train_sums(len(class_names)),
                                         delete_unreadable=False)
  except checkpoint.UnreadableCheckpointError as e:
    raise RunNotFoundError(str(e)) from None
  finally:
    manager.close()
  if restored is None:
    raise RunNotFoundError(f"{workdir} has no checkpoint under {run_log.CHECKPOINT_DIR}/ "
                           "(has the run trained an epoch?)")
  step, state, _ = restored
  return Run(workdir=str(workdir), config=config, record=record, spec=spec,
             image_shape=image_shape, class_names=class_names, model=model,
             objective=objective,
             variables={"params": state.params, "batch_stats": state.batch_stats},
             step=int(step), prepare_data=prepare_data)


def split_outputs(run: Run, split: str, keys=("features", "cosine")) -> dict[str, np.ndarray]:
  """The model's `keys` outputs and the labels ("label") of every example of `split`, in order."""

  @jax.jit
  def forward(variables, images):
    outputs = run.apply(variables, images)
    return {key: outputs[key] for key in keys}

  kept = []
  # eval_batches pads the last batch (mask 0) to one size for every batch.
  for batch in run.dataset.eval_batches(split, global_batch_size=run.config.eval_batch_size):
    real = batch["mask"] > 0
    out = jax.device_get(forward(run.variables, batch["image"]))
    kept.append({"label": batch["label"][real], **{k: v[real] for k, v in out.items()}})
  return {key: np.concatenate([k[key] for k in kept]) for key in kept[0]}
