"""The backbone registry and starting a run's backbone from a checkpoint."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from camri import config_fields
from camri import config_lib
from camri import inference
from camri import models
from camri import prepare
from camri import run_log
from camri import train


@pytest.mark.parametrize("name, small_inputs, last_stage", [
    ("resnet18", False, 512), ("resnet18_small_inputs", True, 512),
    ("resnet34", False, 512), ("resnet34_small_inputs", True, 512),
    ("resnet50", False, 2048), ("resnet50_small_inputs", True, 2048)])
def test_resnets_are_registered_with_their_stem(name, small_inputs, last_stage):
  backbone = models.get_backbone(name, 24)
  assert backbone.small_inputs is small_inputs and backbone.feature_dim == 24
  variables = jax.eval_shape(functools.partial(backbone.init, train=False),
                             jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  kernel = variables["params"]["conv_init"]["kernel"]
  assert kernel.shape == ((3, 3, 3, 64) if small_inputs else (7, 7, 3, 64))
  assert variables["params"]["feature_dense"]["kernel"].shape == (last_stage, 24)


def _save(path, tree):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree)
  checkpointer.wait_until_finished()
  return str(path)


@pytest.fixture(scope="module")
def classifier(tfds_dir):
  """configs/digits.py's config, model and its variables for seed 0."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.data_dir = tfds_dir
  config, _ = prepare.validated_config(config)
  model, _ = train.make_model(config, 10)
  state = train.create_train_state(config, model, (8, 8, 1))
  return config, model, {"params": state.params, "batch_stats": state.batch_stats}


def _shifted(tree, by):
  return jax.tree.map(lambda x: np.asarray(x) + by, tree)


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("with_batch_stats", [False, True])
def test_load_backbone_takes_the_backbone_from_the_checkpoint(
    classifier, tmp_path, with_batch_stats):
  _, _, variables = classifier
  saved = _shifted({c: tree["backbone"] for c, tree in variables.items()}, 0.5)
  tree = saved if with_batch_stats else saved["params"]
  loaded = models.load_backbone(variables, _save(tmp_path / "ckpt", tree), "small_cnn")
  _assert_equal(loaded["params"]["backbone"], saved["params"])
  _assert_equal(loaded["params"]["head"], variables["params"]["head"])
  _assert_equal(loaded["batch_stats"]["backbone"], saved["batch_stats"] if with_batch_stats
                else variables["batch_stats"]["backbone"])


def test_run_starts_from_config_init_checkpoint(classifier, digits_config, tmp_path):
  _, model, variables = classifier
  saved = _shifted(variables["params"]["backbone"], 0.25)
  digits_config.init_checkpoint = _save(tmp_path / "ckpt", saved)
  config = prepare.prepare_run(digits_config, str(tmp_path / "run"))  # It fits.
  state = train.create_train_state(config, model, (8, 8, 1))
  _assert_equal(state.params["backbone"], saved)
  _assert_equal(state.params["head"], variables["params"]["head"])


