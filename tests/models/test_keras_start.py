"""reference_cnn starts as the authors' Keras model: Keras's defaults, stated here.

Keras: BatchNormalization(momentum=0.99, epsilon=1e-3); Conv2D and Dense
kernels glorot_uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) and
variance 2 / (fan_in + fan_out); the authors' Dense(512) feature layer
he_normal, variance 2 / fan_in; Adam epsilon 1e-7.
"""

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import prepare
from camri import run_log
from camri import train
from camri.models import cnn
from configs import cifar10

KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3
KERAS_ADAM_EPSILON = 1e-7


def _fans(kernel):
  """Keras's fans: (receptive field x input channels, receptive field x output channels)."""
  receptive = math.prod(kernel.shape[:-2])
  return receptive * kernel.shape[-2], receptive * kernel.shape[-1]


def _assert_variance(values, expected, kurtosis):
  # The sample variance of n draws has a relative standard error of
  # sqrt((kurtosis - 1) / n); allow 5 of them.
  n = values.size
  assert np.var(values) == pytest.approx(expected, rel=5 * math.sqrt((kurtosis - 1) / n))


UNIFORM_KURTOSIS = 1.8
TRUNCATED_NORMAL_KURTOSIS = 2.4  # Of a normal truncated at 2 standard deviations.


@pytest.mark.parametrize("loss", ["camri", "cross_entropy"])
def test_kernels_and_class_weights_start_as_keras(loss):
  config, class_names = prepare.validated_config(cifar10.get_config(f"loss={loss}"))
  model, _ = train.make_model(config, len(class_names))
  params = jax.jit(model.init, static_argnames="train")(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  flat = {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}

  convs = {k: v for k, v in flat.items() if v.ndim == 4}
  head = {k: v for k, v in flat.items() if k.startswith("head/") and k.endswith("kernel")}
  assert len(convs) == 13 and len(head) == 1
  for name, kernel in {**convs, **head}.items():
    fan_in, fan_out = _fans(kernel)
    assert np.abs(kernel).max() <= math.sqrt(6 / (fan_in + fan_out)), name
    _assert_variance(kernel, 2 / (fan_in + fan_out), UNIFORM_KURTOSIS)

  (feature,) = [v for k, v in flat.items() if "FeatureLayer" in k and k.endswith("Dense_0/kernel")]
  assert feature.shape == (512, 512)
  _assert_variance(feature, 2 / 512, TRUNCATED_NORMAL_KURTOSIS)
  assert np.abs(feature).max() <= 2 * math.sqrt(2 / 512) / 0.87962566  # Truncated at 2 std.


def test_batchnorm_momentum_and_epsilon_are_keras():
  backbone = cnn.reference_cnn()
  x = jax.random.uniform(jax.random.key(1), (16, 32, 32, 3))
  variables = backbone.init(jax.random.key(0), x[:1], train=False)

  inputs, outputs = {}, {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      path = "/".join(context.module.path)
      inputs[path], outputs[path] = np.asarray(args[0]), np.asarray(out)
    return out

  def apply(stats):
    with nn.intercept_methods(record):
      _, updates = backbone.apply({"params": variables["params"], "batch_stats": stats}, x,
                                  train=True, rngs={"dropout": jax.random.key(2)},
                                  mutable=["batch_stats"])
    return updates["batch_stats"]

  flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")
  start = variables["batch_stats"]
  once = apply(start)
  twice = apply(once)  # The same batch and dropout: the same batch statistics.
  r0, r1, r2 = flat(start), flat(once), flat(twice)
  m = KERAS_BN_MOMENTUM
  assert len(inputs) == 5
  for path, x_in in inputs.items():
    axes = tuple(range(x_in.ndim - 1))
    batch = {"mean": x_in.mean(axis=axes), "var": x_in.var(axis=axes)}
    for stat, value in batch.items():
      key = f"{path}/{stat}"
      expected = m * np.asarray(r0[key]) + (1 - m) * value
      np.testing.assert_allclose(r1[key], expected, rtol=1e-4, atol=1e-7)
      np.testing.assert_allclose(r2[key], m * expected + (1 - m) * value, rtol=1e-4, atol=1e-7)
    # Training normalises by the batch statistics with Keras's epsilon (scale 1, bias 0 at the start).
    np.testing.assert_allclose(
        outputs[path], (x_in - batch["mean"]) / np.sqrt(batch["var"] + KERAS_BN_EPSILON),
        rtol=1e-4, atol=1e-4)


def test_adam_epsilon_is_keras_and_old_runs_keep_optax_default(tmp_path):
  config = cifar10.get_config()
  assert config.adam_eps == KERAS_ADAM_EPSILON
  # One Adam step from a gradient g moves a parameter by -lr * g / (|g| + eps).
  tx = train.make_optimizer(config)
  g = jnp.full((1,), 1e-7)
  update, _ = tx.update(g, tx.init(g))
  assert float(update[0]) == pytest.approx(-1e-3 * 1e-7 / (1e-7 + KERAS_ADAM_EPSILON), rel=1e-4)
  # A config.json written before the field existed is read as the run it was: optax's 1e-8.
  (tmp_path / run_log.CONFIG_FILE).write_text('{"num_epochs": 1}')
  assert run_log.read_config(str(tmp_path))["adam_eps"] == 1e-8
