"""Models: backbones return the feature z, heads own the class weights."""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from camri import config_lib
from camri.config_lib import ConfigError
from camri.models import cnn
from camri.models import resnet
from camri.models import torch_weights
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
# max pool of CIFAR ResNets (for ~32 pixels). The ResNets take torchvision's
# and timm's weights (`load_backbone`).
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

# The backbones' feature layers (Dense + BatchNorm): with the head, the layers
# a pretrained trunk does not have (`param_groups`).
FEATURE_MODULES = (*resnet.FEATURE_MODULES, "FeatureLayer_0")

# config.input_normalization -> (mean, std) of each RGB channel of images in
# [0, 1], as the weights expect them: ImageNet's, torchvision's and timm's.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# name -> the initialiser of the head's class weights W, where the backbone's
# reference code fixes one (`objectives.make_objective(head_kernel_init=)`);
# the others keep the heads' default, lecun_normal.
HEAD_KERNEL_INITS: dict[str, nn.initializers.Initializer] = {
    "reference_cnn": cnn.KERAS_KERNEL_INIT,
}


def normalize(images, normalization: str):
  """Images in [0, 1] as the backbone takes them (`NORMALIZATIONS`).

  With a normalisation, a greyscale image is repeated to the three channels of
  RGB first (grey is R = G = B), as weights trained on colour images expect.
  """
  stats = NORMALIZATIONS[normalization]
  if stats is None:
    return images
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  mean, std = (jnp.asarray(v, images.dtype) for v in stats)
  return (images - mean) / std


class Classifier(nn.Module):
  """normalize -> backbone -> z -> head; returns {"features": z, **head outputs}.

  With `on_trunk_output`, its input is the backbone trunk's pooled output
  (`trunk_output`, computed once: camri/trunk.py) and only the new layers run;
  the variables are the whole model's either way.

  A head whose class sets `uses_feature_map = True` is called as
  `head(z, feature_map)` with the backbone's last feature map before pooling.
  The normalisation is part of the model, so evaluation, `camri.predict` and
  `camri.export`'s artifact all apply it to their images in [0, 1].
  """
  backbone: nn.Module
  head: nn.Module
  input_normalization: str = "none"
  on_trunk_output: bool = False

  def __call__(self, x, train: bool = False):
    if self.on_trunk_output:
      z = self.backbone(x, train=train, part="new")
      return {"features": z, **self.head(z)}
    x = normalize(x, self.input_normalization)
    if getattr(self.head, "uses_feature_map", False):
      z, feature_map = self.backbone(x, train=train, return_feature_map=True)
      return {"features": z, **self.head(z, feature_map)}
    z = self.backbone(x, train=train)
    return {"features": z, **self.head(z)}

  def trunk_output(self, x):
    """The backbone trunk's pooled output of images in [0, 1], at inference."""
    return self.backbone(normalize(x, self.input_normalization), train=False, part="trunk")


def get_backbone(name: str, feature_dim: int, conv_weight_grad: str = "auto", *,
                 frozen_trunk: bool = False, resnet_padding: str = "torchvision") -> nn.Module:
  """Backbone `name`.

  Args:
    name: a key of `BACKBONES`.
    feature_dim: the size of the feature z.
    conv_weight_grad: the convolutions' forward pass, input and weight gradients: XLA's
      or tap matmuls (`conv.methods`).
    frozen_trunk: the trunk in inference mode, without gradient; config.freeze_backbone.
    resnet_padding: a ResNet's padding (`resnet.ResNet.padding`).

  Raises:
    ConfigError: `frozen_trunk` for a backbone without a trunk (`has_trunk`).
  """
  if name not in BACKBONES:
    raise ValueError(f"config.model={name!r} is unknown: choose one of {sorted(BACKBONES)}")
  backbone = BACKBONES[name](feature_dim).clone(conv_weight_grad=conv_weight_grad)
  if isinstance(backbone, resnet.ResNet):
    backbone = backbone.clone(padding=resnet_padding)
  if frozen_trunk and not has_trunk(name):
    raise ConfigError(f"config.freeze_backbone=True is invalid: config.model={name!r} has no "
                      f"trunk to freeze; choose one of {[n for n in BACKBONES if has_trunk(n)]}")
  return backbone.clone(frozen_trunk=True) if frozen_trunk else backbone


