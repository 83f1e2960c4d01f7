"""Models: backbones return the feature z, heads own the class weights."""

from collections.abc import Callable

import flax.linen as nn

from camri.models import cnn
from camri.models.heads import (
    AngularHead,
    ChannelAttentionHead,
    EnsembleHead,
    GaussianMeansHead,
    LinearHead,
    SimplexHead,
)

# name -> constructor taking feature_dim. A backbone's `__call__(x, train,
# return_feature_map=False)` returns z, or (z, its last feature map before
# pooling) with `return_feature_map=True`.
BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "reference_cnn": cnn.reference_cnn,
    "small_cnn": cnn.small_cnn,
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


def get_backbone(name: str, feature_dim: int) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f"config.model={name!r} is unknown: choose one of {sorted(BACKBONES)}")
  return BACKBONES[name](feature_dim)