def test_a_frozen_trunk_from_params_without_batch_statistics_is_refused_in_one_line(
    classifier, digits_config, tmp_path):
  """Else its BatchNorm layers would keep mean 0 and variance 1 for the whole run."""
  _, _, variables = classifier
  digits_config.init_checkpoint = _save(tmp_path / "ckpt", variables["params"]["backbone"])
  digits_config.freeze_backbone = True
  with pytest.raises(config_lib.ConfigError, match=r"^config.init_checkpoint='.*ckpt' is "
                     r"invalid: the checkpoint at .* holds no batch_stats collection, and a "
                     r"frozen trunk"):
    prepare.prepare_run(digits_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_init_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(
    digits_config, tmp_path):
  digits_config.init_checkpoint = _save(
      tmp_path / "ckpt", {"Conv_0": {"kernel": np.zeros((5, 5, 1, 2), np.float32),
                                     "bias": np.zeros((2,), np.float32)}})
  with pytest.raises(config_lib.ConfigError, match=r"^config.init_checkpoint='.*ckpt' is "
                     r"invalid: Conv_0/\w+ has shape .* the model needs") as e:
    prepare.prepare_run(digits_config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_missing_init_checkpoint_is_refused_before_anything_runs(digits_config, tmp_path):
  digits_config.init_checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(config_lib.ConfigError, match=r"config.init_checkpoint='.*nowhere' "
                     "is invalid: no such directory"):
    prepare.prepare_run(digits_config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, trunk, new", [
    ("resnet18", {"conv_init", "bn_init", "ResNetBlock_0", "ResNetBlock_7"},
     {"feature_dense", "feature_norm"}),
    ("small_cnn", {"Conv_0", "BatchNorm_0"}, {"FeatureLayer_0"}),
])
def test_param_groups_are_the_trunk_and_the_new_layers(name, trunk, new):
  model = models.Classifier(models.get_backbone(name, 8), models.heads.LinearHead(3))
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  groups = models.param_groups(params)
  assert set(jax.tree.leaves(groups["head"])) == {"new"}
  backbone = {module: set(jax.tree.leaves(tree)) for module, tree in groups["backbone"].items()}
  assert {m for m, g in backbone.items() if g == {"trunk"}} >= trunk
  assert {m for m, g in backbone.items() if g == {"new"}} == new


def test_every_backbone_freezes_and_one_without_a_trunk_is_refused_in_one_line(monkeypatch):
  assert all(models.has_trunk(name) for name in models.BACKBONES)
  assert models.get_backbone("small_cnn", 8, frozen_trunk=True).frozen_trunk
  class DenseOnly(nn.Module):
    feature_dim: int
    conv_weight_grad: str = "auto"

  monkeypatch.setitem(models.BACKBONES, "dense_only", DenseOnly)
  with pytest.raises(config_lib.ConfigError, match=r"^config.freeze_backbone=True is invalid: "
                     r"config.model='dense_only' has no trunk to freeze; choose one of "
                     r"\['reference_cnn', 'small_cnn'"):
    models.get_backbone("dense_only", 8, frozen_trunk=True)


def test_a_resnet_run_from_before_torchvision_padding_reads_as_same_padding(
    digits_config, tmp_path):
  """Its readers and its resume build the model it trained: XLA's SAME padding."""
  digits_config.model = "resnet18_small_inputs"
  workdir = tmp_path / "old"
  prepare.prepare_run(digits_config.copy_and_resolve_references(), str(workdir))
  path = workdir / run_log.CONFIG_FILE
  record = json.loads(path.read_text())
  for field in ("resnet_padding", "input_normalization", "freeze_backbone",
                "backbone_learning_rate"):
    del record[field]  # config.json as written before the fields existed.
  path.write_text(json.dumps(record))
  old = run_log.read_config(workdir)
  assert (old["resnet_padding"], old["input_normalization"]) == ("same", "none")
  assert (old["freeze_backbone"], old["backbone_learning_rate"]) == (False, None)
  model, _ = train.make_model(inference._config(old), 10)  # pylint: disable=protected-access
  assert model.backbone.padding == "same" and model.input_normalization == "none"
  with pytest.raises(config_lib.ConfigError, match=r"resnet_padding: 'same' -> 'torchvision'"):
    prepare.prepare_run(digits_config.copy_and_resolve_references(), str(workdir))
  digits_config.resnet_padding = "same"
  prepare.prepare_run(digits_config, str(workdir))  # Resumable as what it was.
  small_cnn = config_fields.with_added_fields({"model": "small_cnn"})
  assert small_cnn["resnet_padding"] == "torchvision"  # Unchanged: no ResNet to pad.


def test_imagenet_normalization_repeats_greyscale_to_rgb_then_standardises():
  rgb = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
  mean, std = models.NORMALIZATIONS["imagenet"]
  np.testing.assert_allclose(models.normalize(rgb, "imagenet"),
                             (rgb - np.float64(mean)) / np.float64(std), rtol=0, atol=1e-6)
  grey = rgb[..., :1]
  np.testing.assert_array_equal(models.normalize(grey, "imagenet"),
                                models.normalize(np.repeat(grey, 3, axis=-1), "imagenet"))
  np.testing.assert_array_equal(models.normalize(rgb, "none"), rgb)
  assert tuple(models.NORMALIZATIONS) == config_lib.INPUT_NORMALIZATIONS


def test_the_classifier_normalises_inside_the_model(digits_config):
  """What every reader of a run gets: model.apply takes images in [0, 1]."""
  digits_config.input_normalization = "imagenet"
  config, _ = prepare.validated_config(digits_config)
  model, _ = train.make_model(config, 10)
  assert model.input_normalization == "imagenet"
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             jnp.zeros((1, 8, 8, 1)))
  # The greyscale digits reach the backbone as RGB.
  assert variables["params"]["backbone"]["Conv_0"]["kernel"].shape == (3, 3, 3, 32)
