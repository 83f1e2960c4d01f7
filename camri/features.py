"""Test-set features of a trained run, from its newest checkpoint.

For what metrics.csv cannot show: the distribution of the angle between each
test feature and its class weight (metrics.csv keeps its mean and variance),
and the normalised features themselves (the 2-D feature plot). The model, its
state and the checkpoint are built and restored by `camri.train`, the test
batches come from `camri.data`'s pipeline, so the numbers are those of the
run's evaluation at its last saved epoch.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from camri import checkpoint
from camri import data as data_lib
from camri import run_log
from camri import train
from camri.data import pipeline


@dataclasses.dataclass(frozen=True)
class RunFeatures:
  """A run's test set through its model (train=False, no margin)."""
  features: np.ndarray  # (N, D) the feature z of every test example.
  labels: np.ndarray  # (N,) integer labels.
  cosine: np.ndarray  # (N, K) cos(theta_k): the head's cosine to each class weight.
  class_weights: np.ndarray  # (D, K) unit class weight directions W_k / |W_k|.
  class_names: tuple
  config: dict  # The run's config.json.
  step: int  # The checkpoint's step.

  @property
  def angles(self) -> np.ndarray:
    """(N,) degrees between each feature and its own class weight, as metrics.csv's."""
    own = np.take_along_axis(self.cosine, self.labels[:, None], axis=1)[:, 0]
    return np.degrees(np.arccos(np.clip(own, -1.0, 1.0)))


def load_config(workdir, data_dir=None) -> ml_collections.ConfigDict:
  """The run's resolved config from config.json (data_dir replaced when given)."""
  record = run_log.read_config(workdir)
  if record is None:
    raise ValueError(f"{workdir} holds no {run_log.CONFIG_FILE}: not a run directory")
  record = {k: v for k, v in record.items() if k not in ("class_names", "num_classes")}
  config = ml_collections.ConfigDict(record)
  config.loss.important_classes = tuple(config.loss.important_classes)
  if data_dir is not None:
    config.data_dir = data_dir
  return config


def load_test_features(workdir, data_dir=None) -> RunFeatures:
  """Restores the run's newest checkpoint and passes its test split through the model.

  Args:
    workdir: a run directory written by `camri.main`.
    data_dir: the tfds data_dir, when not the run's own.

  Raises:
    ValueError: the workdir has no config.json or no readable checkpoint.
  """
  config = load_config(workdir, data_dir)
  record = run_log.read_config(workdir)
  spec = data_lib.get_spec(config.dataset)
  builder = data_lib.get_builder(spec, config.data_dir)
  num_classes = builder.info.features["label"].num_classes
  model, objective = train.make_model(config, num_classes)
  state = train.abstract_train_state(config, model,
                                     data_lib.image_shape(builder, config.image_size),
                                     train.Sharding.over_all_devices().replicated)
  manager = checkpoint.manager(workdir, config.keep_checkpoints)
  try:
    restored = checkpoint.restore_latest(manager, state, train.empty_train_sums(num_classes))
  finally:
    manager.close()
  if restored is None:
    raise ValueError(f"{workdir} has no readable checkpoint under {run_log.CHECKPOINT_DIR}/")
  step, state, _ = restored
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  # The variables are an argument, not a closure, so they are not baked into
  # the compiled program as constants.
  @jax.jit
  def forward(variables, images):
    outputs = model.apply(variables, images, train=False)
    return outputs["features"], outputs["cosine"]

  features, cosine, labels = [], [], []
  # eval_batches pads the last batch (mask 0) to one size for every batch.
  for batch in pipeline.eval_batches(builder, spec, spec.test_split,
                                     global_batch_size=config.eval_batch_size,
                                     image_size=config.image_size):
    keep = batch["mask"] > 0
    z, cos = jax.device_get(forward(variables, batch["image"]))
    features.append(z[keep])
    cosine.append(cos[keep])
    labels.append(batch["label"][keep])
  # cos(e_d, W_k) of the unit vectors e_d is W_k / |W_k|: the class weight
  # directions of any head that outputs "cosine", without knowing its params.
  head = objective.head.apply({"params": state.params["head"]},
                              jnp.eye(config.feature_dim, dtype=jnp.float32))
  return RunFeatures(
      features=np.concatenate(features), labels=np.concatenate(labels).astype(np.int64),
      cosine=np.concatenate(cosine), class_weights=np.asarray(head["cosine"]),
      class_names=tuple(record.get("class_names") or ()), config=record, step=int(step))
