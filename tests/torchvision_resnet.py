"""torchvision's ResNets without torch: random state dicts under its names, and a NumPy forward.

`state_dict` writes what `torchvision.models.resnet18().state_dict()` holds (the
same names, shapes and dtypes), with random values: He-initialised kernels,
BatchNorm statistics near those of the activations (running means near 0,
variances near 1), and small BatchNorm scales where branches add up (at most
0.45 at the end of each residual branch, 0.75 after a downsampling
projection), so activations stay O(1) through every block. `trunk` is the eval-mode forward of
torchvision's `ResNet` up to `layer4` (before its average pool and `fc`),
written from torchvision/models/resnet.py in float64.
"""

import numpy as np

# name -> (blocks per stage, bottleneck blocks)
ARCHITECTURES = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
                 "resnet50": ((3, 4, 6, 3), True)}


def state_dict(name, rng, stem=7) -> dict[str, np.ndarray]:
  """A random state dict of torchvision's `name`; `stem`: conv1's kernel size (3: a CIFAR stem)."""
  stage_sizes, bottleneck = ARCHITECTURES[name]
  out = {}

  def conv(key, outputs, inputs, size):
    scale = np.sqrt(2 / (inputs * size * size))
    out[f"{key}.weight"] = rng.normal(0, scale, (outputs, inputs, size, size)).astype(np.float32)

  def bn(key, channels, gain=1.0):
    out[f"{key}.weight"] = (gain * rng.uniform(0.5, 1.5, channels)).astype(np.float32)
    out[f"{key}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
    out[f"{key}.running_mean"] = rng.normal(0, 0.1, channels).astype(np.float32)
    out[f"{key}.running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    out[f"{key}.num_batches_tracked"] = np.array(1000, np.int64)

  conv("conv1", 64, 3, stem)
  bn("bn1", 64)
  inputs = 64
  for s, blocks in enumerate(stage_sizes):
    width = 64 * 2**s
    for j in range(blocks):
      key = f"layer{s + 1}.{j}"
      if bottleneck:
        conv(f"{key}.conv1", width, inputs, 1)
        bn(f"{key}.bn1", width)
        conv(f"{key}.conv2", width, width, 3)
        bn(f"{key}.bn2", width)
        conv(f"{key}.conv3", 4 * width, width, 1)
        bn(f"{key}.bn3", 4 * width, gain=0.3)
        outputs = 4 * width
      else:
        conv(f"{key}.conv1", width, inputs, 3)
        bn(f"{key}.bn1", width)
        conv(f"{key}.conv2", width, width, 3)
        bn(f"{key}.bn2", width, gain=0.3)
        outputs = width
      if j == 0 and (s > 0 or inputs != outputs):
        conv(f"{key}.downsample.0", outputs, inputs, 1)
        bn(f"{key}.downsample.1", outputs, gain=0.5)
      inputs = outputs
  out["fc.weight"] = rng.normal(0, 0.01, (1000, inputs)).astype(np.float32)
  out["fc.bias"] = np.zeros(1000, np.float32)
  return out


def _conv(x, weight, stride, padding):
  """torch.nn.functional.conv2d on NHWC `x` with an OIHW `weight`, in float64."""
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  _, _, kh, kw = weight.shape
  height = (x.shape[1] - kh) // stride + 1
  width = (x.shape[2] - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride]
      out = out + window @ weight[:, :, i, j].astype(np.float64).T
  return out


def _bn(x, state, key):
  """BatchNorm2d in eval mode, epsilon 1e-5."""
  mean, var, weight, bias = (state[f"{key}.{n}"].astype(np.float64)
                             for n in ("running_mean", "running_var", "weight", "bias"))
  return (x - mean) / np.sqrt(var + 1e-5) * weight + bias


def _max_pool(x):
  """MaxPool2d(kernel_size=3, stride=2, padding=1): the padding is -inf."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  height, width = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  return np.max([x[:, i:i + 2 * height - 1:2, j:j + 2 * width - 1:2]
                 for i in range(3) for j in range(3)], axis=0)


def _relu(x):
  return np.maximum(x, 0)


def trunk(images, state, name) -> np.ndarray:
  """torchvision `name`'s layer4 output (N, H, W, C) of NHWC `images` (already normalised)."""
  stage_sizes, bottleneck = ARCHITECTURES[name]
  x = _relu(_bn(_conv(images.astype(np.float64), state["conv1.weight"], 2, 3), state, "bn1"))
  x = _max_pool(x)
  for s, blocks in enumerate(stage_sizes):
    for j in range(blocks):
      key, stride = f"layer{s + 1}.{j}", 2 if s > 0 and j == 0 else 1
      if bottleneck:  # torchvision's Bottleneck strides on conv2, the 3x3 (v1.5).
        y = _relu(_bn(_conv(x, state[f"{key}.conv1.weight"], 1, 0), state, f"{key}.bn1"))
        y = _relu(_bn(_conv(y, state[f"{key}.conv2.weight"], stride, 1), state, f"{key}.bn2"))
        y = _bn(_conv(y, state[f"{key}.conv3.weight"], 1, 0), state, f"{key}.bn3")
      else:
        y = _relu(_bn(_conv(x, state[f"{key}.conv1.weight"], stride, 1), state, f"{key}.bn1"))
        y = _bn(_conv(y, state[f"{key}.conv2.weight"], 1, 1), state, f"{key}.bn2")
      if f"{key}.downsample.0.weight" in state:
        x = _bn(_conv(x, state[f"{key}.downsample.0.weight"], stride, 0), state,
                f"{key}.downsample.1")
      x = _relu(x + y)
  return x
