"""Tap matmuls' weight gradient equals XLA's for every conv geometry of camri's models."""

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from camri import models
from camri import prepare
from camri import run_log
from camri import train
from camri.models import conv

_NHWC = ("NHWC", "HWIO", "NHWC")
# Each backbone at the input sizes its configs give it (digits; a 28x28 and the
# default 64x64 image folder; cifar10 and gtsrb; awa2's 224).
_MODEL_INPUTS = [("small_cnn", (8, 8, 1)), ("small_cnn", (28, 28, 3)),
                 ("small_cnn", (64, 64, 3)), ("reference_cnn", (32, 32, 3)),
                 ("resnet18_small_inputs", (32, 32, 3)), ("resnet50_small_inputs", (32, 32, 3)),
                 ("resnet18", (224, 224, 3)), ("resnet50", (224, 224, 3))]


def _conv_layers(name, image_shape):
  """The convolutions of backbone `name` on one image (`conv.Choice`s)."""
  backbone = models.get_backbone(name, 16, conv_weight_grad="taps")
  with conv.recorded_choices() as layers:
    jax.eval_shape(functools.partial(backbone.init, train=False), jax.random.key(0),
                   jnp.zeros((1, *image_shape)))
  return layers


@functools.partial(jax.jit, static_argnums=(3, 4))
def _xla_and_tap_grads(x, w, dy, strides, pads):
  """(dx, dW) of XLA's convolution and of the taps one."""
  def grads(fn):
    _, vjp = jax.vjp(lambda x, w: fn(x, w, strides, pads, dimension_numbers=_NHWC), x, w)
    return vjp(dy)
  return grads(jax.lax.conv_general_dilated), grads(conv.conv_general_dilated("taps"))


