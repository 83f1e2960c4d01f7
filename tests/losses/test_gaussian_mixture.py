"""Large-margin Gaussian mixture loss against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from camri import losses


def np_lgm(features, means, labels, alpha, lam):
  """Wan et al.: CE of -d_k with d_t scaled by (1 + alpha), + lam * d_t."""
  f = np.asarray(features, np.float64)
  mu = np.asarray(means, np.float64)
  d = 0.5 * np.sum((f[:, None, :] - mu[None]) ** 2, axis=-1)
  rows = np.arange(len(labels))
  logits = -d.copy()
  logits[rows, labels] *= 1.0 + alpha
  top = logits.max(1)
  log_z = top + np.log(np.exp(logits - top[:, None]).sum(1))
  return log_z - logits[rows, labels] + lam * d[rows, labels]


def random_problem(seed, n=32, d=8, k=10):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(k, d)).astype(np.float32)
  labels = rng.integers(0, k, size=n)
  features = (means[labels] + rng.normal(size=(n, d))).astype(np.float32)
  return features, means, labels


def test_lgm_matches_formula():
  features, means, labels = random_problem(0)
  for alpha, lam in [(0.1, 0.01), (0.3, 0.1), (1.0, 0.0)]:
    got = losses.lgm_loss(features, means, labels, alpha, lam)
    assert got.shape == (32,)
    np.testing.assert_allclose(got, np_lgm(features, means, labels, alpha, lam),
                               rtol=1e-5, atol=1e-5)


def test_lgm_without_margin_and_likelihood_is_ce_of_scores():
  features, means, labels = random_problem(1)
  np.testing.assert_allclose(
      losses.lgm_loss(features, means, labels, 0.0, 0.0),
      losses.cross_entropy(losses.lgm_scores(features, means), labels),
      rtol=1e-6, atol=1e-6)


def test_prediction_is_nearest_mean_without_margin():
  features, means, labels = random_problem(2)
  scores = losses.lgm_scores(features, means)
  dist = np.linalg.norm(features[:, None, :] - means[None].astype(np.float64),
                        axis=-1)
  np.testing.assert_allclose(scores, -0.5 * dist**2, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(scores, 1), np.argmin(dist, 1))
  # The margin is training-only: lgm_logits differ from the scores on the
  # label alone.
  logits = np.asarray(losses.lgm_logits(features, means, labels, 0.5))
  rows = np.arange(32)
  np.testing.assert_allclose(logits[rows, labels],
                             1.5 * np.asarray(scores)[rows, labels], rtol=1e-6)
  mask = np.ones_like(logits, bool)
  mask[rows, labels] = False
  np.testing.assert_array_equal(logits[mask], np.asarray(scores)[mask])


def test_gradients_finite():
  features, means, labels = random_problem(3)
  features[0] = means[labels[0]]  # a feature exactly at its mean
  grads = jax.grad(
      lambda f, m: jnp.mean(losses.lgm_loss(f, m, labels, 0.1, 0.01)),
      argnums=(0, 1))(jnp.asarray(features), jnp.asarray(means))
  for g in grads:
    assert np.all(np.isfinite(g))
