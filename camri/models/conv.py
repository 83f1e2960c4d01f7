"""The convolution of every backbone's `nn.Conv`: XLA's, or "tap matmuls" where faster on CPU.

Each of a convolution's three computations, the forward pass y, the input
gradient dx and the weight gradient dW, is XLA's or tap matmuls. With x
padded once (pads (lo, hi) per spatial axis) and stride (sh, sw), the taps
gather each output position's receptive field, kh*kw shifted strided copies
of x_pad, into one row of kh*kw*C numbers (`_patches`):

    cols[n, p, q, (i, j, c)] = x_pad[n, sh*p + i, sw*q + j, c]
    y  = cols . W          one matmul, (N*P*Q, kh*kw*C) x (kh*kw*C, O)
    dW = cols^T . dy       one matmul over the M = N*P*Q rows
    dx = gather^T (dy . W^T)    one matmul, then each tap's block added back
                                at its shift (the transpose of the gather)

dx and dW are the transposes of y's linear maps in x and in W, so each is
computed by transposing the XLA or the taps form of y (`jax.linear_transpose`).

XLA:CPU is slow on two kinds of convolution (README, "Benchmark"):
- on small feature maps, the forward pass and dx of a 3x3 kernel: on a 2x2
  map of 512 channels a hundred times slower than the taps' matmul, on 4x4
  about twice (ResNet's last stages at 32 to 64 pixels);
- dW of 1x1 kernels, computed as a convolution whose window is the whole
  output map, at a fifth to a tenth of the matmul's speed.

Which a layer gets is `methods`: a fixed rule of the backend, the kernel, the
output map and the dtype, so a resumed run and one run on 1 or 2 devices
trace the same computation (an autotuner timing kernels at start would not:
its choice, and so the round-off, would move with the machine's load).
"""

from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp

from camri.config_lib import CONV_WEIGHT_GRADS


_NHWC = ("NHWC", "HWIO", "NHWC")
# Output maps of at most this many positions take taps for all three
# computations on CPU (`methods`): 4x4 and smaller.
SMALL_MAP = 16


