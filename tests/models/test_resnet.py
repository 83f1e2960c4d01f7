"""ResNet backbones: feature shape, parameter counts, load_pretrained."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from camri.models import resnet

_FEATURE_DIM = 24


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _trunk(params):
  return {k: v for k, v in params.items() if k not in resnet.FEATURE_MODULES}


def _save(path, tree):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree)
  checkpointer.wait_until_finished()
  return path


@pytest.fixture(scope="module")
def resnet18():
  """ResNet18 for 32x32 images, its jitted init and variables for seed 0."""
  model = resnet.ResNet18(feature_dim=_FEATURE_DIM, small_inputs=True)
  init = jax.jit(functools.partial(model.init, train=False))
  images = jnp.zeros((4, 32, 32, 3))
  # The rbg PRNG compiles the init of 11M parameters ~3x faster on CPU.
  return model, lambda seed: init(jax.random.key(seed, impl="rbg"), images)


def test_resnet18_small_inputs_maps_32x32_images_to_batch_normed_features(
    resnet18):
  model, init = resnet18
  variables = init(0)
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
  features, updates = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=lambda m, _: m.name == "feature_dense"))(
          variables, images)
  assert features.shape == (4, _FEATURE_DIM)
  assert features.dtype == jnp.float32
  # The last layer is BatchNorm (scale 1, bias 0 at init, epsilon 1e-5) of the
  # Dense output h, with no activation after it.
  h = np.asarray(updates["intermediates"]["feature_dense"]["__call__"][0])
  expected = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-5)
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
  assert (features < 0).any()
  assert set(updates["batch_stats"]) == set(variables["batch_stats"])
  eval_features = jax.jit(functools.partial(model.apply, train=False))(
      variables, images)
  assert eval_features.shape == (4, _FEATURE_DIM)


@pytest.mark.parametrize("make, small_inputs, trunk_params", [
    # torchvision resnet18 (11,689,512) less its fc 512*1000 + 1000.
    (resnet.ResNet18, False, 11_176_512),
    # The CIFAR ResNet18 (11,173,962 with a 10-way fc): 3x3 stem, no max pool.
    (resnet.ResNet18, True, 11_168_832),
    # torchvision resnet50 (25,557,032) less its fc 2048*1000 + 1000.
    (resnet.ResNet50, False, 23_508_032),
])
def test_trunk_parameter_count_is_the_known_resnet_size(make, small_inputs,
                                                        trunk_params):
  model = make(feature_dim=_FEATURE_DIM, small_inputs=small_inputs)
  images = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), images)
  params = variables["params"]
  assert _count(_trunk(params)) == trunk_params
  width = 512 if make is resnet.ResNet18 else 2048
  # Dense(width -> feature_dim) with bias, then BatchNorm scale and bias.
  assert _count({k: params[k] for k in resnet.FEATURE_MODULES}) == (
      width * _FEATURE_DIM + _FEATURE_DIM + 2 * _FEATURE_DIM)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                       images)
  assert out.shape == (2, _FEATURE_DIM)


@pytest.fixture(scope="module")
def resnet18_shapes():
  """The parameter tree of `resnet18`'s model, as shapes: load_pretrained moves values, so the
  trees it is given need no initialiser (whose compile takes seconds), only random values."""
  model = resnet.ResNet18(feature_dim=_FEATURE_DIM, small_inputs=True)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        jnp.zeros((4, 32, 32, 3)))["params"]


def _random(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32).astype(s.dtype), shapes)


def test_load_pretrained_round_trip(resnet18_shapes, tmp_path):
  saved = _random(resnet18_shapes, 0)
  fresh = _random(resnet18_shapes, 1)
  path = _save(tmp_path / "ckpt", saved)
  loaded = resnet.load_pretrained(fresh, path)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  jax.tree.map(np.testing.assert_array_equal, loaded, saved)


def test_load_pretrained_overlays_the_trunk_and_ignores_a_foreign_head(
    resnet18_shapes, tmp_path):
  saved = _random(resnet18_shapes, 0)
  fresh = _random(resnet18_shapes, 1)
  checkpoint = dict(_trunk(saved), Dense_0={
      "kernel": np.ones((512, 1000), np.float32),
      "bias": np.zeros((1000,), np.float32)})
  loaded = resnet.load_pretrained(fresh, _save(tmp_path / "ckpt", checkpoint))
  assert set(loaded) == set(fresh)
  jax.tree.map(np.testing.assert_array_equal, _trunk(loaded), _trunk(saved))
  for name in resnet.FEATURE_MODULES:
    jax.tree.map(np.testing.assert_array_equal, loaded[name], fresh[name])
  assert not np.array_equal(fresh["conv_init"]["kernel"],
                            saved["conv_init"]["kernel"])


def _params(stem=3, dtype=jnp.float32):
  return {
      "conv_init": {"kernel": jnp.zeros((stem, stem, 3, 4), dtype)},
      "bn_init": {"scale": jnp.ones((4,), dtype),
                  "bias": jnp.zeros((4,), dtype)},
  }


def test_load_pretrained_casts_to_the_model_dtype(tmp_path):
  saved = jax.tree.map(lambda x: x + 0.5, _params())
  loaded = resnet.load_pretrained(_params(dtype=jnp.bfloat16),
                                  _save(tmp_path / "ckpt", saved))
  assert loaded["conv_init"]["kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(loaded["bn_init"]["bias"], 0.5)


@pytest.mark.parametrize("checkpoint, match", [
    (_params(stem=7), r"conv_init/kernel has shape \(7, 7, 3, 4\) .* needs "
                      r"\(3, 3, 3, 4\)"),
    ({"bn_init": {"scale": jnp.ones((4,))}},
     r"Module bn_init .* missing \['bias'\]"),
    ({"ResNetBlock_0": {"Conv_0": {"kernel": jnp.ones((3, 3, 4, 4))}}},
     "shares no module with the model"),
])
def test_load_pretrained_mismatch_is_a_one_line_error(tmp_path, checkpoint,
                                                      match):
  path = _save(tmp_path / "ckpt", checkpoint)
  with pytest.raises(ValueError, match=match) as error:
    resnet.load_pretrained(_params(), path)
  assert "\n" not in str(error.value)


def test_load_pretrained_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="No pretrained checkpoint at"):
    resnet.load_pretrained(_params(), tmp_path / "nowhere")
