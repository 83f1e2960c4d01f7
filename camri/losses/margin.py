"""Margin-softmax losses over normalised features and class weights.

One core, `margin_softmax_loss`, serves every angular-margin loss as a
configuration of a per-class margin vector:

    cos(theta_k) = <z/|z|, W_k/|W_k|>
    logit_k      = s * cos(theta_k)            for k != t
    logit_t      = s * psi(theta_t, m_t)       for the true class t
    loss         = cross_entropy(softmax(logit), t)

with psi chosen by `kind`:

    kind                       psi                    no margin   used by
    "additive_angular"         cos(theta + m)         m = 0       CAMRI, ArcFace
    "additive_cosine"          cos(theta) - m         m = 0       CosFace
    "multiplicative_angular"   cos(m * theta)         m = 1       SphereFace-style

CAMRI (Nishiyama et al., IJCNN 2022) is the additive angular kind with a margin
vector that holds the identity ("no margin") except at the important classes;
ArcFace (Deng et al., CVPR 2019) is the same kind with one margin for every
class; CosFace (Wang et al., CVPR 2018) is the additive cosine kind with one
margin for every class, and class-sensitive CosFace the same kind with CAMRI's
margin vector; NormFace (Wang et al., ACM MM 2017) has no margin. Build the
margin vector with `margin_vector(..., default=NO_MARGIN[kind])`. The
multiplicative kind is the plain cos(m theta), not SphereFace's monotone
piecewise (-1)^k cos(m theta) - 2k (Liu et al., CVPR 2017).

Prediction: no margin is applied at inference; the predicted class is
argmax_k `cosine_logits(features, weights)`.

Like the authors' code, cos is clipped to [-1 + 1e-7, 1 - 1e-7] before the
angle is taken and nothing special is done when theta + m > pi. The additive
angular kind is computed as cos(theta)cos(m) - sin(theta)sin(m) with
sin(theta) = sqrt(1 - cos^2) of the clipped cosine: the same values as
cos(arccos(clip(cos)) + m), and a gradient that stays finite at cos = +-1.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import optax

from camri.losses.class_vectors import important_class_vector

COS_CLIP = 1e-7
MARGIN_KINDS = ("additive_angular", "additive_cosine", "multiplicative_angular")
# The margin of each kind that leaves psi = cos(theta): the value a margin
# vector holds at the classes without a margin.
NO_MARGIN = {"additive_angular": 0.0, "additive_cosine": 0.0,
             "multiplicative_angular": 1.0}


def _l2_normalize(x, axis):
  # rsqrt of a floored squared norm: finite value and gradient for a zero vector.
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, 1e-24)))


def cosine_logits(features, weights):
  """cos(theta_k) between each feature and each class weight.

  Args:
    features: (N, D) features z.
    weights: (D, K) class weights W, one column per class, no bias.

  Returns:
    (N, K) cosines in [-1, 1]; the prediction is their argmax over K.
  """
  return _l2_normalize(features, -1) @ _l2_normalize(weights, 0)


def _check_kind(kind):
  if kind not in MARGIN_KINDS:
    raise ValueError(f"margin kind must be one of {MARGIN_KINDS}, got {kind!r}")


def margin_target_logit(cos, margins, kind="additive_angular"):
  """psi(theta, m) of the module docstring, elementwise on broadcastable arrays."""
  _check_kind(kind)
  if kind == "additive_cosine":
    return cos - margins
  c = jnp.clip(cos, -1.0 + COS_CLIP, 1.0 - COS_CLIP)
  if kind == "additive_angular":
    sin = jnp.sqrt(1.0 - jnp.square(c))
    return c * jnp.cos(margins) - sin * jnp.sin(margins)
  return jnp.cos(margins * jnp.arccos(c))  # multiplicative_angular


def margin_logits(cos, labels, margins, scale, kind="additive_angular"):
  """Scaled logits with each row's true-class margin applied.

  Args:
    cos: (N, K) cosines from `cosine_logits`.
    labels: (N,) integer labels.
    margins: (K,) per-class margins (radians for the angular kinds).
    scale: s > 0.
    kind: one of `MARGIN_KINDS`.

  Returns:
    (N, K) logits: s * cos(theta_k) off the label, s * psi(theta_t, m_t) on it.
  """
  margins = jnp.asarray(margins, cos.dtype)
  is_target = labels[:, None] == jnp.arange(cos.shape[-1])[None, :]
  target = margin_target_logit(cos, margins[labels][:, None], kind)
  return scale * jnp.where(is_target, target, cos)


def margin_cross_entropy(cos, labels, margins, scale, kind="additive_angular"):
  """Per-example cross-entropy of the margin logits, from the cosines.

  For a head that already computed `cosine_logits` (its prediction scores):
  the loss reuses them instead of normalising and multiplying again.

  Args:
    cos: (N, K) cosines from `cosine_logits`.
    labels: (N,) integer labels.
    margins: (K,) per-class margins; `NO_MARGIN[kind]` means none.
    scale: s > 0.
    kind: one of `MARGIN_KINDS`.

  Returns:
    (N,) losses.
  """
  logits = margin_logits(cos, labels, margins, scale, kind)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def margin_softmax_loss(features, weights, labels, margins, scale,
                        kind="additive_angular"):
  """Per-example cross-entropy of the margin logits (module docstring).

  `margin_cross_entropy` of `cosine_logits(features, weights)`: features are
  (N, D), weights (D, K) class weights without bias; the other arguments and
  the (N,) result are `margin_cross_entropy`'s.
  """
  return margin_cross_entropy(cosine_logits(features, weights), labels, margins,
                              scale, kind)


def camri_loss(features, weights, labels, margins, scale):
  """CAMRI loss (Nishiyama et al., IJCNN 2022), per example.

    L_n = -log softmax(s * [cos(theta_k) for k != t_n; cos(theta_t + m_t)])_t

  Args:
    features: (N, D) features z (the penultimate layer's output).
    weights: (D, K) class weights, no bias.
    labels: (N,) integer labels.
    margins: (K,) margins in radians, zero except at the important classes;
      build it with `margin_vector`.
    scale: s > 0.

  Returns:
    (N,) losses.
  """
  return margin_softmax_loss(features, weights, labels, margins, scale)


def arcface_loss(features, weights, labels, margin, scale):
  """ArcFace (Deng et al., CVPR 2019): CAMRI with the same margin for every class.

    L_n = -log softmax(s * [cos(theta_k) for k != t_n; cos(theta_t + m)])_t
  """
  margins = jnp.full((weights.shape[-1],), margin, features.dtype)
  return margin_softmax_loss(features, weights, labels, margins, scale)


def cosface_loss(features, weights, labels, margin, scale):
  """CosFace / large margin cosine loss (Wang et al., CVPR 2018), per example.

    L_n = -log softmax(s * [cos(theta_k) for k != t_n; cos(theta_t) - m])_t

  Args:
    features: (N, D) features.
    weights: (D, K) class weights, no bias.
    labels: (N,) integer labels.
    margin: m >= 0, the same cosine margin for every class.
    scale: s > 0.

  Returns:
    (N,) losses.
  """
  margins = jnp.full((weights.shape[-1],), margin, features.dtype)
  return margin_softmax_loss(features, weights, labels, margins, scale,
                             kind="additive_cosine")


def class_sensitive_cosface_loss(features, weights, labels, margins, scale):
  """CosFace with CAMRI's class-sensitive margin vector, per example.

    L_n = -log softmax(s * [cos(theta_k) for k != t_n; cos(theta_t) - m_t])_t

  CAMRI's idea (Nishiyama et al., IJCNN 2022) applied to CosFace's cosine
  margin (Wang et al., CVPR 2018): m_t is nonzero only at the important classes.

  Args:
    features: (N, D) features.
    weights: (D, K) class weights, no bias.
    labels: (N,) integer labels.
    margins: (K,) cosine margins, zero except at the important classes; build
      it with `margin_vector`.
    scale: s > 0.

  Returns:
    (N,) losses.
  """
  return margin_softmax_loss(features, weights, labels, margins, scale,
                             kind="additive_cosine")


def normface_loss(features, weights, labels, scale):
  """NormFace / L2-softmax (Wang et al., ACM MM 2017): s * cos(theta_k), no margin."""
  margins = jnp.zeros((weights.shape[-1],), features.dtype)
  return margin_softmax_loss(features, weights, labels, margins, scale)


def margin_vector(num_classes: int, important_classes: Sequence[int],
                  margins: float | Sequence[float], default: float = 0.0):
  """The (K,) margin vector: `margins` at the important classes, `default` elsewhere.

  Args:
    num_classes: K.
    important_classes: class indices.
    margins: one margin for all of them, or one per important class.
    default: the margin of the other classes: the kind's identity,
      `NO_MARGIN[kind]` (0 for the additive kinds, 1 for the multiplicative).
  """
  return important_class_vector(num_classes, important_classes, margins,
                                default, name="margins")