@dataclasses.dataclass(frozen=True)
class Methods:
  """"xla" or "taps" for each of a convolution's three computations."""
  forward: str
  input_grad: str
  weight_grad: str

  @classmethod
  def all(cls, method: str) -> "Methods":
    return cls(method, method, method)

  def __str__(self):
    taps = [name for name, method in (("forward", self.forward), ("dx", self.input_grad),
                                      ("dW", self.weight_grad)) if method == "taps"]
    return {0: "xla", 3: "taps"}.get(len(taps), f"taps for {', '.join(taps)}")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One traced convolution and the methods it got."""
  lhs_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  methods: Methods

  @property
  def method(self) -> str:
    """"xla", "taps" or "taps for dW" (those of the three computations that take taps)."""
    return str(self.methods)

  def __str__(self):
    (h, w, c), (kh, kw, _, o) = self.lhs_shape[1:], self.kernel_shape
    stride = "x".join(map(str, self.strides))
    return f"{h}x{w}x{c} -> {o}, {kh}x{kw} stride {stride}: {self.method}"


_recorded: list[Choice] | None = None


@contextlib.contextmanager
def recorded_choices() -> Iterator[list[Choice]]:
  """Collects the `Choice` of each convolution traced inside (for `camri.bench`)."""
  global _recorded
  outer, _recorded = _recorded, []
  try:
    yield _recorded
  finally:
    _recorded = outer


def conv_general_dilated(setting: str = "auto") -> Callable[..., jax.Array]:
  """`lax.conv_general_dilated` whose computations are chosen by `setting`, for `nn.Conv`.

  Args:
    setting: config.conv_weight_grad: "auto" (`methods`' rule), "xla" (XLA's
      everywhere) or "taps" (tap matmuls for y, dx and dW wherever they
      apply: ungrouped, undilated NHWC convolutions).
  """
  if setting not in CONV_WEIGHT_GRADS:
    raise ValueError(f"weight_grad={setting!r} is unknown: choose one of "
                     f"{list(CONV_WEIGHT_GRADS)}")
  return functools.partial(_conv, setting=setting)


def _conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
          dimension_numbers=None, feature_group_count=1, batch_group_count=1,
          precision=None, preferred_element_type=None, *, setting):
  xla = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  tappable = (_is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
              and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
              and feature_group_count == 1 and batch_group_count == 1
              and preferred_element_type is None)
  if not tappable:
    return xla(lhs, rhs)
  strides = tuple(window_strides)
  pads = tuple(map(tuple, lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
                   if isinstance(padding, str) else padding))
  chosen = methods(setting, jax.default_backend(), rhs.shape,
                   _output_map(lhs.shape, rhs.shape, strides, pads), lhs.dtype)
  if _recorded is not None:
    _recorded.append(Choice(tuple(lhs.shape), tuple(rhs.shape), strides, pads, chosen))
  if chosen == Methods.all("xla"):
    return xla(lhs, rhs)
  return _chosen_conv(lhs, rhs, strides, pads, precision, chosen)


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  if len(lhs_shape) != 4:
    return False
  return (lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC))


def _output_map(lhs_shape, kernel_shape, strides, pads) -> tuple[int, int]:
  return tuple((size + lo + hi - k) // s + 1 for size, k, s, (lo, hi)
               in zip(lhs_shape[1:3], kernel_shape[:2], strides, pads))


def methods(setting: str, backend: str, kernel_shape: Sequence[int],
            output_map: Sequence[int], dtype) -> Methods:
  """The methods of an ungrouped, undilated NHWC convolution.

  "auto" takes taps where they were measured faster (README, "Benchmark"),
  on CPU, for float32: for all three computations where the output map has at
  most `SMALL_MAP` positions (4x4), for dW alone with 1x1 kernels on larger
  maps. Elsewhere XLA's: on GPU and TPU (not measured), for other dtypes, and
  for larger kernels on larger maps, whose taps measured slower in the train
  step (the 9 shifted copies of x cost more than XLA's convolution saves).
  """
  if setting != "auto":
    return Methods.all(setting)
  if backend != "cpu" or jnp.dtype(dtype) != jnp.float32:
    return Methods.all("xla")
  if output_map[0] * output_map[1] <= SMALL_MAP:
    return Methods.all("taps")
  if tuple(kernel_shape[:2]) == (1, 1):
    return Methods("xla", "xla", "taps")
  return Methods.all("xla")


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _patches(x, kernel_hw, strides, pads) -> jax.Array:
  """(N, P, Q, kh*kw*C): each output position's receptive field, in (i, j, c) order."""
  (kh, kw), (sh, sw), (n, _, _, c) = kernel_hw, strides, x.shape
  p, q = _output_map(x.shape, kernel_hw, strides, pads)
  x_pad = lax.pad(x, jnp.zeros((), x.dtype),
                  ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
  return jnp.concatenate(
      [lax.slice(x_pad, (0, i, j, 0), (n, i + sh * (p - 1) + 1, j + sw * (q - 1) + 1, c),
                 (1, sh, sw, 1)) for i in range(kh) for j in range(kw)], axis=3)


def taps_conv(x, w, strides, pads, precision=None) -> jax.Array:
  """The NHWC/HWIO convolution as one matmul over `_patches` (module doc)."""
  kh, kw, c, o = w.shape
  cols = _patches(x, (kh, kw), strides, pads)
  # As (M, kh*kw*C) rows, dW (the transpose in w) is one 2-D matmul, not a
  # contraction over three axes.
  y = lax.dot(cols.reshape(-1, kh * kw * c), w.reshape(kh * kw * c, o), precision=precision)
  return y.reshape(*cols.shape[:3], o)


_FORWARDS = {"xla": _xla_conv, "taps": taps_conv}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _chosen_conv(x, w, strides, pads, precision, chosen):
  return _FORWARDS[chosen.forward](x, w, strides, pads, precision)


def _chosen_conv_fwd(x, w, strides, pads, precision, chosen):
  return _chosen_conv(x, w, strides, pads, precision, chosen), (x, w)


def _chosen_conv_bwd(strides, pads, precision, chosen, residuals, dy):
  x, w = residuals
  dx_conv, dw_conv = _FORWARDS[chosen.input_grad], _FORWARDS[chosen.weight_grad]
  dx, = jax.linear_transpose(lambda x: dx_conv(x, w, strides, pads, precision), x)(dy)
  dw, = jax.linear_transpose(lambda w: dw_conv(x, w, strides, pads, precision), w)(dy)
  return dx, dw


_chosen_conv.defvjp(_chosen_conv_fwd, _chosen_conv_bwd)
