"""Competing ratio loss (CRL).

Zhang, Guo, Wang, Chang, Zhao, Ma & Han, "Competing Ratio Loss for
Discriminative Multi-class Image Classification", Neurocomputing 2021
(arXiv 1912.11642; earlier version arXiv 1907.13349); reference code
github.com/PRIS-CV/CRL-code.

CRL adds to the cross-entropy the log of the probability mass of the
competing (wrong) classes, offset by alpha and weighted by beta:

    L_n = -log p_t + beta * log(alpha + sum_{j != t} p_j),   p = softmax(logits)

i.e. -log of the ratio p_t / (alpha + sum_{j != t} p_j)^beta. With alpha >= 1
every term is >= 0 (the paper's reason for the offset); alpha = 0 gives the
negative log-likelihood ratio (NLLR) form scaled by beta.

The letters follow the reference code's `ratio` module, which computes
log((alpha' - p_t)^beta / p_t) with alpha' = alpha + 1 (sum_{j != t} p_j =
1 - p_t); its public runs use alpha' = 1 (alpha = 0) and beta in {0.25, 0.5,
0.75}. The defaults here, alpha = 1 and beta = 1, keep the loss positive.

Prediction: argmax_k logits.
"""

import jax
import jax.numpy as jnp
import optax


def competing_ratio_loss(logits, labels, alpha=1.0, beta=1.0):
  """CRL, per example: -log p_t + beta log(alpha + sum_{j != t} p_j).

  log sum_{j != t} p_j is computed as logsumexp_{j != t} logits_j - logsumexp_j
  logits_j, never as log(1 - p_t), so it does not underflow to log(0) when
  p_t rounds to 1 (which matters for alpha = 0).

  Args:
    logits: (N, K) logits, K >= 2.
    labels: (N,) integer labels.
    alpha: offset alpha >= 0.
    beta: weight beta >= 0 of the competing term.

  Returns:
    (N,) losses.
  """
  others = labels[:, None] != jnp.arange(logits.shape[-1])[None, :]
  log_others = (jax.nn.logsumexp(logits, axis=-1, where=others)
                - jax.nn.logsumexp(logits, axis=-1))
  competing = jnp.logaddexp(jnp.log(jnp.asarray(alpha, logits.dtype)),
                            log_others)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
          + beta * competing)
