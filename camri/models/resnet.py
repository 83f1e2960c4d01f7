"""ResNet backbones (He et al., CVPR 2016) ending in the paper's feature layer.

The trunk follows google/flax examples/imagenet/models.py (ResNetBlock,
BottleneckResNetBlock, stage sizes, zero-initialised last BatchNorm scale of
each block, BatchNorm momentum 0.9 and epsilon 1e-5) and computes what
torchvision's resnet18, resnet34 and resnet50 compute given the same weights
(`camri.models.torch_weights` reads them): a bottleneck strides on its 3x3
convolution (ResNet v1.5), and every convolution and the max pool pad
kernel_size // 2 on each side, as torchvision's do. (`padding="same"` keeps
XLA's SAME padding of the runs before, which pads a stride-2 3x3 window on an
even size only after the image.) After global average pooling comes the
feature layer of the CAMRI paper, Dense(feature_dim) + BatchNorm with no
activation; its output is the feature z:

    z = BN(W_f . mean_{h,w} trunk(x) + b_f)          (N, feature_dim)

The class weights belong to the head, not here.

`small_inputs=True` replaces the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2
max pool) by one 3x3 stride-1 conv, the usual ResNet for 32x32 images
(e.g. CIFAR), which keeps the spatial size until the second stage.

Inputs are images (N, H, W, C); `models.Classifier` normalises them first where
the weights expect it (ImageNet's mean and std), else they are in [0, 1] and the
first BatchNorm absorbs the scale.

`frozen_trunk=True` is a linear probe's backbone: the trunk runs in inference
mode (its BatchNorm uses and keeps its running statistics) and passes no
gradient; only the feature layer trains.

`load_pretrained` overlays a params pytree saved with orbax onto freshly
initialised params, e.g. to start the trunk from ImageNet weights;
`load_pretrained_variables` does the same for params and batch statistics.
"""

from collections.abc import Callable, Mapping, Sequence
import functools
from typing import Any

from etils import epath
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from camri.models import conv as conv_lib

