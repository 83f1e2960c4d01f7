"""CE, WCE and RWWCE against NumPy computations of their published formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import losses

RTOL, ATOL = 1e-5, 1e-6


def np_softmax(logits):
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def np_rwwce(logits, labels, fn, fp):
  """Ho & Wookey's loop: -sum_k [y_k C_FN[k] log p_k + (y @ C_FP)_k log(1-p_k)]."""
  p = np_softmax(logits)
  k = logits.shape[1]
  fn_matrix = np.diag(np.asarray(fn, np.float64))  # the authors' (K, K) form
  fp_matrix = np.asarray(fp, np.float64) * (1 - np.eye(k))
  y = np.eye(k)[labels]
  with np.errstate(divide="ignore", invalid="ignore"):
    # 0 * log(0) = 0: a zero cost for a probability that rounds to 0 or 1.
    fn_term = np.where(y @ fn_matrix == 0, 0.0, (y @ fn_matrix) * np.log(p))
    fp_term = np.where(y @ fp_matrix == 0, 0.0,
                       (y @ fp_matrix) * np.log(1 - p))
  return -np.sum(fn_term + fp_term, axis=1)


def random_logits(seed, n=32, k=10, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(n, k))).astype(np.float32)
  return logits, rng.integers(0, k, size=n)


def test_cross_entropy_matches_formula():
  logits, labels = random_logits(0)
  want = -np.log(np_softmax(logits)[np.arange(32), labels])
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), want,
                             rtol=RTOL, atol=ATOL)


def test_wce_matches_formula_and_helper_weights():
  logits, labels = random_logits(1)
  weights = losses.class_weights(10, [3, 5], 2.0)
  np.testing.assert_allclose(weights, [1, 1, 1, 2, 1, 2, 1, 1, 1, 1])
  want = -np.asarray(weights)[labels] * np.log(
      np_softmax(logits)[np.arange(32), labels])
  got = losses.weighted_cross_entropy(logits, labels, weights)
  assert got.shape == (32,)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(
      losses.weighted_cross_entropy(logits, labels, jnp.ones(10)),
      losses.cross_entropy(logits, labels), rtol=1e-6)
  np.testing.assert_allclose(losses.class_weights(4, [0, 2], [3.0, 5.0]),
                             [3, 1, 5, 1])


def test_rwwce_matches_authors_formula_with_full_cost_matrices():
  logits, labels = random_logits(2)
  rng = np.random.default_rng(3)
  fn = rng.uniform(0.5, 3.0, size=10).astype(np.float32)
  fp = rng.uniform(0.0, 2.0, size=(10, 10)).astype(np.float32)
  got = losses.rwwce_loss(logits, labels, fn, fp)
  assert got.shape == (32,)
  # fp's diagonal is ignored, as the authors require it to be zero.
  np.testing.assert_allclose(got, np_rwwce(logits, labels, fn, fp),
                             rtol=RTOL, atol=1e-5)


def test_rwwce_default_weights_favour_important_classes():
  fn, fp = losses.rwwce_weights(4, [1], fn_weight=3.0, fp_weight=0.5)
  np.testing.assert_allclose(fn, [1, 3, 1, 1])
  np.testing.assert_allclose(fp, [[0, 0, 0, 0], [0.5, 0, 0.5, 0.5],
                                  [0, 0, 0, 0], [0, 0, 0, 0]])
  logits, labels = random_logits(4, k=4)
  fn, fp = losses.rwwce_weights(4, [1, 2])
  np.testing.assert_allclose(losses.rwwce_loss(logits, labels, fn, fp),
                             np_rwwce(logits, labels, fn, fp), rtol=RTOL,
                             atol=1e-5)


def test_rwwce_without_false_positive_costs_is_wce():
  logits, labels = random_logits(5)
  fn = losses.class_weights(10, [7], 4.0)
  np.testing.assert_allclose(
      losses.rwwce_loss(logits, labels, fn, jnp.zeros((10, 10))),
      losses.weighted_cross_entropy(logits, labels, fn), rtol=1e-6, atol=1e-6)


def test_rwwce_finite_when_a_probability_rounds_to_one():
  # p_t == 1 in float32: log(1 - p_k) for the other classes is still finite.
  logits = np.array([[40.0, 0.0, -5.0], [0.0, 60.0, 1.0]], np.float32)
  labels = np.array([0, 1])
  fn, fp = np.ones(3), np.ones((3, 3))
  got = losses.rwwce_loss(logits, labels, fn, fp)
  np.testing.assert_allclose(got, np_rwwce(logits, labels, fn, fp),
                             rtol=1e-4, atol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(losses.rwwce_loss(z, labels, fn, fp)))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  # A confidently wrong prediction: the false-positive term is large, finite.
  wrong = losses.rwwce_loss(np.array([[0.0, 30.0, 0.0]], np.float32),
                            np.array([0]), fn, fp)
  assert np.isfinite(wrong[0]) and wrong[0] > 55


def test_gradients_finite():
  logits, labels = random_logits(6)
  fn, fp = losses.rwwce_weights(10, [3])
  for fn_loss in (
      lambda z: losses.cross_entropy(z, labels),
      lambda z: losses.weighted_cross_entropy(z, labels,
                                              losses.class_weights(10, [3])),
      lambda z: losses.rwwce_loss(z, labels, fn, fp),
  ):
    grad = jax.grad(lambda z: jnp.mean(fn_loss(z)))(jnp.asarray(logits))
    assert np.all(np.isfinite(grad))


def test_bad_shapes_are_rejected():
  logits, labels = random_logits(7, k=4)
  with pytest.raises(ValueError, match="class_weights must have shape"):
    losses.weighted_cross_entropy(logits, labels, jnp.ones(3))
  with pytest.raises(ValueError, match="fn_weights must have shape"):
    losses.rwwce_loss(logits, labels, jnp.ones((4, 4)), jnp.ones((4, 4)))
  with pytest.raises(ValueError, match="fp_weights must have shape"):
    losses.rwwce_loss(logits, labels, jnp.ones(4), jnp.ones(4))
  with pytest.raises(ValueError, match="important weights"):
    losses.class_weights(4, [0, 1], [1.0, 2.0, 3.0])
