"""Distances between features and class centres, for the centre-based losses."""

import jax.numpy as jnp


def squared_distances(features, centers):
  """||f_n - c_k||^2 for every feature and centre.

  Computed from the differences (not |f|^2 - 2<f, c> + |c|^2), so values near
  zero are exact and never negative.

  Args:
    features: (N, D) features.
    centers: (K, D) centres, one row per class.

  Returns:
    (N, K) squared Euclidean distances.
  """
  return jnp.sum(jnp.square(features[:, None, :] - centers[None, :, :]),
                 axis=-1)
