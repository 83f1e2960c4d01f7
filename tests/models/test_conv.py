"""Tap matmuls' forward pass and gradients equal XLA's for every conv geometry of camri's models."""

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


def _y_and_grads(x, w, dy, strides, pads, conv_fn):
  """(y, dx, dW) of `conv_fn`."""
  y, vjp = jax.vjp(lambda x, w: conv_fn(x, w, strides, pads, dimension_numbers=_NHWC), x, w)
  return (y, *vjp(dy))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _xla_and_taps(x, w, dy, strides, pads):
  """(y, dx, dW) of XLA's convolution and of the taps (one program: one compile)."""
  return [_y_and_grads(x, w, dy, strides, pads, fn)
          for fn in (jax.lax.conv_general_dilated, conv.conv_general_dilated("taps"))]


def _exact_y_and_grads(x, w, dy, layer):
  """(y, dx, dW) in float64 NumPy, and each one's sum of |products| per element.

  Products of float32 numbers are exact in float64, and each of y, dx and dW
  is a sum of such products, linear in each factor: the same sums of the
  factors' absolute values are the sums of the products' absolute values.
  The float64 sums' own error is below gamma_n(2^-53) times those.
  """
  (kh, kw, c, o), (sh, sw), (n, p, q, _) = w.shape, layer.strides, dy.shape
  x_pad = np.pad(x.astype(np.float64), ((0, 0), *layer.pads, (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(x_pad, (kh, kw), axis=(1, 2))
  cols = windows[:, :sh * p:sh, :sw * q:sw].transpose(0, 1, 2, 4, 5, 3).reshape(n * p * q, -1)
  (top, _), (left, _) = layer.pads

  def sums(cols, w_rows, dy_rows):
    cols_grad = (dy_rows @ w_rows.T).reshape(n, p, q, kh, kw, c)
    dx_pad = np.zeros(x_pad.shape)
    for i in range(kh):
      for j in range(kw):
        dx_pad[:, i:i + sh * p:sh, j:j + sw * q:sw] += cols_grad[:, :, :, i, j]
    return ((cols @ w_rows).reshape(n, p, q, o),
            dx_pad[:, top:top + x.shape[1], left:left + x.shape[2]],
            (cols.T @ dy_rows).reshape(kh, kw, c, o))

  w_rows, dy_rows = w.astype(np.float64).reshape(-1, o), dy.astype(np.float64).reshape(-1, o)
  return sums(cols, w_rows, dy_rows), sums(abs(cols), abs(w_rows), abs(dy_rows))


def _gamma(n, u):
  """Higham's gamma_n = n u / (1 - n u)."""
  return n * u / (1 - n * u)


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


def test_taps_equal_xla_within_float32_round_off():
  """The forward pass, dx and dW of tap matmuls and of XLA, against float64.

  Each element of y, dx and dW is an inner product (padding adds exact
  zeros) of at most n terms: kh*kw*C for y, kh*kw*O for dx (the taps that
  reach an input position, times the output channels) and N*P*Q for dW.
  Evaluated in float32 in any order, blocked or with FMA, it is within
  gamma_n * sum |products| of the exact value, u = 2^-24 (Higham, Accuracy and
  Stability of Numerical Algorithms, eq. 3.5); the float64 reference is
  within gamma_n(2^-53) of it. XLA's and the taps' results both are, so they
  differ by at most twice the sum of the two.
  """
  rng = np.random.default_rng(0)
  for layer in _geometries():
    # At most 8 channels: the taps' index arithmetic does not depend on them.
    (kh, kw, c, o), batch = layer.kernel_shape, layer.lhs_shape[0]
    c, o = min(c, 8), min(o, 8)
    x = rng.standard_normal((*layer.lhs_shape[:3], c), np.float32)
    w = rng.standard_normal((kh, kw, c, o), np.float32)
    y = jax.eval_shape(lambda x, w, l=layer: jax.lax.conv_general_dilated(
        x, w, l.strides, l.pads, dimension_numbers=_NHWC), x, w)
    dy = rng.standard_normal(y.shape, np.float32)
    exact, magnitude = _exact_y_and_grads(x, w, dy, layer)
    lengths = (kh * kw * c, kh * kw * o, batch * y.shape[1] * y.shape[2])
    bounds = [(_gamma(n, 2.0**-24) + _gamma(n, 2.0**-53)) * m for n, m in zip(lengths, magnitude)]
    xla, tapped = _xla_and_taps(x, w, dy, layer.strides, layer.pads)
    for name, e, bound, a, b in zip(("y", "dx", "dW"), exact, bounds, xla, tapped):
      assert np.all(np.abs(a - e) <= bound), (name, layer)
      assert np.all(np.abs(b - e) <= bound), (name, layer)
      assert np.all(np.abs(b - a) <= 2 * bound), (name, layer)


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


def test_auto_takes_taps_on_small_maps_and_for_1x1_weight_grads_on_cpu_only():
  auto = functools.partial(conv.methods, "auto")
  taps, xla = conv.Methods.all("taps"), conv.Methods.all("xla")
  assert auto("cpu", (3, 3, 512, 512), (2, 2), jnp.float32) == taps
  assert auto("cpu", (3, 3, 256, 256), (4, 4), jnp.float32) == taps
  assert auto("cpu", (1, 1, 256, 512), (2, 2), jnp.float32) == taps
  assert auto("cpu", (1, 1, 64, 256), (8, 8), jnp.float32) == conv.Methods("xla", "xla", "taps")
  for kernel in ((3, 3, 64, 64), (7, 7, 3, 64)):
    assert auto("cpu", kernel, (5, 5), jnp.float32) == xla
  assert auto("cpu", (3, 3, 512, 512), (2, 2), jnp.bfloat16) == xla
  for backend in ("gpu", "tpu"):
    assert auto(backend, (3, 3, 512, 512), (2, 2), jnp.float32) == xla
  for forced in ("xla", "taps"):
    assert conv.methods(forced, "gpu", (3, 3, 8, 8), (9, 9), jnp.bfloat16) == conv.Methods.all(
        forced)


def test_resnet18_at_64_pixels_takes_taps_in_its_last_two_stages():
  backbone = models.get_backbone("resnet18", 16)
  with conv.recorded_choices() as layers:
    jax.eval_shape(functools.partial(backbone.init, train=False), jax.random.key(0),
                   jnp.zeros((1, 64, 64, 3)))
  assert [str(layer) for layer in layers[10:]] == [
      "8x8x128 -> 256, 3x3 stride 2x2: taps", "4x4x256 -> 256, 3x3 stride 1x1: taps",
      "8x8x128 -> 256, 1x1 stride 2x2: taps", "4x4x256 -> 256, 3x3 stride 1x1: taps",
      "4x4x256 -> 256, 3x3 stride 1x1: taps", "4x4x256 -> 512, 3x3 stride 2x2: taps",
      "2x2x512 -> 512, 3x3 stride 1x1: taps", "4x4x256 -> 512, 1x1 stride 2x2: taps",
      "2x2x512 -> 512, 3x3 stride 1x1: taps", "2x2x512 -> 512, 3x3 stride 1x1: taps"]
  assert str(layers[7]) == "16x16x64 -> 128, 1x1 stride 2x2: taps for dW"
  assert {layer.method for layer in layers[:10]} == {"xla", "taps for dW"}


def test_grouped_and_dilated_convolutions_keep_xla_gradient():
  taps = conv.conv_general_dilated("taps")
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
  with conv.recorded_choices() as layers:
    taps(x, w, (1, 1), "SAME", dimension_numbers=_NHWC, feature_group_count=2)
    taps(x, w[:, :, :1].repeat(4, 2), (1, 1), "SAME", rhs_dilation=(2, 2),
         dimension_numbers=_NHWC)
  assert layers == []  # Neither went through the taps.
  with pytest.raises(ValueError, match="weight_grad='fast'"):
    conv.conv_general_dilated("fast")


def test_train_steps_with_taps_and_xla_agree(digits_config):
  """Real train steps of the digits model with each method: the same losses up to round-off."""
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
  # The programs differ by float32 round-off, in the forward pass already.
  np.testing.assert_allclose(taps, xla, rtol=1e-5)


def test_a_run_from_before_the_field_reads_back_as_xla(tmp_path):
  (tmp_path / run_log.CONFIG_FILE).write_text('{"num_epochs": 1}')
  assert run_log.read_config(str(tmp_path))["conv_weight_grad"] == "xla"
