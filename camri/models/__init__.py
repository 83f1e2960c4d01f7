"""Models: backbones return the feature z, heads own the class weights."""

from collections.abc import Callable

import flax.linen as nn

from camri.models import cnn
from camri.models.heads import AngularHead, LinearHead

# name -> constructor taking feature_dim.
BACKBONES: dict[str, Callable[[int], nn.Module]] = {
    "reference_cnn": cnn.reference_cnn,
    "small_cnn": cnn.small_cnn,
}


class Classifier(nn.Module):
  """backbone -> z -> head; returns {"features": z, **head outputs}."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool = False):
    z = self.backbone(x, train=train)
    return {"features": z, **self.head(z)}


def get_backbone(name: str, feature_dim: int) -> nn.Module:
  if name not in BACKBONES:
    raise ValueError(f"config.model={name!r} is unknown: choose one of {sorted(BACKBONES)}")
  return BACKBONES[name](feature_dim)
