"""Classification heads: they own the class weights.

A head maps the feature z (N, D) to a dict of outputs that the objective's loss
and prediction rule read: logits, cosines, or the class parameters themselves
(centres, means, weight matrices) for the losses in `camri.losses` that take
them. Every head with one weight vector per class also returns `cosine`, the
(N, K) cosines between features and those vectors, from which the angle
statistics are computed.

The heads with a learned class-weight matrix (linear, angular, channel
attention) take its initialiser as `kernel_init` (default flax's
lecun_normal); a backbone can name another (`models.HEAD_KERNEL_INITS`).
"""

from typing import ClassVar

import flax.linen as nn

from camri.losses import ChannelAttention, cosine_logits, simplex_centers


class AngularHead(nn.Module):
  """Class weights W (D, K), no bias, for the margin losses; outputs W and cos(theta_k)."""
  num_classes: int
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, z):
    kernel = self.param("kernel", self.kernel_init, (z.shape[-1], self.num_classes))
    return {"weights": kernel, "cosine": cosine_logits(z, kernel)}


class LinearHead(nn.Module):
  """Dense layer with bias for cross-entropy and its weighted variants."""
  num_classes: int
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, z):
    dense = nn.Dense(self.num_classes, kernel_init=self.kernel_init)
    logits = dense(z)
    return {"logits": logits,
            "cosine": cosine_logits(z, dense.variables["params"]["kernel"])}


class ChannelAttentionHead(nn.Module):
  """`LinearHead` plus SE channel attention of the backbone's last feature map (CC-Loss)."""
  num_classes: int
  reduction: int = 16
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  uses_feature_map: ClassVar[bool] = True

  @nn.compact
  def __call__(self, z, feature_map):
    return {**LinearHead(self.num_classes, self.kernel_init, name="linear")(z),
            "attention": ChannelAttention(self.reduction, name="attention")(feature_map)}


class SimplexHead(nn.Module):
  """Fixed class centres (K, D) at the vertices of a regular simplex (Nirvana).

  The centres are a constant of (K, D, radius), not parameters.
  """
  num_classes: int
  radius: float

  @nn.compact
  def __call__(self, z):
    centers = simplex_centers(self.num_classes, z.shape[-1], self.radius)
    return {"centers": centers, "cosine": cosine_logits(z, centers.T)}


class GaussianMeansHead(nn.Module):
  """Learned class means mu (K, D) of a Gaussian mixture (L-GM)."""
  num_classes: int

  @nn.compact
  def __call__(self, z):
    # Glorot-uniform, as the L-GM reference code's means.
    means = self.param("means", nn.initializers.xavier_uniform(),
                       (self.num_classes, z.shape[-1]))
    return {"means": means, "cosine": cosine_logits(z, means.T)}


class EnsembleHead(nn.Module):
  """V linear classifiers without bias, weights (V, D, K) (EM-Softmax).

  No `cosine`: each class has V weight vectors, so the angle statistics are
  not defined.
  """
  num_classes: int
  num_heads: int

  @nn.compact
  def __call__(self, z):
    init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    weights = self.param("kernel", init, (self.num_heads, z.shape[-1], self.num_classes))
    return {"weights": weights}
