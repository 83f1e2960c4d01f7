"""Models: backbones return the feature z, heads own the class weights."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from camri.config_lib import ConfigError
from camri.models import cnn
from camri.models import resnet
from camri.models.heads import (
    AngularHead,
    ChannelAttentionHead,
    EnsembleHead,
    GaussianMeansHead,
    LinearHead,
    SimplexHead,
)


def _resnet(make, small_inputs: bool) -> Callable[[int], nn.Module]:
  return lambda feature_dim: make(feature_dim=feature_dim,
                                  small_inputs=small_inputs)


# name -> constructor taking feature_dim. A backbone's `__call__(x, train,
# return_feature_map=False)` returns z, or (z, its last feature map before
# pooling) with `return_feature_map=True`. resnetN has the ImageNet stem (for
# images of ~224 pixels); resnetN_small_inputs the 3x3 stride-1 stem without
# max pool of CIFAR ResNets (for ~32 pixels).
BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "reference_cnn": cnn.reference_cnn,
    "small_cnn": cnn.small_cnn,
    "resnet18": _resnet(resnet.ResNet18, small_inputs=False),
    "resnet18_small_inputs": _resnet(resnet.ResNet18, small_inputs=True),
    "resnet34": _resnet(resnet.ResNet34, small_inputs=False),
    "resnet34_small_inputs": _resnet(resnet.ResNet34, small_inputs=True),
    "resnet50": _resnet(resnet.ResNet50, small_inputs=False),
    "resnet50_small_inputs": _resnet(resnet.ResNet50, small_inputs=True),
}

# name -> the initialiser of the head's class weights W, where the backbone's
# reference code fixes one (`objectives.make_objective(head_kernel_init=)`);
# the others keep the heads' default, lecun_normal.
HEAD_KERNEL_INITS: dict[str, nn.initializers.Initializer] = {
    "reference_cnn": cnn.KERAS_KERNEL_INIT,
}


class Classifier(nn.Module):
  """backbone -> z -> head; returns {"features": z, **head outputs}.

  A head whose class sets `uses_feature_map = True` is called as
  `head(z, feature_map)` with the backbone's last feature map before pooling.
  """
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = False):
    if getattr(self.head, "uses_feature_map", False):
      z, feature_map = self.backbone(x, train=train, return_feature_map=True)
      return {"features": z, **self.head(z, feature_map)}
    z = self.backbone(x, train=train)
    return {"features": z, **self.head(z)}


def get_backbone(name: str, feature_dim: int, conv_weight_grad: str = "auto", *,
                 resnet_padding: str = "torchvision") -> nn.Module:
  """Backbone `name`.

  Args:
    name: a key of `BACKBONES`.
    feature_dim: the size of the feature z.
    conv_weight_grad: the convolutions' weight gradient (models/conv.py).
    resnet_padding: a ResNet's padding (`resnet.ResNet.padding`).
  """
  if name not in BACKBONES:
    raise ValueError(f"config.model={name!r} is unknown: choose one of {sorted(BACKBONES)}")
  backbone = BACKBONES[name](feature_dim).clone(conv_weight_grad=conv_weight_grad)
  if isinstance(backbone, resnet.ResNet):
    return backbone.clone(padding=resnet_padding)
  return backbone


def load_backbone(variables: dict[str, Any], path: str) -> dict[str, Any]:
  """`variables` of a Classifier with the backbone's taken from `path`.

  The checkpoint is what `resnet.load_pretrained_variables` reads: the
  backbone's params, or its {"params", "batch_stats"}, saved with orbax.

  Raises:
    ConfigError: naming config.init_checkpoint, in one line.
  """
  backbone = {c: tree["backbone"] for c, tree in variables.items()
              if "backbone" in tree}
  try:
    loaded = resnet.load_pretrained_variables(backbone, path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.init_checkpoint={path!r} is invalid: {e}") from None
  return {c: {**tree, **({"backbone": loaded[c]} if c in loaded else {})}
          for c, tree in variables.items()}
