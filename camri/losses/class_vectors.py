"""Per-class vectors that single out the important classes.

Class-sensitive losses take one number per class: a margin (CAMRI,
class-sensitive CosFace), a weight (WCE), a cost (RWWCE). Each is a vector
that holds a default value everywhere except at the important classes.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def important_class_vector(num_classes: int,
                           important_classes: Sequence[int],
                           values: float | Sequence[float],
                           default: float = 0.0,
                           name: str = "values"):
  """The (K,) vector: `values` at the important classes, `default` elsewhere.

  Args:
    num_classes: K.
    important_classes: class indices in [0, K).
    values: one value for all important classes, or one per important class.
    default: the value of every other class (the identity of the loss's
      per-class term: 0 for an additive margin, 1 for a weight or a
      multiplicative margin).
    name: what `values` are, for error messages.

  Returns:
    (K,) float32 array.
  """
  important_classes = tuple(int(k) for k in important_classes)
  if np.ndim(values) == 0:
    values = (float(values),) * len(important_classes)
  values = tuple(float(v) for v in values)
  if len(values) == 1 and len(important_classes) > 1:
    values = values * len(important_classes)
  if len(values) != len(important_classes):
    raise ValueError(
        f"got {len(values)} {name} for {len(important_classes)} important "
        f"classes: give one, or one per important class")
  vector = [float(default)] * num_classes
  for k, value in zip(important_classes, values):
    if not 0 <= k < num_classes:
      raise ValueError(f"important class {k} not in [0, {num_classes})")
    vector[k] = value
  return jnp.asarray(vector, jnp.float32)
