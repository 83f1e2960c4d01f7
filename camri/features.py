"""Test-set features of a trained run, from its newest checkpoint.

For what metrics.csv cannot show: the distribution of the angle between each
test feature and its class weight (metrics.csv keeps its mean and variance),
and the normalised features themselves (the 2-D feature plot). The model, its
state and the checkpoint are restored by `camri.inference.load_run`
(read-only: safe on a run still training), the test batches come from the run's
input pipeline, so the numbers are those of the run's evaluation at its last
saved epoch.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from camri import inference


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


def load_test_features(workdir, data_dir=None) -> RunFeatures:
  """Restores the run's newest checkpoint (read-only) and passes its test split through the model.

  Args:
    workdir: a run directory written by `camri.main`.
    data_dir: the tfds data_dir, when not the run's own.

  Raises:
    inference.RunNotFoundError (a ValueError): the workdir has no config.json
      or no readable checkpoint.
  """
  run = inference.load_run(workdir, data_dir)
  out = inference.split_outputs(run, "test", keys=("features", "cosine"))
  # cos(e_d, W_k) of the unit vectors e_d is W_k / |W_k|: the class weight
  # directions of any head that outputs "cosine", without knowing its params.
  head = run.objective.head.apply({"params": run.variables["params"]["head"]},
                                  jnp.eye(run.config.feature_dim, dtype=jnp.float32))
  return RunFeatures(
      features=out["features"], labels=out["label"].astype(np.int64), cosine=out["cosine"],
      class_weights=np.asarray(head["cosine"]), class_names=run.class_names,
      config=run.record, step=run.step)
