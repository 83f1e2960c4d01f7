"""Competing ratio loss against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from camri import losses


def np_crl(logits, labels, alpha, beta):
  """Zhang et al.: -log p_t + beta * log(alpha + sum_{j != t} p_j)."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  rows = np.arange(len(labels))
  p_t = p[rows, labels]
  competing = p.sum(1) - p_t
  return -np.log(p_t) + beta * np.log(alpha + competing)


def random_logits(seed, n=32, k=10):
  rng = np.random.default_rng(seed)
  return ((3 * rng.normal(size=(n, k))).astype(np.float32),
          rng.integers(0, k, size=n))


def test_crl_matches_formula():
  logits, labels = random_logits(0)
  for alpha, beta in [(1.0, 1.0), (1.5, 1.0), (0.0, 0.5), (2.0, 0.25)]:
    got = losses.competing_ratio_loss(logits, labels, alpha, beta)
    assert got.shape == (32,)
    np.testing.assert_allclose(got, np_crl(logits, labels, alpha, beta),
                               rtol=1e-5, atol=1e-5)


def test_crl_matches_authors_code_form():
  # The reference code: log((alpha' - p_t)^beta / p_t) with alpha' = alpha + 1.
  logits, labels = random_logits(1)
  z = logits.astype(np.float64)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  p_t = p[np.arange(32), labels]
  want = np.log((1.0 - p_t) ** 0.25 / p_t)
  np.testing.assert_allclose(
      losses.competing_ratio_loss(logits, labels, alpha=0.0, beta=0.25), want,
      rtol=1e-5, atol=1e-5)


def test_crl_positive_for_alpha_at_least_one():
  logits, labels = random_logits(2)
  logits[np.arange(32), labels] += 20.0  # confident and correct
  got = losses.competing_ratio_loss(logits, labels, 1.0, 1.0)
  assert np.all(np.asarray(got) >= 0)


def test_gradients_finite_including_alpha_zero_and_confident_logits():
  logits, labels = random_logits(3)
  logits[0, labels[0]] = 200.0  # p_t rounds to 1 in float32
  for alpha in (0.0, 1.0):
    grad = jax.grad(lambda z: jnp.mean(
        losses.competing_ratio_loss(z, labels, alpha, 0.5)))(
            jnp.asarray(logits))
    assert np.all(np.isfinite(grad))
  value = losses.competing_ratio_loss(logits[:1], labels[:1], 0.0, 0.5)
  assert np.isfinite(value[0])
