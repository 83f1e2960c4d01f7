"""torchvision and timm ResNet weights, a `.safetensors` state dict, as a camri ResNet's trunk.

The state dict's names (torchvision.models.resnet; timm's ResNets use the same)
and the variables of `camri.models.resnet.ResNet` they become:

    conv1.weight                      params       conv_init/kernel
    bn1.weight, bn1.bias              params       bn_init/scale, bn_init/bias
    bn1.running_mean, running_var     batch_stats  bn_init/mean, bn_init/var
    layer{s}.{j}.conv{i}.weight       params       <Block>_{b}/Conv_{i-1}/kernel
    layer{s}.{j}.bn{i}.*              both         <Block>_{b}/BatchNorm_{i-1}/*
    layer{s}.{j}.downsample.0.weight  params       <Block>_{b}/conv_proj/kernel
    layer{s}.{j}.downsample.1.*       both         <Block>_{b}/norm_proj/*

where block b is j plus the blocks of the stages before stage s. Convolution
kernels are OIHW in the file and HWIO here. `fc.*` (the ImageNet classifier)
and `*.num_batches_tracked` are not used; camri's feature layer keeps its
initialisation. The file is read with safetensors' NumPy API: torch is not needed.
"""

from collections.abc import Mapping, Sequence
import os
import re
from typing import Any

from flax import traverse_util
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
import safetensors.numpy

from camri.models import resnet

_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
_STEM = {"conv_init": "conv1", "bn_init": "bn1"}
_PROJECTION = {"conv_proj": "downsample.0", "norm_proj": "downsample.1"}
_LAYERS = {"Conv": "conv", "BatchNorm": "bn"}


def read(path) -> dict[str, np.ndarray]:
  """The file's tensors by name.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a safetensors file (one line).
  """
  try:
    return safetensors.numpy.load_file(os.path.expanduser(path))
  except SafetensorError as e:
    raise ValueError(f"it does not read as a safetensors file ({e})") from None


def torch_key(path: Sequence[str], stage_sizes: Sequence[int]) -> str:
  """The state dict's name of the trunk variable at `path` (module table)."""
  *modules, leaf = path
  if len(modules) == 1:
    return f"{_STEM[modules[0]]}.{_LEAVES[leaf]}"
  block, layer = modules
  index = int(block.rsplit("_", 1)[1])
  stage = int(np.searchsorted(np.cumsum(stage_sizes), index, side="right"))
  if layer in _PROJECTION:
    name = _PROJECTION[layer]
  else:
    kind, i = layer.rsplit("_", 1)
    name = f"{_LAYERS[kind]}{int(i) + 1}"
  return f"layer{stage + 1}.{index - sum(stage_sizes[:stage])}.{name}.{_LEAVES[leaf]}"


def _torch_shape(path, shape) -> tuple[int, ...]:
  if path[-1] == "kernel":  # HWIO -> OIHW.
    height, width, inputs, outputs = shape
    return (outputs, inputs, height, width)
  return tuple(shape)


def _trunk_leaves(variables: Mapping[str, Any], stage_sizes) -> dict[str, tuple]:
  """{state dict name: (collection, path, leaf)} of the trunk's variables in a ResNet's."""
  out = {}
  for collection, tree in variables.items():
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      if path[0] not in resnet.FEATURE_MODULES:
        out[torch_key(path, stage_sizes)] = (collection, path, leaf)
  return out


def _used(name: str) -> bool:
  return not (name.startswith("fc.") or name.endswith(".num_batches_tracked"))


def _natural(name: str):
  return [(0, int(part), "") if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", name)]


def first_mismatch(variables: Mapping[str, Any], state: Mapping[str, np.ndarray],
                   stage_sizes: Sequence[int], model: str) -> str | None:
  """Why `state` does not fit the trunk of ResNet `variables` (config.model `model`), or None.

  The first name, in natural order, that the file lacks, that the model has no
  place for, or whose shape differs. `variables` may be abstract (shapes only).
  """
  expected = _trunk_leaves(variables, stage_sizes)
  for name in sorted(set(expected) | set(filter(_used, state)), key=_natural):
    if name not in state:
      return f"the file has no {name}, which config.model={model!r} needs"
    if name not in expected:
      return f"the file's {name} has no place in config.model={model!r}"
    _, path, leaf = expected[name]
    needed = _torch_shape(path, leaf.shape)
    if tuple(state[name].shape) != needed:
      return (f"the file's {name} has shape {tuple(state[name].shape)}, config.model={model!r} "
              f"needs {needed}")
  return None


def trunk_variables(variables: Mapping[str, Any], state: Mapping[str, np.ndarray],
                    stage_sizes: Sequence[int]) -> dict[str, Any]:
  """`variables` of a ResNet with every trunk variable taken from `state`, which fits.

  Kernels are transposed OIHW -> HWIO; every value is cast to the dtype of the
  variable it replaces. The feature layer keeps its values.
  """
  flat = {c: traverse_util.flatten_dict(dict(tree)) for c, tree in variables.items()}
  for name, (collection, path, leaf) in _trunk_leaves(variables, stage_sizes).items():
    value = state[name]
    if path[-1] == "kernel":
      value = np.transpose(value, (2, 3, 1, 0))
    flat[collection][path] = jnp.asarray(value, dtype=leaf.dtype)
  return {c: traverse_util.unflatten_dict(tree) for c, tree in flat.items()}


def architecture(state: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], bool, int]:
  """(blocks per stage, bottleneck blocks, stem kernel size) that the file's names describe."""
  blocks: dict[int, set[str]] = {}
  for name in state:
    if match := re.match(r"layer(\d+)\.(\d+)\.", name):
      blocks.setdefault(int(match[1]), set()).add(match[2])
  stage_sizes = tuple(len(blocks[s]) for s in sorted(blocks))
  bottleneck = any(".conv3." in name for name in state)
  stem = state["conv1.weight"].shape[-1] if "conv1.weight" in state else 0
  return stage_sizes, bottleneck, stem
