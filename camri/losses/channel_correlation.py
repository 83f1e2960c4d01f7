"""Channel correlation loss (CC-Loss).

Song, Chang, Ma, Li & Tan, "CC-Loss: Channel Correlation Loss for Image
Classification", ICPR 2020 (arXiv 2010.05469). No reference code was
released; the formula below follows the paper's description.

A squeeze-and-excitation channel attention (Hu et al., CVPR 2018) is computed
per sample from the backbone's last feature map X (N, H, W, C):

    a_n = sigmoid(W_2 relu(W_1 mean_{h,w} X_n))          (N, C)

and a Euclidean distance matrix over the batch, D_ij = ||a_i - a_j||, makes
the attention vectors of a class identical and those of different classes
different:

    intra = mean of D_ij over pairs i != j with t_i == t_j
    inter = mean of D_ij over pairs with t_i != t_j
    L_CC  = intra / inter
    L     = cross_entropy(logits, t) + lambda * L_CC

L_CC is a batch-level term: `cc_loss` returns cross_entropy_n + lambda * L_CC
for every n, so the mean over the batch is the batch loss. L_CC is 0 when the
batch has no pair of one kind (no two samples of a class, or a single class).
The ratio form (rather than intra - inter) and lambda = 1 are this module's
reading of the paper, which describes the intra- and inter-class distances
but whose exact combination could not be checked against released code.
Only the abstract could be read (the method section and its equations were
not found); a third-party reading note confirms the SE attention and names a
section 2.3, "Computational Complexity Reduction", not reproduced here.

Prediction: argmax_k logits (the attention only shapes training).
"""

import flax.linen as nn
import jax.numpy as jnp
import optax

from camri.losses.distances import squared_distances


class ChannelAttention(nn.Module):
  """Squeeze-and-excitation channel attention, (N, H, W, C) -> (N, C) in (0, 1).

  Attributes:
    reduction: the bottleneck ratio r; the hidden layer has max(C // r, 1)
      units (SE's default r = 16).
  """
  reduction: int = 16

  @nn.compact
  def __call__(self, feature_map):
    channels = feature_map.shape[-1]
    squeezed = jnp.mean(feature_map, axis=(1, 2))
    hidden = nn.relu(nn.Dense(max(channels // self.reduction, 1),
                              name="squeeze")(squeezed))
    return nn.sigmoid(nn.Dense(channels, name="excite")(hidden))


def _safe_norm(sq):
  # sqrt with a finite gradient where sq == 0 (the diagonal, identical vectors).
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def channel_correlation_term(attention, labels, *, where=None):
  """L_CC = intra / inter of the module docstring; a scalar for the batch.

  Args:
    attention: (N, C) per-sample channel attention.
    labels: (N,) integer labels.
    where: (N,) bool or 0/1, the rows that are examples (an evaluation
      batch's padding is not); None: all. Pairs with another row are left out.

  Returns:
    The scalar L_CC (0 when the batch has no same-class or no
    different-class pair).
  """
  dist = _safe_norm(squared_distances(attention, attention))
  rows = jnp.ones(labels.shape, bool) if where is None else jnp.asarray(where).astype(bool)
  pairs = rows[:, None] & rows[None, :]
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  intra_mask = same & not_self & pairs
  inter_mask = ~same & pairs
  n_intra = jnp.sum(intra_mask)
  n_inter = jnp.sum(inter_mask)
  intra = jnp.sum(jnp.where(intra_mask, dist, 0.0)) / jnp.maximum(n_intra, 1)
  inter = jnp.sum(jnp.where(inter_mask, dist, 0.0)) / jnp.maximum(n_inter, 1)
  defined = (n_intra > 0) & (n_inter > 0) & (inter > 0)
  return jnp.where(defined, intra / jnp.where(defined, inter, 1.0), 0.0)


def cc_loss(logits, attention, labels, cc_weight=1.0, *, where=None):
  """CC-Loss, per example: cross_entropy_n + lambda * L_CC (batch-level L_CC).

  Args:
    logits: (N, K) logits.
    attention: (N, C) channel attention, e.g. `ChannelAttention` of the
      backbone's last feature map.
    labels: (N,) integer labels.
    cc_weight: lambda >= 0.
    where: (N,) the rows that are examples; L_CC is over their pairs only
      (None: all rows).

  Returns:
    (N,) losses whose mean over the `where` rows is the batch loss.
  """
  return (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
          + cc_weight * channel_correlation_term(attention, labels, where=where))
