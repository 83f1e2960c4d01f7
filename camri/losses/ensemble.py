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
classifiers, with linear kernels:

    HSIC(A, B) = (D - 1)^-2 tr(A A^T H B B^T H),   H = I_D - 1/D 1 1^T
    L_n        = sum_v L_SM(W^v; x_n, t_n) + lambda sum_{u < v} HSIC(W^u, W^v)

(the D rows of a classifier, one K-vector of class weights per feature
dimension, are the HSIC samples). The HSIC term depends on the weights only:
`em_softmax_loss` adds it to every example's value, so the batch mean is the
batch loss.

Uncertain (no code to check against): whether the per-head losses are summed
(here) or averaged, whether the pair sum runs over u < v (here) or u != v (a
factor 2 in lambda), and which dimension holds the HSIC samples. Only the
abstract and introduction could be read; the method section and its
equations were not found.

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
  """sum_{u < v} HSIC(W^u, W^v) for weights (V, D, K); 0 when V == 1."""
  num_heads = weights.shape[0]
  total = jnp.zeros((), weights.dtype)
  for u in range(num_heads):
    for v in range(u + 1, num_heads):
      total = total + linear_hsic(weights[u], weights[v])
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