def has_trunk(name: str) -> bool:
  """Whether backbone `name` has a trunk apart from its feature layer, which it can freeze."""
  return hasattr(BACKBONES[name](1), "frozen_trunk")


def _resnets() -> list[str]:
  return [name for name, make in BACKBONES.items() if isinstance(make(1), resnet.ResNet)]


def param_groups(params) -> Any:
  """`params`'s tree with "trunk" at the backbone's leaves but its feature layer's, "new" elsewhere.

  The trunk is what pretrained weights fill (`load_backbone`); the feature
  layer and the head are new (optax.multi_transform's labels).
  """
  def group(path, _):
    keys = [getattr(k, "key", None) for k in path]
    return "trunk" if keys[0] == "backbone" and keys[1] not in FEATURE_MODULES else "new"
  return jax.tree_util.tree_map_with_path(group, params)


def load_backbone(variables: dict[str, Any], path: str, model: str,
                  frozen: bool = False) -> dict[str, Any]:
  """`variables` of a Classifier of backbone `model` with the backbone's taken from `path`.

  `path` is a `.safetensors` file holding a torchvision or timm ResNet's state
  dict (`torch_weights`: the trunk is taken from it), or a directory of what
  `resnet.load_pretrained_variables` reads: the backbone's params, or its
  {"params", "batch_stats"}, saved with orbax. `variables` may be abstract
  (jax.eval_shape's) to check that the file fits. A `frozen` trunk needs the
  BatchNorm statistics too (`resnet.load_pretrained_variables`).

  Raises:
    ConfigError: naming config.init_checkpoint, the first mismatch and, for a
      state dict, the model it fits, in one line.
  """
  backbone = {c: tree["backbone"] for c, tree in variables.items()
              if "backbone" in tree}
  try:
    if config_lib.is_state_dict(path):
      loaded = _load_state_dict(backbone, path, model)
    else:
      loaded = resnet.load_pretrained_variables(backbone, path, frozen)
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.init_checkpoint={path!r} is invalid: {e}") from None
  return {c: {**tree, **({"backbone": loaded[c]} if c in loaded else {})}
          for c, tree in variables.items()}


def _load_state_dict(backbone_variables, path, model):
  state = torch_weights.read(path)
  made = BACKBONES[model](1)
  problem = (torch_weights.first_mismatch(backbone_variables, state, made.stage_sizes, model)
             if isinstance(made, resnet.ResNet) else
             f"it holds torchvision ResNet weights, which config.model={model!r} cannot take")
  if problem:
    fits = _fitting_model(state)
    raise ValueError(f"{problem}; " + (f"config.model={fits!r} fits it" if fits else
                                       f"it fits none of {_resnets()}"))
  return torch_weights.trunk_variables(backbone_variables, state, made.stage_sizes)


def _fitting_model(state) -> str | None:
  """The ResNet of `BACKBONES` whose trunk `state` fits exactly, if any."""
  stage_sizes, bottleneck, stem = torch_weights.architecture(state)
  for name in _resnets():
    made = BACKBONES[name](1)
    if ((tuple(made.stage_sizes), made.block_cls is resnet.BottleneckResNetBlock,
         3 if made.small_inputs else 7) == (stage_sizes, bottleneck, stem)
        and not torch_weights.first_mismatch(_abstract_variables(name), state,
                                             made.stage_sizes, name)):
      return name
  return None


@functools.cache
def _abstract_variables(name: str):
  """Shapes of backbone `name`'s variables for RGB images (no parameter is initialised)."""
  return jax.eval_shape(functools.partial(BACKBONES[name](1).init, train=False),
                        jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