def _exact_weight_grad(x, dy, layer):
  """dW in float64, and sum |x| |dy| per element.

  Products of float32 numbers are exact in float64; the float64 sum's own
  error, below n 2^-53 sum |x| |dy|, is negligible next to float32's.
  """
  kh, kw, c, o = layer.kernel_shape
  (sh, sw), (n, p, q, _) = layer.strides, dy.shape
  x_pad = np.pad(x.astype(np.float64), ((0, 0), *layer.pads, (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(x_pad, (kh, kw), axis=(1, 2))
  columns = windows[:, :sh * p:sh, :sw * q:sw].transpose(0, 1, 2, 4, 5, 3).reshape(n * p * q, -1)
  dy = dy.astype(np.float64).reshape(n * p * q, o)
  exact, magnitude = columns.T @ dy, np.abs(columns).T @ np.abs(dy)
  return exact.reshape(kh, kw, c, o), magnitude.reshape(kh, kw, c, o)


def _geometries():
  """One layer of each geometry of the models' convolutions, the one with fewest channels.

  A geometry is what the taps' index arithmetic depends on: the input's
  spatial size, the kernel's, the stride and the padding; the channels only
  size the matmuls.
  """
  layers = {}
  for name, image_shape in _MODEL_INPUTS:
    for layer in _conv_layers(name, image_shape):
      key = (layer.lhs_shape[1:3], layer.kernel_shape[:2], layer.strides, layer.pads)
      if key not in layers or np.prod(layer.kernel_shape) < np.prod(layers[key].kernel_shape):
        layers[key] = layer
  return list(layers.values())


def test_tap_weight_grad_equals_xla_within_float32_round_off():
  rng = np.random.default_rng(0)
  for layer in _geometries():
    x = rng.standard_normal(layer.lhs_shape, np.float32)
    w = rng.standard_normal(layer.kernel_shape, np.float32)
    y = jax.eval_shape(lambda x, w, l=layer: jax.lax.conv_general_dilated(
        x, w, l.strides, l.pads, dimension_numbers=_NHWC), x, w)
    dy = rng.standard_normal(y.shape, np.float32)
    (dx_xla, dw_xla), (dx_taps, dw_taps) = _xla_and_tap_grads(x, w, dy, layer.strides,
                                                              layer.pads)
    np.testing.assert_array_equal(dx_taps, dx_xla)  # dx is XLA's in both.
    # Each dW element is an inner product of length n = N*P*Q (padding adds
    # exact zeros). Evaluated in float32 in any order, blocked or with FMA, it
    # is within gamma_n * sum |x| |dy| of the exact value, gamma_n = n u / (1 - n u),
    # u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5).
    # XLA's and the taps' dW both are, so they differ by at most twice that.
    n = np.prod(dy.shape[:3])
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    exact, magnitude = _exact_weight_grad(x, dy, layer)
    for dw in (dw_xla, dw_taps):
      assert np.all(np.abs(dw - exact) <= gamma * magnitude), layer
    assert np.all(np.abs(dw_taps - dw_xla) <= 2 * gamma * magnitude), layer


@pytest.mark.parametrize("kernel, strides, padding", [
    ((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), ((1, 1), (1, 1))), ((1, 1), (2, 2), "VALID"),
    ((3, 2), (1, 2), ((0, 2), (1, 0)))])
def test_taps_convolution_gradients_match_finite_differences(kernel, strides, padding):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 9, 8, 3))
  w = rng.standard_normal((*kernel, 3, 4))
  taps = conv.conv_general_dilated("taps")
  with jax.enable_x64(True):
    jax.test_util.check_grads(
        lambda x, w: taps(x, w, strides, padding, dimension_numbers=_NHWC),
        (jnp.asarray(x), jnp.asarray(w)), order=1, modes=("rev",))


def test_auto_takes_taps_only_for_float32_1x1_kernels_on_cpu():
  auto = functools.partial(conv.weight_grad_method, "auto")
  assert auto("cpu", (1, 1, 64, 256), jnp.float32) == "taps"
  for kernel in ((3, 3, 64, 64), (7, 7, 3, 64)):
    assert auto("cpu", kernel, jnp.float32) == "xla"
  assert auto("cpu", (1, 1, 64, 256), jnp.bfloat16) == "xla"
  for backend in ("gpu", "tpu"):
    assert auto(backend, (1, 1, 64, 256), jnp.float32) == "xla"
  for forced in ("xla", "taps"):
    assert conv.weight_grad_method(forced, "gpu", (3, 3, 8, 8), jnp.bfloat16) == forced


def test_grouped_and_dilated_convolutions_keep_xla_gradient():
  taps = conv.conv_general_dilated("taps")
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
  with conv.recorded_choices() as layers:
    taps(x, w, (1, 1), "SAME", dimension_numbers=_NHWC, feature_group_count=2)
    taps(x, w[:, :, :1].repeat(4, 2), (1, 1), "SAME", rhs_dilation=(2, 2),
         dimension_numbers=_NHWC)
  assert layers == []  # Neither went through the taps' custom gradient.
  with pytest.raises(ValueError, match="weight_grad='fast'"):
    conv.conv_general_dilated("fast")


def test_train_steps_with_taps_and_xla_weight_grads_agree(digits_config):
  """Real train steps of the digits model with each dW: the same losses up to round-off."""
  rng = np.random.default_rng(0)
  batches = [{"image": rng.random((8, 8, 8, 1), np.float32),
              "label": rng.integers(0, 10, 8).astype(np.int32),
              "mask": np.ones(8, np.float32)} for _ in range(3)]

  def losses(conv_weight_grad):
    digits_config.conv_weight_grad = conv_weight_grad
    config, _ = prepare.validated_config(digits_config)
    model, objective = train.make_model(config, 10)
    state = train.create_train_state(config, model, (8, 8, 1))
    step = jax.jit(train.make_train_step(objective, config.seed))
    out = []
    with conv.recorded_choices() as layers:
      for batch in batches:
        state, sums = step(state, train.empty_train_sums(10), batch)
        out.append(float(sums["loss_sum"] / sums["count"]))
    assert {layer.method for layer in layers} == {conv_weight_grad}
    return np.array(out)

  xla, taps = losses("xla"), losses("taps")
  # The first step's forward pass is the same program; later steps start from
  # Adam updates of gradients that differ by float32 round-off.
  assert taps[0] == xla[0]
  np.testing.assert_allclose(taps, xla, rtol=1e-5)


def test_a_run_from_before_the_field_reads_back_as_xla(tmp_path):
  (tmp_path / run_log.CONFIG_FILE).write_text('{"num_epochs": 1}')
  assert run_log.read_config(str(tmp_path))["conv_weight_grad"] == "xla"
