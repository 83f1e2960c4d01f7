"""Margin-softmax losses against NumPy computations of their published formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import losses

RTOL, ATOL = 1e-5, 1e-5
# The authors clip cos to [-1 + 1e-7, 1 - 1e-7] in float32; these are those
# bounds as float32 rounds them.
LO, HI = float(np.float32(-1 + 1e-7)), float(np.float32(1 - 1e-7))


def np_cos(features, weights):
  f = features / np.linalg.norm(features, axis=1, keepdims=True)
  w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
  return f @ w


def np_margin_loss(features, weights, labels, margins, scale, kind):
  """-log softmax(s * logits)_t with the target logit psi(theta_t, m_t)."""
  features = np.asarray(features, np.float64)
  weights = np.asarray(weights, np.float64)
  cos = np_cos(features, weights)
  logits = cos.copy()
  for n, t in enumerate(labels):
    c, m = cos[n, t], margins[t]
    theta = np.arccos(np.clip(c, LO, HI))
    if kind == "additive_angular":
      logits[n, t] = np.cos(theta + m)
    elif kind == "additive_cosine":
      logits[n, t] = c - m
    else:
      logits[n, t] = np.cos(m * theta)
  logits = scale * logits
  log_z = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1))
  log_z += logits.max(1)
  return log_z - logits[np.arange(len(labels)), labels]


def random_problem(seed, n=32, d=16, k=10):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(n, d)).astype(np.float32)
  weights = rng.normal(size=(d, k)).astype(np.float32)
  labels = rng.integers(0, k, size=n)
  return features, weights, labels


def assert_finite_grads(loss_fn, features, weights, labels):
  grads = jax.grad(lambda f, w: jnp.mean(loss_fn(f, w, labels)),
                   argnums=(0, 1))(jnp.asarray(features), jnp.asarray(weights))
  for g in grads:
    assert np.all(np.isfinite(g))


def test_camri_matches_formula_with_one_important_class():
  features, weights, labels = random_problem(0)
  margins = losses.margin_vector(10, [3], 4 * np.pi / 64)
  got = losses.camri_loss(features, weights, labels, margins, 16.0)
  want = np_margin_loss(features, weights, labels, np.asarray(margins), 16.0,
                        "additive_angular")
  assert got.shape == (32,)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_camri_several_important_classes_with_different_margins():
  features, weights, labels = random_problem(1)
  margins = losses.margin_vector(10, [0, 3, 5], [0.2, 0.5, 1.1])
  np.testing.assert_allclose(
      margins, [0.2, 0, 0, 0.5, 0, 1.1, 0, 0, 0, 0], rtol=1e-6)
  got = losses.camri_loss(features, weights, labels, margins, 8.0)
  want = np_margin_loss(features, weights, labels, np.asarray(margins), 8.0,
                        "additive_angular")
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_arcface_cosface_normface_match_formula():
  features, weights, labels = random_problem(2)
  k = weights.shape[1]
  np.testing.assert_allclose(
      losses.arcface_loss(features, weights, labels, 0.5, 16.0),
      np_margin_loss(features, weights, labels, [0.5] * k, 16.0,
                     "additive_angular"), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(
      losses.cosface_loss(features, weights, labels, 0.35, 16.0),
      np_margin_loss(features, weights, labels, [0.35] * k, 16.0,
                     "additive_cosine"), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(
      losses.normface_loss(features, weights, labels, 16.0),
      np_margin_loss(features, weights, labels, [0.0] * k, 16.0,
                     "additive_cosine"), rtol=RTOL, atol=ATOL)


def test_class_sensitive_cosface_matches_formula():
  features, weights, labels = random_problem(3)
  margins = losses.margin_vector(10, [2, 7], [0.35, 0.2])
  got = losses.class_sensitive_cosface_loss(features, weights, labels,
                                            margins, 16.0)
  want = np_margin_loss(features, weights, labels, np.asarray(margins), 16.0,
                        "additive_cosine")
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_multiplicative_kind_identity_is_one():
  features, weights, labels = random_problem(4)
  assert losses.NO_MARGIN["multiplicative_angular"] == 1.0
  margins = losses.margin_vector(10, [4], 2.0,
                                 default=losses.NO_MARGIN[
                                     "multiplicative_angular"])
  np.testing.assert_allclose(margins, [1, 1, 1, 1, 2, 1, 1, 1, 1, 1])
  got = losses.margin_softmax_loss(features, weights, labels, margins, 16.0,
                                   kind="multiplicative_angular")
  want = np_margin_loss(features, weights, labels, np.asarray(margins), 16.0,
                        "multiplicative")
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # Margin 1 everywhere is no margin at all: NormFace, up to the clip.
  ones = jnp.ones((10,))
  np.testing.assert_allclose(
      losses.margin_softmax_loss(features, weights, labels, ones, 16.0,
                                 kind="multiplicative_angular"),
      losses.normface_loss(features, weights, labels, 16.0), rtol=1e-5,
      atol=1e-5)


def test_theta_plus_margin_beyond_pi_matches_clipped_arccos_form():
  # Features nearly opposite to their class weight: theta close to pi, so
  # theta + m > pi for m = pi/4.
  rng = np.random.default_rng(5)
  weights = rng.normal(size=(8, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 3])
  features = (-weights.T + 0.05 * rng.normal(size=(4, 8))).astype(np.float32)
  cos = np_cos(features, weights)[np.arange(4), labels]
  m = np.pi / 4
  assert np.all(np.arccos(cos) + m > np.pi)
  margins = np.full(4, m, np.float32)
  got = losses.camri_loss(features, weights, labels, margins, 16.0)
  want = np_margin_loss(features, weights, labels, margins, 16.0,
                        "additive_angular")
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # The target logit itself against the authors' clipped-arccos expression.
  c = np.asarray(losses.cosine_logits(features, weights))[np.arange(4), labels]
  psi = losses.margin_target_logit(jnp.asarray(c), m)
  np.testing.assert_allclose(
      psi, np.cos(np.arccos(np.clip(c.astype(np.float64), LO, HI)) + m),
      rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("kind", losses.MARGIN_KINDS)
def test_parallel_and_antiparallel_features_finite_and_matching(sign, kind):
  rng = np.random.default_rng(6)
  weights = rng.normal(size=(8, 5)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4])
  # cos = +-1 exactly up to rounding: each feature is +-(its class weight).
  features = (sign * 3.0 * weights.T).astype(np.float32)
  m = 2.0 if kind == "multiplicative_angular" else 0.5
  margins = np.full(5, m, np.float32)
  got = losses.margin_softmax_loss(features, weights, labels, margins, 16.0,
                                   kind)
  assert np.all(np.isfinite(got))
  want = np_margin_loss(features, weights, labels, margins, 16.0,
                        "multiplicative" if kind.startswith("mult") else kind)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert_finite_grads(
      lambda f, w, y: losses.margin_softmax_loss(f, w, y, margins, 16.0, kind),
      features, weights, labels)


def test_gradients_finite_for_every_margin_loss():
  features, weights, labels = random_problem(7)
  margins = losses.margin_vector(10, [1, 3], [0.3, 0.6])
  for fn in (
      lambda f, w, y: losses.camri_loss(f, w, y, margins, 16.0),
      lambda f, w, y: losses.arcface_loss(f, w, y, 0.5, 64.0),
      lambda f, w, y: losses.cosface_loss(f, w, y, 0.35, 64.0),
      lambda f, w, y: losses.class_sensitive_cosface_loss(f, w, y, margins,
                                                          16.0),
      lambda f, w, y: losses.normface_loss(f, w, y, 16.0),
  ):
    assert_finite_grads(fn, features, weights, labels)
  # A zero feature: the normalisation must not divide by zero.
  features[0] = 0.0
  assert_finite_grads(
      lambda f, w, y: losses.camri_loss(f, w, y, margins, 16.0),
      features, weights, labels)


def test_prediction_is_argmax_cosine():
  features, weights, _ = random_problem(8)
  scores = losses.cosine_logits(features, weights)
  np.testing.assert_allclose(scores, np_cos(features, weights), atol=1e-6)
  np.testing.assert_array_equal(np.argmax(scores, 1),
                                np.argmax(np_cos(features, weights), 1))


def test_margin_vector_rejects_bad_input():
  with pytest.raises(ValueError, match="margins"):
    losses.margin_vector(10, [1, 2], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="important class 10"):
    losses.margin_vector(10, [10], 0.1)
  with pytest.raises(ValueError, match="margin kind"):
    losses.margin_target_logit(jnp.zeros(3), 0.1, kind="additive")
  np.testing.assert_allclose(losses.margin_vector(4, [1, 2], (0.25,)),
                             [0, 0.25, 0.25, 0])
  np.testing.assert_allclose(losses.margin_vector(3, [], 0.5), [0, 0, 0])
