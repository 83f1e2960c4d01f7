"""torchvision's ResNet weights in a .safetensors file: camri's ResNets compute what it computes.

The weights are random, under torchvision's names (`tests/torchvision_resnet.py`),
and the reference is a float64 NumPy forward of torchvision's trunk in eval mode.

Tolerance: camri's forward is float32, the reference float64. A sum of n
float32 products is within n * u * sum|terms| of the exact sum (u = 2**-24),
and the rounding errors of many terms add up like a random walk, about
sqrt(n) * u * sum|terms|. The longest sums are the 3x3 convolutions of the last
stage (4,608 products), about 4e-6 of their terms' size; ResNet-50's trunk
chains 53 convolutions, ResNet-18's 20, each followed by an eval-mode BatchNorm
that scales by gamma / sqrt(var + eps) (about 1 on average here) and a ReLU,
which does not amplify an error. The random weights keep every activation
O(1) (`tests/torchvision_resnet.py`: the outputs' root mean square is about 1,
their largest magnitude about 5), so the errors of 53 layers stay near
sqrt(53) * 4e-6 = 3e-5, and 2e-4 only if every one of them pushed the same way.
Measured: at most 6e-6. So camri matches the reference to 1e-4, absolute.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from camri import config_lib
from camri import models
from camri import prepare
from camri import run_log
from tests import torchvision_resnet

MODELS = ("resnet18", "resnet50")


def _write(path, state):
  safetensors.numpy.save_file(state, str(path))
  return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """name -> (the state dict, its .safetensors file) of random torchvision ResNet weights."""
  directory = tmp_path_factory.mktemp("weights")
  out = {}
  for i, name in enumerate(MODELS):
    state = torchvision_resnet.state_dict(name, np.random.default_rng(i))
    out[name] = state, _write(directory / f"{name}.safetensors", state)
  return out


def _zeros(tree):
  return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), tree)


def _loaded_backbone(name, path, image_shape=(32, 32, 3)):
  """Backbone `name` and its variables, the trunk's from `path` (the feature layer's zero)."""
  backbone = models.get_backbone(name, 8)
  abstract = jax.eval_shape(functools.partial(backbone.init, train=False), jax.random.key(0),
                            jnp.zeros((1, *image_shape)))
  classifier = {c: {"backbone": tree} for c, tree in _zeros(abstract).items()}
  loaded = models.load_backbone(classifier, path, name)
  return backbone, {c: tree["backbone"] for c, tree in loaded.items()}


@pytest.mark.parametrize("name", MODELS)
def test_trunk_computes_what_torchvisions_computes(weights, name):
  state, path = weights[name]
  backbone, variables = _loaded_backbone(name, path)
  # 40 x 24: the stride-2 convolutions and the max pool meet even and odd sizes
  # (40 -> 20 -> 10 -> 5 -> 3 -> 2 rows, 24 -> 12 -> 6 -> 3 -> 2 -> 1 columns).
  images = np.random.default_rng(5).normal(size=(2, 40, 24, 3)).astype(np.float32)
  _, feature_map = jax.jit(functools.partial(backbone.apply, train=False,
                                             return_feature_map=True))(variables, images)
  expected = torchvision_resnet.trunk(images, state, name)
  assert feature_map.shape == expected.shape == (2, 2, 1, 512 if name == "resnet18" else 2048)
  assert 1 < np.max(np.abs(expected)) < 10  # O(1): the tolerance's premise.
  np.testing.assert_allclose(feature_map, expected, rtol=0, atol=1e-4)


def test_kernels_are_hwio_and_batchnorm_fields_renamed(weights):
  state, path = weights["resnet18"]
  _, variables = _loaded_backbone("resnet18", path)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv_init"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  block = "ResNetBlock_3"  # layer2.1: blocks of stage 1 come after stage 0's two.
  np.testing.assert_array_equal(params[block]["Conv_1"]["kernel"],
                                state["layer2.1.conv2.weight"].transpose(2, 3, 1, 0))
  for ours, theirs in (("scale", "weight"), ("bias", "bias")):
    np.testing.assert_array_equal(params[block]["BatchNorm_1"][ours],
                                  state[f"layer2.1.bn2.{theirs}"])
  for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
    np.testing.assert_array_equal(stats["ResNetBlock_2"]["norm_proj"][ours],
                                  state[f"layer2.0.downsample.1.{theirs}"])
  np.testing.assert_array_equal(params["feature_dense"]["kernel"], 0)  # Not from the file.


@pytest.mark.parametrize("name, stem", [
    ("resnet34", 7), ("resnet34_small_inputs", 3), ("resnet18_small_inputs", 3)])
def test_every_resnet_takes_its_torchvision_state_dict(tmp_path, name, stem):
  """resnet34's layout; the _small_inputs models take a state dict whose conv1 is 3x3."""
  torchvision_name = name.removesuffix("_small_inputs")
  state = torchvision_resnet.state_dict(torchvision_name, np.random.default_rng(0), stem=stem)
  _, variables = _loaded_backbone(name, _write(tmp_path / f"{name}.safetensors", state))
  stage_sizes, _ = torchvision_resnet.ARCHITECTURES[torchvision_name]
  last = variables["params"][f"ResNetBlock_{sum(stage_sizes) - 1}"]["Conv_1"]["kernel"]
  np.testing.assert_array_equal(
      last, state[f"layer4.{stage_sizes[-1] - 1}.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["conv_init"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))


@pytest.fixture
def resnet_config(digits_config):
  """configs/digits.py with an ImageNet-stem ResNet (8x8 greyscale images)."""
  digits_config.model = "resnet18"
  return digits_config


def _refused(config, workdir, match):
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    prepare.prepare_run(config, str(workdir))
  assert "\n" not in str(error.value)
  assert not workdir.exists()
  return str(error.value)


def test_weights_of_another_resnet_are_refused_naming_the_model_they_fit(
    weights, resnet_config, tmp_path):
  _, resnet18 = weights["resnet18"]
  resnet_config.model, resnet_config.init_checkpoint = "resnet50", resnet18
  _refused(resnet_config, tmp_path / "run",
           r"^config.init_checkpoint='.*resnet18.safetensors' is invalid: the file has no "
           r"layer1.0.bn3.bias, which config.model='resnet50' needs; "
           r"config.model='resnet18' fits it$")
  resnet_config.model = "resnet18_small_inputs"
  _refused(resnet_config, tmp_path / "run",
           r"is invalid: the file's conv1.weight has shape \(64, 3, 7, 7\), "
           r"config.model='resnet18_small_inputs' needs \(64, 3, 3, 3\); "
           r"config.model='resnet18' fits it$")
  resnet_config.model = "small_cnn"
  _refused(resnet_config, tmp_path / "run",
           r"is invalid: it holds torchvision ResNet weights, which config.model='small_cnn' "
           r"cannot take; config.model='resnet18' fits it$")


@pytest.mark.parametrize("change, match", [
    (lambda s: s.pop("layer2.1.bn2.running_var"),
     r"the file has no layer2.1.bn2.running_var, which config.model='resnet18' needs"),
    (lambda s: s.update({"layer3.0.conv1.weight": np.zeros((256, 128, 5, 5), np.float32)}),
     r"the file's layer3.0.conv1.weight has shape \(256, 128, 5, 5\), "
     r"config.model='resnet18' needs \(256, 128, 3, 3\)"),
    (lambda s: s.update({"layer4.2.conv1.weight": np.zeros((512, 512, 3, 3), np.float32)}),
     r"the file's layer4.2.conv1.weight has no place in config.model='resnet18'"),
])
def test_a_missing_key_or_shape_is_one_line_naming_it(weights, resnet_config, tmp_path, change,
                                                      match):
  state = dict(weights["resnet18"][0])
  change(state)
  resnet_config.init_checkpoint = _write(tmp_path / "changed.safetensors", state)
  _refused(resnet_config, tmp_path / "run",
           f"is invalid: {match}; it fits none of \\['resnet18', ")


def test_a_file_that_is_no_safetensors_file_is_one_line(resnet_config, tmp_path):
  resnet_config.init_checkpoint = str(tmp_path / "weights.safetensors")
  _refused(resnet_config, tmp_path / "run", r"is invalid: no such file: give a .safetensors")
  (tmp_path / "weights.safetensors").write_bytes(b"not a header")
  _refused(resnet_config, tmp_path / "run", r"is invalid: it does not read as a safetensors file")


def test_config_json_records_the_file_and_a_resume_refuses_another(
    weights, resnet_config, tmp_path):
  state, path = weights["resnet18"]
  resnet_config.init_checkpoint = _write(tmp_path / "weights.safetensors", state)
  workdir = tmp_path / "run"
  prepare.prepare_run(resnet_config.copy_and_resolve_references(), str(workdir))
  record = run_log.read_config(workdir)
  with open(path, "rb") as f:
    assert record["init_checkpoint_sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert record["input_normalization"] == "imagenet"
  prepare.prepare_run(resnet_config.copy_and_resolve_references(), str(workdir))  # The same file.
  state = dict(state, **{"bn1.bias": state["bn1.bias"] + 1})
  _write(tmp_path / "weights.safetensors", state)
  written = (workdir / run_log.CONFIG_FILE).read_text()
  with pytest.raises(config_lib.ConfigError, match=(
      r"^config.init_checkpoint='.*weights.safetensors' is invalid: the file changed since the "
      r"run in --workdir .* started from it \(SHA-256 [0-9a-f]{16}\.\.\. then, [0-9a-f]{16}\.\.\. "
      r"now\): restore that file, or use another --workdir")) as error:
    prepare.prepare_run(resnet_config, str(workdir))
  assert "\n" not in str(error.value)
  assert (workdir / run_log.CONFIG_FILE).read_text() == written