ModuleDef = Any


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convolutions."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides,
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
  """Bottleneck residual block: 1x1, 3x3, 1x1 (4x filters) convolutions."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = self.norm()(y)
    y = self.act(y)
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides,
                           name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ResNet trunk, global average pool, then the feature layer (module doc).

  Attributes:
    stage_sizes: blocks per stage; stage i has num_filters * 2**i filters.
    block_cls: ResNetBlock or BottleneckResNetBlock.
    feature_dim: size of the feature z.
    num_filters: filters of the stem and the first stage.
    small_inputs: 3x3 stride-1 stem without max pool (32x32 images).
    dtype: computation dtype; the feature is returned as float32.
    act: activation of the trunk (none after the feature layer).
    axis_name: named mapped axis (e.g. under jax.shard_map) over which
      BatchNorm averages batch statistics; None under jax.jit, where the
      batch is one global array.
    conv_weight_grad: config.conv_weight_grad: for each convolution, whether its
      forward pass, input gradient and weight gradient are XLA's or tap matmuls
      (`conv.methods`).
    padding: "torchvision" (kernel_size // 2 on each side) or "same" (XLA's
      SAME, as runs before torchvision's padding had); module doc.
    frozen_trunk: the trunk in inference mode, without gradient (module doc).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  feature_dim: int = 512
  num_filters: int = 64
  small_inputs: bool = False
  dtype: Any = jnp.float32
  act: Callable = nn.relu
  axis_name: str | None = None
  conv_weight_grad: str = "auto"
  padding: str = "torchvision"
  frozen_trunk: bool = False

  @nn.compact
  def __call__(self, x, train: bool, return_feature_map: bool = False, part: str = "all"):
    """z, or (z, the trunk's last feature map before pooling) with `return_feature_map`.

    `part` "trunk" returns the pooled trunk output, mean_{h,w} trunk(x); "new" takes that
    output as `x` and runs the feature layer only (the trunk's modules are not called).
    """
    if part == "new":
      return self._feature_layer(x, train)
    if self.padding not in PADDINGS:
      raise ValueError(f"padding={self.padding!r} is unknown: choose one of {list(PADDINGS)}")
    conv_fn = conv_lib.conv_general_dilated(self.conv_weight_grad)

    def conv(features, kernel_size, strides=(1, 1), **kwargs):
      padding = ("SAME" if self.padding == "same" else [(k // 2, k // 2) for k in kernel_size])
      return nn.Conv(features, kernel_size, strides, **{"padding": padding, **kwargs},
                     use_bias=False, dtype=self.dtype, conv_general_dilated=conv_fn)

    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train or self.frozen_trunk, momentum=0.9,
        epsilon=1e-5, dtype=self.dtype, axis_name=self.axis_name)

    if self.small_inputs:
      x = conv(self.num_filters, (3, 3), padding=[(1, 1), (1, 1)],
               name="conv_init")(x)
    else:
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name="conv_init")(x)
    x = norm(name="bn_init")(x)
    x = self.act(x)
    if not self.small_inputs:
      x = nn.max_pool(x, (3, 3), strides=(2, 2),
                      padding="SAME" if self.padding == "same" else [(1, 1), (1, 1)])
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(self.num_filters * 2**i, strides=strides,
                           conv=conv, norm=norm, act=self.act)(x)
    if self.frozen_trunk:
      x = jax.lax.stop_gradient(x)
    feature_map = x
    x = jnp.mean(x, axis=(1, 2))
    if part == "trunk":
      return x
    z = self._feature_layer(x, train)
    return (z, feature_map) if return_feature_map else z

  def _feature_layer(self, x, train: bool):
    x = nn.Dense(self.feature_dim, dtype=self.dtype, name="feature_dense", parent=self)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, axis_name=self.axis_name, name="feature_norm",
                     parent=self)(x)
    return jnp.asarray(x, jnp.float32)


PADDINGS = ("torchvision", "same")

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BottleneckResNetBlock)

# Modules of the feature layer; every other top-level module is the trunk.
FEATURE_MODULES = ("feature_dense", "feature_norm")


def load_pretrained(params: Mapping[str, Any], path) -> dict[str, Any]:
  """Overlays the modules of a checkpointed pytree onto `params`.

  The checkpoint is a nested dict saved with
  `ocp.StandardCheckpointer().save(path, tree)`: the `params` (or the
  `batch_stats`) of a ResNet of the same stage sizes, e.g. of a flax ImageNet
  ResNet, or only its trunk. Every top-level module (conv_init, bn_init,
  ResNetBlock_0, ...) that both have is taken from the checkpoint, and must
  match exactly: the same nested names and leaf shapes. Modules only the
  checkpoint has (an ImageNet classifier) are ignored; modules only `params`
  has (typically the feature layer) keep their values. Leaves are cast to the
  dtype of the leaf they replace.

  Args:
    params: the pytree to start from, e.g. `variables["params"]`.
    path: the checkpoint directory.

  Returns:
    A new pytree with the structure of `params`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: a shared module differs in structure or shapes, or the two
      have no module in common (one-line messages).
  """
  path = epath.Path(path).expanduser().resolve()
  return overlay_pretrained(params, restore_pretrained(path), path)


def restore_pretrained(path) -> Mapping[str, Any]:
  """The nested dict saved at `path` (see `load_pretrained`), as NumPy arrays."""
  path = epath.Path(path).expanduser().resolve()
  if not path.exists():
    raise FileNotFoundError(f"No pretrained checkpoint at {path}.")
  restored = ocp.StandardCheckpointer().restore(path)
  if not isinstance(restored, Mapping):
    raise ValueError(f"The checkpoint at {path} holds a "
                     f"{type(restored).__name__}, not a dict of modules.")
  return restored


def overlay_pretrained(params: Mapping[str, Any], restored: Mapping[str, Any],
                       path) -> dict[str, Any]:
  """`load_pretrained` on an already restored tree; `path` names it in errors."""
  shared = [name for name in params if name in restored]
  if not shared:
    raise ValueError(
        f"The checkpoint at {path} shares no module with the model: it has "
        f"{sorted(restored)[:8]}, the model {sorted(params)[:8]}.")
  merged = dict(params)
  for name in shared:
    merged[name] = _replace_module(name, params[name], restored[name], path)
  return merged


def load_pretrained_variables(variables: Mapping[str, Any], path,
                              frozen: bool = False) -> dict[str, Any]:
  """`load_pretrained` for flax variables {"params": ..., "batch_stats": ...}.

  The checkpoint is either a params tree (as `load_pretrained` reads; the
  batch statistics keep their values) or a saved variables dict with
  "params" and optionally "batch_stats" (pretrained BatchNorm statistics),
  each overlaid on the same collection of `variables`.

  Raises:
    ValueError: also when the trunk is `frozen` and the model has BatchNorm
      statistics the checkpoint lacks: a frozen trunk would keep BatchNorm's
      initial mean 0 and variance 1 forever.
  """
  path = epath.Path(path).expanduser().resolve()
  restored = restore_pretrained(path)
  if "params" in restored:
    collections = {c: restored[c] for c in ("params", "batch_stats")
                   if c in restored}
  else:
    collections = {"params": restored}
  if frozen and variables.get("batch_stats") and "batch_stats" not in collections:
    raise ValueError(f"the checkpoint at {path} holds no batch_stats collection, and a frozen "
                     "trunk (config.freeze_backbone) would keep BatchNorm's initial mean 0 and "
                     'variance 1 forever: save {"params": ..., "batch_stats": ...} there')
  merged = dict(variables)
  for collection, tree in collections.items():
    if collection not in variables:
      raise ValueError(f"The checkpoint at {path} has {collection}, which "
                       f"the model does not.")
    merged[collection] = overlay_pretrained(variables[collection], tree, path)
  return merged


def _replace_module(name, target, source, path):
  """`source` cast to `target`'s dtypes if both have the same names, shapes."""
  target_leaves, source_leaves = _leaves(target), _leaves(source)
  if set(target_leaves) != set(source_leaves):
    missing = sorted(_join(k) for k in set(target_leaves) - set(source_leaves))
    extra = sorted(_join(k) for k in set(source_leaves) - set(target_leaves))
    raise ValueError(
        f"Module {name} of the checkpoint at {path} does not match the "
        f"model's: missing {missing[:4]}, unexpected {extra[:4]}.")
  for key, leaf in target_leaves.items():
    if tuple(source_leaves[key].shape) != tuple(leaf.shape):
      raise ValueError(
          f"{_join((name, *key))} has shape {tuple(source_leaves[key].shape)} "
          f"in the checkpoint at {path}, the model needs {tuple(leaf.shape)}.")
  merged = {key: jnp.asarray(source_leaves[key], dtype=leaf.dtype)
            for key, leaf in target_leaves.items()}
  if not isinstance(target, Mapping):
    return merged[()]
  return traverse_util.unflatten_dict(merged)


def _leaves(tree):
  if isinstance(tree, Mapping):
    return traverse_util.flatten_dict(tree)
  return {(): tree}


def _join(key):
  return "/".join(key) or "<leaf>"
