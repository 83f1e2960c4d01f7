"""CC-Loss: the SE attention module and the batch distance term against NumPy."""

import jax
from jax import test_util as jax_test_util
import jax.numpy as jnp
import numpy as np

from camri import losses


def np_cc_term(attention, labels):
  """intra / inter: mean pairwise distance within classes over between them."""
  a = np.asarray(attention, np.float64)
  n = len(labels)
  intra, inter = [], []
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      d = np.linalg.norm(a[i] - a[j])
      (intra if labels[i] == labels[j] else inter).append(d)
  if not intra or not inter:
    return 0.0
  return np.mean(intra) / np.mean(inter)


def np_ce(logits, labels):
  z = np.asarray(logits, np.float64)
  top = z.max(1)
  log_z = top + np.log(np.exp(z - top[:, None]).sum(1))
  return log_z - z[np.arange(len(labels)), labels]


def test_channel_attention_matches_squeeze_and_excitation():
  rng = np.random.default_rng(0)
  feature_map = rng.normal(size=(4, 5, 5, 32)).astype(np.float32)
  module = losses.ChannelAttention(reduction=8)
  params = module.init(jax.random.PRNGKey(0), feature_map)
  got = module.apply(params, feature_map)
  assert got.shape == (4, 32)
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)["params"]
  squeezed = feature_map.astype(np.float64).mean(axis=(1, 2))
  hidden = np.maximum(
      squeezed @ p["squeeze"]["kernel"] + p["squeeze"]["bias"], 0.0)
  assert p["squeeze"]["kernel"].shape == (32, 4)
  want = 1 / (1 + np.exp(-(hidden @ p["excite"]["kernel"]
                           + p["excite"]["bias"])))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cc_loss_matches_formula():
  rng = np.random.default_rng(1)
  logits = (2 * rng.normal(size=(16, 5))).astype(np.float32)
  attention = rng.uniform(size=(16, 12)).astype(np.float32)
  labels = rng.integers(0, 5, size=16)
  term = np_cc_term(attention, labels)
  assert 0 < term
  np.testing.assert_allclose(
      losses.channel_correlation_term(attention, labels), term, rtol=1e-5)
  got = losses.cc_loss(logits, attention, labels, cc_weight=0.7)
  assert got.shape == (16,)
  np.testing.assert_allclose(got, np_ce(logits, labels) + 0.7 * term,
                             rtol=1e-5, atol=1e-5)
  # Per-example values whose mean is the batch loss CE + lambda * L_CC.
  np.testing.assert_allclose(np.mean(got),
                             np.mean(np_ce(logits, labels)) + 0.7 * term,
                             rtol=1e-5)


def test_identical_attention_within_classes_gives_zero_term():
  labels = np.array([0, 0, 1, 1, 2])
  attention = np.eye(3, dtype=np.float32)[labels] * 0.8 + 0.1
  np.testing.assert_allclose(
      losses.channel_correlation_term(attention, labels), 0.0, atol=1e-7)
  grad = jax.grad(lambda a: losses.channel_correlation_term(a, labels))(
      jnp.asarray(attention))
  assert np.all(np.isfinite(grad))


def test_batches_without_pairs_of_one_kind_give_zero_term():
  rng = np.random.default_rng(2)
  attention = rng.uniform(size=(4, 6)).astype(np.float32)
  for labels in (np.array([0, 1, 2, 3]), np.array([2, 2, 2, 2])):
    assert np_cc_term(attention, labels) == 0.0
    np.testing.assert_allclose(
        losses.channel_correlation_term(attention, labels), 0.0)
    grad = jax.grad(lambda a: losses.channel_correlation_term(a, labels))(
        jnp.asarray(attention))
    assert np.all(np.isfinite(grad))


def test_gradients_finite_through_module_and_loss():
  rng = np.random.default_rng(3)
  feature_map = rng.normal(size=(8, 4, 4, 16)).astype(np.float32)
  logits = rng.normal(size=(8, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
  module = losses.ChannelAttention()
  params = module.init(jax.random.PRNGKey(1), feature_map)

  def total(params, logits):
    attention = module.apply(params, feature_map)
    return jnp.mean(losses.cc_loss(logits, attention, labels))

  grads = jax.grad(total, argnums=(0, 1))(params, jnp.asarray(logits))
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_padding_rows_are_left_out_with_where():
  # An evaluation batch padded with 3 zero rows: under `where` the term is the
  # unpadded batch's, as the NumPy formula over the 6 real rows gives.
  rng = np.random.default_rng(3)
  attention = rng.uniform(size=(6, 5)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  padded_attention = np.concatenate([attention, np.zeros((3, 5), np.float32)])
  padded_labels = np.concatenate([labels, np.zeros(3, labels.dtype)])
  padded_logits = np.concatenate([logits, np.zeros((3, 3), np.float32)])
  where = np.arange(9) < 6
  term = jax.jit(losses.channel_correlation_term)(padded_attention, padded_labels, where=where)
  np.testing.assert_allclose(term, np_cc_term(attention, labels), rtol=1e-5)
  assert abs(float(losses.channel_correlation_term(padded_attention, padded_labels))
             - np_cc_term(attention, labels)) > 1e-3  # Without it, the padding counts.
  got = jax.jit(losses.cc_loss)(padded_logits, padded_attention, padded_labels, 0.7,
                                where=where)[:6]
  np.testing.assert_allclose(got, np_ce(logits, labels) + 0.7 * np_cc_term(attention, labels),
                             rtol=1e-5)
  jax_test_util.check_grads(
      lambda a: losses.channel_correlation_term(a, padded_labels, where=where),
      (jnp.asarray(padded_attention),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
