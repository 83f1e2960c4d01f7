"""Convolutional backbones that return the feature z.

Every backbone ends with the paper's feature layer: Dense(feature_dim) followed
by BatchNorm and no activation, so z can take any direction on the sphere.
With `return_feature_map=True` a backbone returns `(z, feature_map)`, the
last convolutional feature map before pooling (N, H, W, C), for heads that
read it (CC-Loss's channel attention).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from camri.models import conv

Initializer = nn.initializers.Initializer
# BatchNorm as in flax's examples/imagenet (flax's own momentum is 0.99).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


class FeatureLayer(nn.Module):
  """Dense(feature_dim) + BatchNorm, no activation: the feature z."""
  feature_dim: int
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  kernel_init: Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.feature_dim, kernel_init=self.kernel_init)(x)
    return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                        epsilon=self.bn_epsilon)(x)


class VGGStyleCNN(nn.Module):
  """3x3 conv stages (ReLU), BatchNorm / pooling / dropout where the spec says.

  `stages` is a sequence of stages; each stage is a sequence of layer specs:
  an int (3x3 conv with that many filters, ReLU), "bn", "pool" (2x2 max) or a
  float (dropout rate). Global average pooling and the feature layer follow.
  Returns z, or `(z, feature_map)` with `return_feature_map`.

  BatchNorm's `bn_momentum` weighs the old running statistics, as Keras's
  `momentum` does: running = momentum * running + (1 - momentum) * batch.
  `feature_init` initialises the feature layer's Dense kernel.
  `conv_weight_grad` (config.conv_weight_grad) chooses, for each convolution, XLA's or tap
  matmuls for its forward pass, input gradient and weight gradient (`conv.methods`).
  `frozen_trunk`: the convolutional stages in inference mode (BatchNorm keeps its running
  statistics, no dropout) and without gradient; only the feature layer trains.
  `part` is `resnet.ResNet`'s: "all", "trunk" (the pooled trunk output) or "new" (x is that
  output: the feature layer only).
  """
  stages: Sequence[Sequence[int | str | float]]
  feature_dim: int = 512
  bn_momentum: float = BN_MOMENTUM
  bn_epsilon: float = BN_EPSILON
  conv_init: Initializer = nn.linear.default_kernel_init
  feature_init: Initializer = nn.linear.default_kernel_init
  conv_weight_grad: str = "auto"
  frozen_trunk: bool = False

  @nn.compact
  def __call__(self, x, train: bool, return_feature_map: bool = False, part: str = "all"):
    if part != "new":
      x = self._stages(x, train and not self.frozen_trunk)
      if self.frozen_trunk:
        x = jax.lax.stop_gradient(x)
    feature_map = x
    if part != "new":
      x = x.mean(axis=(1, 2))
    if part == "trunk":
      return x
    z = FeatureLayer(self.feature_dim, self.bn_momentum, self.bn_epsilon,
                     self.feature_init)(x, train)
    return (z, feature_map) if return_feature_map else z

  def _stages(self, x, train: bool):
    """The convolutional stages (the trunk), their modules named in `__call__`'s scope."""
    conv_fn = conv.conv_general_dilated(self.conv_weight_grad)
    for stage in self.stages:
      for layer in stage:
        if layer == "bn":
          x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, parent=self)(x)
        elif layer == "pool":
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
        elif isinstance(layer, float):
          x = nn.Dropout(layer, deterministic=not train, parent=self)(x)
        else:
          x = nn.relu(nn.Conv(layer, (3, 3), padding="SAME", kernel_init=self.conv_init,
                              conv_general_dilated=conv_fn, parent=self)(x))
    return x


# The paper's CIFAR-10 network: 13 conv layers, GAP, Dense(512) + BN.
REFERENCE_CNN_STAGES = (
    (64, 64, "bn", 64, "pool", 0.25),
    (128, 128, "bn", 128, "pool", 0.25),
    (256, 256, "bn", 256, 256, 256, "bn"),
    (512, 512),
)

# A small network for the 8x8 digits.
SMALL_CNN_STAGES = (
    (32, "bn", 32, "pool"),
    (64, "bn", 64),
)


# Keras's default kernel initialiser; the class weights W of the authors'
# heads keep it too (`models.HEAD_KERNEL_INITS`).
KERAS_KERNEL_INIT = nn.initializers.glorot_uniform()


def reference_cnn(feature_dim=512):
  """The paper's CIFAR-10 network, started as the authors' Keras model is.

  Keras's defaults: BatchNormalization momentum 0.99 and epsilon 1e-3, Conv2D
  kernels glorot_uniform; their Dense(512) feature layer sets he_normal. flax's
  glorot_uniform and he_normal (a truncated normal) are Keras's distributions.
  """
  return VGGStyleCNN(REFERENCE_CNN_STAGES, feature_dim, bn_momentum=0.99, bn_epsilon=1e-3,
                     conv_init=KERAS_KERNEL_INIT, feature_init=nn.initializers.he_normal())


def small_cnn(feature_dim=64):
  return VGGStyleCNN(SMALL_CNN_STAGES, feature_dim)
