"""Large-margin Gaussian mixture (L-GM) loss.

Wan, Zhong, Li & Chen, "Rethinking Feature Distribution for Loss Functions in
Image Classification", CVPR 2018 (arXiv 1803.02988); reference code
github.com/WeitaoVan/L-GM-loss.

Features are modelled as a Gaussian mixture with one component per class,
mean mu_k (learned) and covariance Lambda_k. With equal priors the class
logit is the negative Mahalanobis term, and the margin multiplies the true
class's distance by (1 + alpha):

    d_k      = 1/2 (f - mu_k)^T Lambda_k^{-1} (f - mu_k)
    logit_k  = -d_k                  for k != t
    logit_t  = -(1 + alpha) d_t
    L_n      = cross_entropy(softmax(logit), t) + lambda d_t

where lambda d_t is the likelihood regularisation (the negative
log-likelihood of the feature under its own class component, up to
constants). This module implements the identity-covariance variant,
d_k = 1/2 ||f - mu_k||^2 (the reference TensorFlow code `lgm_logits`, and the
Caffe layer with `update_sigma: false`); the paper also learns a diagonal
Lambda_k, which adds 1/2 log|Lambda_k| to d_k.

Defaults alpha = 0.1, lambda = 0.01 are the reference TensorFlow code's
(`inference_lgm`); its Caffe CIFAR-100 example grows alpha from 0.1 to 0.3.

Prediction: the nearest mean, argmax_k `lgm_scores` = -1/2 ||f - mu_k||^2
(no margin).
"""

import jax.numpy as jnp
import optax

from camri.losses.distances import squared_distances


def lgm_scores(features, means):
  """-1/2 ||f_n - mu_k||^2: (N, K) logits without margin; argmax predicts."""
  return -0.5 * squared_distances(features, means)


def lgm_logits(features, means, labels, alpha):
  """L-GM training logits: -d_k off the label, -(1 + alpha) d_t on it.

  Args:
    features: (N, D) features.
    means: (K, D) class means mu_k.
    labels: (N,) integer labels.
    alpha: margin alpha >= 0.

  Returns:
    (N, K) logits.
  """
  scores = lgm_scores(features, means)
  is_target = labels[:, None] == jnp.arange(means.shape[0])[None, :]
  return jnp.where(is_target, (1.0 + alpha) * scores, scores)


def lgm_loss(features, means, labels, alpha=0.1, likelihood_weight=0.01):
  """L-GM loss (identity covariance), per example.

    L_n = -log softmax(lgm_logits)_{t_n} + lambda * 1/2 ||f_n - mu_{t_n}||^2

  Args:
    features: (N, D) features.
    means: (K, D) class means mu_k.
    labels: (N,) integer labels.
    alpha: margin alpha >= 0.
    likelihood_weight: lambda >= 0.

  Returns:
    (N,) losses.
  """
  logits = lgm_logits(features, means, labels, alpha)
  likelihood = 0.5 * jnp.sum(jnp.square(features - means[labels]), axis=-1)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
          + likelihood_weight * likelihood)
