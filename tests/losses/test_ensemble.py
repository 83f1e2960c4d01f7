"""EM-Softmax: soft-margin heads plus an HSIC diversity term, against NumPy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from camri import losses


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_hsic(a, b):
  """Gretton et al.: (n - 1)^-2 tr(K H L H) with linear kernels K = AA^T."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  n = a.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  return np.trace(a @ a.T @ h @ b @ b.T @ h) / (n - 1) ** 2


def np_em_softmax(features, weights, labels, margin, lam):
  f = np.asarray(features, np.float64)
  rows = np.arange(len(labels))
  total = np.zeros(len(labels))
  for w in np.asarray(weights, np.float64):
    z = f @ w
    z[rows, labels] -= margin
    total += -np.log(np_softmax(z)[rows, labels])
  # The HSIC samples are the K class vectors, the columns of each (D, K) W.
  hsic = sum(np_hsic(weights[u].T, weights[v].T)
             for u, v in itertools.combinations(range(len(weights)), 2))
  return total + lam * hsic


def random_problem(seed, n=16, d=12, k=5, heads=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32),
          (0.5 * rng.normal(size=(heads, d, k))).astype(np.float32),
          rng.integers(0, k, size=n))


def test_linear_hsic_matches_trace_form():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(12, 5)).astype(np.float32)
  b = rng.normal(size=(12, 7)).astype(np.float32)
  np.testing.assert_allclose(losses.linear_hsic(a, b), np_hsic(a, b),
                             rtol=1e-5)
  # Independent of a shift of either representation (the kernels are centred).
  np.testing.assert_allclose(losses.linear_hsic(a + 3.0, b), np_hsic(a, b),
                             rtol=1e-4)


def test_em_softmax_matches_formula():
  features, weights, labels = random_problem(1)
  got = losses.em_softmax_loss(features, weights, labels, margin=0.5,
                               hsic_weight=0.3)
  assert got.shape == (16,)
  np.testing.assert_allclose(
      got, np_em_softmax(features, weights, labels, 0.5, 0.3), rtol=1e-5,
      atol=1e-5)


def test_hsic_runs_over_class_vectors():
  _, weights, _ = random_problem(5, heads=2)
  want = np_hsic(weights[0].T, weights[1].T)
  np.testing.assert_allclose(losses.pairwise_hsic(weights), want, rtol=1e-5)
  # Adding one vector to every class vector changes no softmax output, and
  # leaves the penalty unchanged too.
  shift = np.random.default_rng(6).normal(size=(2, 12, 1)).astype(np.float32)
  np.testing.assert_allclose(losses.pairwise_hsic(weights + shift), want,
                             rtol=1e-4)
  # Identical heads are maximally dependent; a head with all class vectors
  # equal carries no class structure and is independent of anything.
  assert losses.pairwise_hsic(np.stack([weights[0], weights[0]])) > 0
  flat = np.stack([weights[0], np.repeat(weights[1][:, :1], 5, axis=1)])
  np.testing.assert_allclose(losses.pairwise_hsic(flat), 0.0, atol=1e-7)


def test_single_head_is_soft_margin_softmax():
  features, weights, labels = random_problem(2, heads=1)
  got = losses.em_softmax_loss(features, weights, labels, 0.4, 10.0)
  np.testing.assert_allclose(
      got, losses.soft_margin_softmax_loss(features @ weights[0], labels, 0.4),
      rtol=1e-6)
  np.testing.assert_allclose(
      got, np_em_softmax(features, weights, labels, 0.4, 0.0), rtol=1e-5,
      atol=1e-5)


def test_prediction_averages_the_heads_softmax():
  features, weights, _ = random_problem(3)
  scores = losses.em_softmax_scores(features, weights)
  want = np.mean([np_softmax(features.astype(np.float64) @ w)
                  for w in weights.astype(np.float64)], axis=0)
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(scores, 1), 1.0, rtol=1e-5)


def test_gradients_finite():
  features, weights, labels = random_problem(4)
  grads = jax.grad(
      lambda f, w: jnp.mean(losses.em_softmax_loss(f, w, labels)),
      argnums=(0, 1))(jnp.asarray(features), jnp.asarray(weights))
  for g in grads:
    assert np.all(np.isfinite(g))
