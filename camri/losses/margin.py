"""Margin-softmax losses over normalised features and class weights.

One core, `margin_softmax_loss`, serves every angular-margin loss as a
configuration of a per-class margin vector:

    cos(theta_k) = <z/|z|, W_k/|W_k|>
    logit_k      = s * cos(theta_k)            for k != t
    logit_t      = s * psi(theta_t, m_t)       for the true class t
    loss         = cross_entropy(softmax(logit), t)

with psi chosen by `kind`:

    "additive_angular"         psi = cos(theta + m)   CAMRI, ArcFace
    "additive_cosine"          psi = cos(theta) - m   CosFace
    "multiplicative_angular"   psi = cos(m * theta)   SphereFace-style (m = 1: none)

CAMRI (Nishiyama et al., IJCNN 2022) is the additive angular kind with a margin
vector that is zero except at the important classes; ArcFace (Deng et al., CVPR
2019) is the same kind with one margin for every class; NormFace (Wang et al.,
2017) has no margin. At inference no margin is applied: predict with
`cosine_logits`.

Like the authors' code, cos is clipped to [-1 + 1e-7, 1 - 1e-7] before the
angle is taken and nothing special is done when theta + m > pi. The additive
angular kind is computed as cos(theta)cos(m) - sin(theta)sin(m) with
sin(theta) = sqrt(1 - cos^2) of the clipped cosine: the same values as
cos(arccos(clip(cos)) + m), and a gradient that stays finite at cos = +-1.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import optax

COS_CLIP = 1e-7
MARGIN_KINDS = ("additive_angular", "additive_cosine", "multiplicative_angular")


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


def margin_target_logit(cos, margins, kind="additive_angular"):
  """psi(theta, m) of the module docstring, elementwise on broadcastable arrays."""
  if kind == "additive_cosine":
    return cos - margins
  c = jnp.clip(cos, -1.0 + COS_CLIP, 1.0 - COS_CLIP)
  if kind == "additive_angular":
    sin = jnp.sqrt(1.0 - jnp.square(c))
    return c * jnp.cos(margins) - sin * jnp.sin(margins)
  if kind == "multiplicative_angular":
    return jnp.cos(margins * jnp.arccos(c))
  raise ValueError(f"margin kind must be one of {MARGIN_KINDS}, got {kind!r}")


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


def margin_softmax_loss(features, weights, labels, margins, scale,
                        kind="additive_angular"):
  """Per-example cross-entropy of the margin logits. Returns shape (N,)."""
  logits = margin_logits(cosine_logits(features, weights), labels, margins,
                         scale, kind)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


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
  """ArcFace (Deng et al., CVPR 2019): CAMRI with the same margin for every class."""
  margins = jnp.full((weights.shape[-1],), margin, features.dtype)
  return margin_softmax_loss(features, weights, labels, margins, scale)


def normface_loss(features, weights, labels, scale):
  """NormFace / L2-softmax (Wang et al., 2017): s * cos(theta_k), no margin."""
  margins = jnp.zeros((weights.shape[-1],), features.dtype)
  return margin_softmax_loss(features, weights, labels, margins, scale)


def margin_vector(num_classes: int, important_classes: Sequence[int],
                  margins: float | Sequence[float]):
  """The (K,) margin vector: `margins` at the important classes, 0 elsewhere.

  Args:
    num_classes: K.
    important_classes: class indices.
    margins: one margin for all of them, or one per important class.
  """
  important_classes = tuple(int(k) for k in important_classes)
  if isinstance(margins, (int, float)):
    margins = (float(margins),) * len(important_classes)
  margins = tuple(float(m) for m in margins)
  if len(margins) == 1 and len(important_classes) > 1:
    margins = margins * len(important_classes)
  if len(margins) != len(important_classes):
    raise ValueError(
        f"got {len(margins)} margins for {len(important_classes)} important "
        "classes: give one margin, or one per important class")
  m = [0.0] * num_classes
  for k, mk in zip(important_classes, margins):
    if not 0 <= k < num_classes:
      raise ValueError(f"important class {k} not in [0, {num_classes})")
    m[k] = mk
  return jnp.asarray(m, jnp.float32)
