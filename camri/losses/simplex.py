"""Deep simplex classifier ("Nirvana") loss: fixed class centres on a simplex.

Cevikalp, Saribas & Uzun, "Reaching Nirvana: Maximizing the Margin in Both
Euclidean and Angular Spaces for Deep Neural Network Classification", IEEE
TNNLS 2024 (doi 10.1109/TNNLS.2024.3437641; arXiv 2212.11747, "Deep Simplex
Classifier ..."); reference code github.com/Cevikalp/dsc.

The K class centres are fixed (not learned) at the vertices of a regular
simplex inscribed in the sphere of radius u: all pairwise distances are equal,
so the margin between classes is maximal both in Euclidean distance and in
angle. Features are pulled to their own class centre:

    L_n = 1/D ||f_n - c_{t_n}||^2

(the reference code's `nn.MSELoss(f, c_t)`: the mean over the D dimensions).
The hinge variant (reference code `NirvanaHinge`) only pulls a feature into a
ball around its centre:

    L_n = 1/4 max(0, ||f_n - c_{t_n}||^2 - margin)

with the reference code's margin ||c_i - c_j|| / 10 (`default_hinge_margin`)
and its 1/4 factor (it divides the batch sum by 2 * 2 * N).

Prediction: the nearest centre, argmax_k `nearest_center_scores`.

Centres here are the K vertices of the regular (K-1)-simplex, centred at the
origin. The reference code (`FindCenters`) instead builds the D+1 vertices of
the D-simplex and keeps the first K: also equidistant and on the sphere, but
for K < D + 1 not centred at the origin and with the smaller edge
u sqrt(2 (D+1) / D) instead of u sqrt(2K / (K-1)).
"""

import jax.numpy as jnp
import numpy as np

from camri.losses.distances import squared_distances


def simplex_centers(num_classes: int, dim: int, radius: float = 1.0):
  """Vertices of a regular simplex centred at the origin, on a sphere.

  Args:
    num_classes: K >= 2 vertices.
    dim: the embedding dimension D >= K - 1 (the simplex spans K - 1
      dimensions; the rest of the coordinates are zero).
    radius: u > 0, the norm of every vertex.

  Returns:
    (K, D) float32 centres c_k with |c_k| = u, sum_k c_k = 0 and
    |c_i - c_j| = u sqrt(2K / (K - 1)) for every i != j.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  if dim < num_classes - 1:
    raise ValueError(
        f"dim must be >= num_classes - 1 = {num_classes - 1}, got {dim}")
  if radius <= 0:
    raise ValueError(f"radius must be > 0, got {radius}")
  k = num_classes
  # Helmert basis of the subspace orthogonal to (1, ..., 1): row j has
  # 1/sqrt(j(j+1)) in its first j entries and -j/sqrt(j(j+1)) in entry j+1.
  # Its columns are the projections of the unit vectors e_1..e_K, i.e. the
  # vertices of a regular simplex centred at the origin, of norm
  # sqrt((K-1)/K).
  helmert = np.zeros((k - 1, k))
  for j in range(1, k):
    helmert[j - 1, :j] = 1.0
    helmert[j - 1, j] = -float(j)
    helmert[j - 1] /= np.sqrt(j * (j + 1))
  vertices = helmert.T * (radius / np.sqrt((k - 1) / k))
  centers = np.zeros((k, dim))
  centers[:, :k - 1] = vertices
  return jnp.asarray(centers, jnp.float32)


def simplex_edge_length(num_classes: int, radius: float = 1.0):
  """|c_i - c_j| of `simplex_centers`: u sqrt(2K / (K - 1))."""
  return radius * float(np.sqrt(2.0 * num_classes / (num_classes - 1)))


def default_hinge_margin(num_classes: int, radius: float = 1.0):
  """The reference code's hinge margin: the centres' distance / 10."""
  return simplex_edge_length(num_classes, radius) / 10.0


def nirvana_loss(features, centers, labels):
  """Deep simplex classifier loss, per example: 1/D ||f_n - c_{t_n}||^2.

  Args:
    features: (N, D) features.
    centers: (K, D) fixed centres from `simplex_centers`.
    labels: (N,) integer labels.

  Returns:
    (N,) losses.
  """
  return jnp.mean(jnp.square(features - centers[labels]), axis=-1)


def nirvana_hinge_loss(features, centers, labels, margin):
  """Hinge variant, per example: 1/4 max(0, ||f_n - c_{t_n}||^2 - margin).

  Args:
    features: (N, D) features.
    centers: (K, D) fixed centres from `simplex_centers`.
    labels: (N,) integer labels.
    margin: the squared radius of the ball around the centre inside which a
      feature costs nothing; the reference code uses `default_hinge_margin`.

  Returns:
    (N,) losses.
  """
  sq_dist = jnp.sum(jnp.square(features - centers[labels]), axis=-1)
  return 0.25 * jnp.maximum(sq_dist - margin, 0.0)


def nearest_center_scores(features, centers):
  """-||f_n - c_k||^2: (N, K) scores whose argmax is the nearest centre."""
  return -squared_distances(features, centers)
