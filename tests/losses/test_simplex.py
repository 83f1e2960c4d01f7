"""Simplex centres and the deep simplex classifier (Nirvana) losses."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import losses


@pytest.mark.parametrize("num_classes,dim,radius", [
    (2, 1, 1.0), (3, 2, 2.0), (4, 3, 1.0), (10, 9, 5.0), (10, 512, 200.0),
    (43, 42, 3.0), (50, 64, 1.0)])
def test_simplex_centers_are_a_regular_simplex_on_the_sphere(num_classes, dim,
                                                             radius):
  centers = np.asarray(losses.simplex_centers(num_classes, dim, radius),
                       np.float64)
  assert centers.shape == (num_classes, dim)
  np.testing.assert_allclose(np.linalg.norm(centers, axis=1), radius,
                             rtol=1e-6)
  np.testing.assert_allclose(centers.sum(0), 0.0, atol=1e-5 * radius)
  edge = radius * np.sqrt(2 * num_classes / (num_classes - 1))
  for i, j in itertools.combinations(range(num_classes), 2):
    np.testing.assert_allclose(np.linalg.norm(centers[i] - centers[j]), edge,
                               rtol=1e-6)
  assert losses.simplex_edge_length(num_classes, radius) == pytest.approx(edge)
  # Equal angles too: cos = -1 / (K - 1) between any two centres.
  gram = centers @ centers.T / radius**2
  off = gram[~np.eye(num_classes, dtype=bool)]
  np.testing.assert_allclose(off, -1.0 / (num_classes - 1), atol=1e-6)


def test_simplex_centers_reject_bad_input():
  with pytest.raises(ValueError, match="dim must be >= num_classes - 1"):
    losses.simplex_centers(10, 8)
  with pytest.raises(ValueError, match="num_classes must be >= 2"):
    losses.simplex_centers(1, 3)
  with pytest.raises(ValueError, match="radius must be > 0"):
    losses.simplex_centers(3, 2, 0.0)


@pytest.mark.parametrize("num_classes,dim", [(10, 9), (5, 16)])
def test_nirvana_losses_match_formula(num_classes, dim):
  rng = np.random.default_rng(num_classes + dim)
  radius = 4.0
  centers = losses.simplex_centers(num_classes, dim, radius)
  labels = rng.integers(0, num_classes, size=32)
  c = np.asarray(centers, np.float64)
  features = (c[labels] + rng.normal(size=(32, dim))).astype(np.float32)
  sq = np.sum((features.astype(np.float64) - c[labels])**2, axis=1)

  got = losses.nirvana_loss(features, centers, labels)
  assert got.shape == (32,)
  np.testing.assert_allclose(got, sq / dim, rtol=1e-5, atol=1e-6)

  margin = float(np.median(sq))  # half the examples inside the ball
  got = losses.nirvana_hinge_loss(features, centers, labels, margin)
  want = 0.25 * np.maximum(sq - margin, 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.sum(want == 0) >= 16 and np.all(np.asarray(got)[want == 0] == 0)


def test_default_hinge_margin_is_a_tenth_of_the_centre_distance():
  centers = np.asarray(losses.simplex_centers(10, 16, 200.0))
  assert losses.default_hinge_margin(10, 200.0) == pytest.approx(
      np.linalg.norm(centers[0] - centers[1]) / 10, rel=1e-6)


def test_prediction_is_nearest_centre():
  rng = np.random.default_rng(1)
  centers = losses.simplex_centers(6, 5, 2.0)
  features = rng.normal(size=(40, 5)).astype(np.float32) * 2
  scores = losses.nearest_center_scores(features, centers)
  c = np.asarray(centers, np.float64)
  dist = np.linalg.norm(features[:, None, :] - c[None], axis=-1)
  np.testing.assert_allclose(scores, -dist**2, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(scores, 1), np.argmin(dist, 1))


def test_gradients_finite_even_at_the_centre():
  centers = losses.simplex_centers(4, 3, 1.0)
  labels = jnp.array([0, 1, 2, 3])
  features = centers  # every feature exactly at its centre
  for fn in (lambda f: losses.nirvana_loss(f, centers, labels),
             lambda f: losses.nirvana_hinge_loss(f, centers, labels, 0.1)):
    grad = jax.grad(lambda f: jnp.mean(fn(f)))(features)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)
