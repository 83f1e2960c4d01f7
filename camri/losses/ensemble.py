"""Ensemble soft-margin softmax (EM-Softmax) loss.

Wang, Zhang, Lei, Liu, Guo & Li, "Ensemble Soft-Margin Softmax Loss for
Image Classification", IJCAI 2018 (arXiv 1805.03922). No reference code was
released.

V linear classifiers W^1..W^V (each (D, K), no bias) share the feature x.
Each is trained with the soft-margin softmax, the cross-entropy of the logits
with m subtracted from the true class's logit:

    L_SM(W; x, t) = -log( e^{W_t x - m} / (e^{W_t x - m} + sum_{k != t} e^{W_k x}) )

and their diversity is encouraged by penalising the Hilbert-Schmidt
independence criterion (HSIC, Gretton et al. 2005) between every pair of
classifiers, with linear kernels over the K class vectors (the columns W_k):

    HSIC(W^u, W^v) = (K - 1)^-2 tr(W^uT W^u H W^vT W^v H),   H = I_K - 1/K 1 1^T
    L_n            = sum_v L_SM(W^v; x_n, t_n) + lambda sum_{u < v} HSIC(W^u, W^v)

The HSIC term depends on the weights only: `em_softmax_loss` adds it to every
example's value, so the batch mean is the batch loss.

The class vectors are the HSIC samples, as in the HSIC diversity term of
diversity-induced multi-view subspace clustering (Cao et al., CVPR 2015),
whose inner-product kernel is taken over a representation's columns. It
makes the penalty invariant to adding one vector to every class vector, the
transformation the softmax cannot see.
Unverified (no released code, and the paper's method section could not be
read here): that sample axis, whether the per-head losses are summed (here) or
averaged, and whether the pair sum runs over u < v (here) or u != v (a factor
2 in lambda).

Prediction: the average of the heads' softmax outputs, `em_softmax_scores`.
"""

import jax
import jax.numpy as jnp
import optax


def ensemble_logits(features, weights):
  """Logits of every head: (V, N, K) = x @ W^v for weights (V, D, K)."""
  return jnp.einsum("nd,vdk->vnk", features, weights)


def soft_margin_softmax_loss(logits, labels, margin):
  """Soft-margin softmax, per example: cross-entropy of logits - m * onehot(t).

  Args:
    logits: (N, K) logits.
    labels: (N,) integer labels.
    margin: m >= 0, subtracted from the true class's logit.

  Returns:
    (N,) losses.
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits - margin * onehot, labels)


def linear_hsic(a, b):
  """Empirical HSIC with linear kernels between paired samples (rows).

    HSIC(A, B) = (n - 1)^-2 tr(A A^T H B B^T H) = (n - 1)^-2 ||(HA)^T (HB)||_F^2

  Args:
    a: (n, p) samples.
    b: (n, q) the same n samples in another representation.

  Returns:
    The scalar HSIC >= 0.
  """
  n = a.shape[0]
  a = a - jnp.mean(a, axis=0, keepdims=True)
  b = b - jnp.mean(b, axis=0, keepdims=True)
  return jnp.sum(jnp.square(a.T @ b)) / (n - 1) ** 2


def pairwise_hsic(weights):
  """sum_{u < v} HSIC(W^u, W^v) over the K class vectors, weights (V, D, K).

  0 when V == 1.
  """
  num_heads = weights.shape[0]
  total = jnp.zeros((), weights.dtype)
  for u in range(num_heads):
    for v in range(u + 1, num_heads):
      total = total + linear_hsic(weights[u].T, weights[v].T)
  return total


def em_softmax_loss(features, weights, labels, margin=0.5, hsic_weight=0.1):
  """EM-Softmax, per example: sum_v L_SM(W^v) + lambda sum_{u<v} HSIC(W^u, W^v).

  Args:
    features: (N, D) features.
    weights: (V, D, K) the V heads' class weights, no bias.
    labels: (N,) integer labels.
    margin: soft margin m >= 0.
    hsic_weight: lambda >= 0.

  Returns:
    (N,) losses whose mean is the batch loss.
  """
  logits = ensemble_logits(features, weights)
  per_head = jax.vmap(soft_margin_softmax_loss, in_axes=(0, None, None))(
      logits, labels, margin)
  return jnp.sum(per_head, axis=0) + hsic_weight * pairwise_hsic(weights)


def em_softmax_scores(features, weights):
  """Mean over heads of softmax(x @ W^v): (N, K) probabilities; argmax predicts."""
  return jnp.mean(jax.nn.softmax(ensemble_logits(features, weights), axis=-1),
                  axis=0)
