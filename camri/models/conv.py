"""The convolution of every backbone's `nn.Conv`: XLA's, with a faster weight gradient on CPU.

Forward and input gradient dx are XLA's. The weight gradient dW is XLA's, or
"tap matmuls". With x padded once (pads (lo, hi) per spatial axis), stride
(sh, sw) and dy the output's cotangent (N, P, Q, O):

    dW[i, j, c, o] = sum_{n, p, q} x_pad[n, sh*p + i, sw*q + j, c] * dy[n, p, q, o]

i.e. for each tap (i, j), dW[i, j] = x_shifted(i, j)^T . dy, one matmul over the
M = N*P*Q rows of the flattened batch and space. XLA:CPU computes dW as a
convolution whose window is the whole output map; for 1x1 kernels that runs
at a fifth to a tenth of the matmul's speed (README, "Benchmark"). Splitting
the M rows into chunks, summed afterwards, measured slower: XLA's matmul
already shares a long contraction between the cores.

Which dW a layer gets is `weight_grad_method`: a fixed rule of the backend, the
kernel and the dtype, so a resumed run and one run on 1 or 2 devices trace the
same computation (an autotuner timing kernels at start would not).
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


@dataclasses.dataclass(frozen=True)
class Choice:
  """One traced convolution and the weight gradient it got."""
  lhs_shape: tuple[int, ...]
  kernel_shape: tuple[int, ...]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  method: str  # "xla" or "taps"

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


def conv_general_dilated(weight_grad: str = "auto") -> Callable[..., jax.Array]:
  """`lax.conv_general_dilated` whose dW is chosen by `weight_grad`, for `nn.Conv`.

  Args:
    weight_grad: "auto" (`weight_grad_method`'s rule), "xla" (XLA's dW
      everywhere) or "taps" (tap matmuls wherever they apply: ungrouped,
      undilated NHWC convolutions).
  """
  if weight_grad not in CONV_WEIGHT_GRADS:
    raise ValueError(f"weight_grad={weight_grad!r} is unknown: choose one of "
                     f"{list(CONV_WEIGHT_GRADS)}")
  return functools.partial(_conv, weight_grad=weight_grad)


def _conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
          dimension_numbers=None, feature_group_count=1, batch_group_count=1,
          precision=None, preferred_element_type=None, *, weight_grad):
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
  method = weight_grad_method(weight_grad, jax.default_backend(), rhs.shape, lhs.dtype)
  if _recorded is not None:
    _recorded.append(Choice(tuple(lhs.shape), tuple(rhs.shape), strides, pads, method))
  if method == "xla":
    return xla(lhs, rhs)
  return _tap_conv(lhs, rhs, strides, pads, precision)


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  if len(lhs_shape) != 4:
    return False
  return (lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC))


def weight_grad_method(weight_grad: str, backend: str, kernel_shape: Sequence[int],
                       dtype) -> str:
  """"xla" or "taps": the dW of an ungrouped, undilated NHWC convolution.

  "auto" takes taps where they were measured faster (README, "Benchmark"):
  on CPU, for float32 1x1 kernels, of stride 1 and 2 alike. Elsewhere XLA's:
  on GPU and TPU (not measured), for other dtypes, and for 3x3 and 7x7 kernels,
  whose taps measured slower in the train step on every map size.
  """
  if weight_grad != "auto":
    return weight_grad
  if (backend == "cpu" and jnp.dtype(dtype) == jnp.float32
      and tuple(kernel_shape[:2]) == (1, 1)):
    return "taps"
  return "xla"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_conv(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _tap_conv_fwd(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _tap_conv_bwd(strides, pads, precision, residuals, dy):
  x, w = residuals
  dx, = jax.linear_transpose(lambda x: _xla_conv(x, w, strides, pads, precision), x)(dy)
  return dx, tap_weight_grad(x, dy, w.shape, strides, pads, precision).astype(w.dtype)


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def tap_weight_grad(x, dy, kernel_shape, strides, pads, precision=None) -> jax.Array:
  """dW of an NHWC/HWIO convolution as one matmul per tap (module doc)."""
  kh, kw, c, o = kernel_shape
  n, p, q, _ = dy.shape
  sh, sw = strides
  x_pad = lax.pad(x, jnp.zeros((), x.dtype),
                  ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))
  dy_rows = dy.reshape(n * p * q, o)
  taps = []
  for i in range(kh):
    for j in range(kw):
      shifted = lax.slice(x_pad, (0, i, j, 0), (n, i + sh * (p - 1) + 1, j + sw * (q - 1) + 1, c),
                          (1, sh, sw, 1))
      taps.append(lax.dot_general(shifted.reshape(n * p * q, c), dy_rows,
                                  (((0,), (0,)), ((), ())), precision=precision))
  return jnp.stack(taps).reshape(kh, kw, c, o)
