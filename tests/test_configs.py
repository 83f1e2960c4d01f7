"""The dataset configs and their argument strings."""

import importlib
import math
import os
import re

import pytest

from camri import config_fields
from camri import config_lib
from camri import prepare


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name, dataset, model, image_size, important", [
    ("digits", "digits", "small_cnn", 0, 8),
    ("cifar10", "cifar10", "reference_cnn", 0, 3),  # cat
    ("gtsrb", "gtsrb", "reference_cnn", 32, 14),  # stop
    ("awa2", "awa2", "resnet18", 224, 0),  # antelope
])
def test_defaults_validate(name, dataset, model, image_size, important):
  config, class_names = prepare.validated_config(_config(name))
  assert (config.dataset, config.model, config.image_size) == (dataset, model, image_size)
  assert config.loss.name == "camri" and config.loss.important_classes == (important,)
  assert config.loss.margin == pytest.approx((4 * math.pi / 64,))
  assert config.loss.scale == 16 and config.batch_size == 64
  assert config.learning_rate == 1e-3 and config.augment == ()
  assert len(class_names) == {"digits": 10, "cifar10": 10, "gtsrb": 43, "awa2": 50}[name]


@pytest.mark.parametrize("name, arg, important", [
    ("gtsrb", "important=yield", 13),
    ("gtsrb", "important=Speed limit (20km/h)", 0),
    ("gtsrb", "important=41", 41),
    ("awa2", "important=grizzly+bear", 1),
    ("cifar10", "important=dog", 5),
])
def test_important_class_by_name_or_index(name, arg, important):
  config, _ = prepare.validated_config(_config(name, arg))
  assert config.loss.important_classes == (important,)


def test_arguments_set_loss_margin_scale_model_and_size():
  config = _config("awa2", "loss=arcface,margin=5,scale=8,model=resnet50,size=96")
  assert (config.loss.name, config.model, config.image_size) == ("arcface", "resnet50", 96)
  assert config.loss.margin == (5 * math.pi / 64,) and config.loss.scale == 8.0
  assert _config("gtsrb", "loss=cross_entropy,important=").loss.important_classes == ()


@pytest.mark.parametrize("name, arg, match", [
    ("gtsrb", "size=64", r"config argument 'size=64' is invalid: use key=value with key in "
                         r"\['important', 'loss', 'margin', 'scale'\]"),
    ("gtsrb", "margin=four", r"config argument margin='four' is invalid: must be a number"),
    ("awa2", "size=big", r"config argument size='big' is invalid: must be an integer"),
])
def test_bad_arguments_are_one_line_errors(name, arg, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    _config(name, arg)


def test_unknown_class_name_lists_the_dataset_classes():
  with pytest.raises(config_lib.ConfigError, match=r"config.loss.important_classes='cat' "
                     r"is invalid: not a class of this dataset: use an index 0..42 or a "
                     r"name \(speed limit \(20km/h\), "):
    prepare.validated_config(_config("gtsrb", "important=cat"))


def test_folder_pretrained_defaults_are_fine_tuning_ones(tmp_path):
  weights = tmp_path / "resnet18.safetensors"
  config = _config("folder", f"path=tree,pretrained={weights}")
  assert config.init_checkpoint == str(weights)
  assert (config.model, config.image_size) == ("resnet50", 224)
  assert (config.backbone_learning_rate, config.learning_rate) == (1e-4, 1e-3)
  assert not config.freeze_backbone and config.input_normalization is None
  config = _config("folder", f"path=tree,pretrained={weights},model=resnet18,size=32")
  assert (config.model, config.image_size) == ("resnet18", 32)
  config = _config("folder", "path=tree")
  assert (config.model, config.image_size, config.init_checkpoint) == ("small_cnn", 64, None)
  assert config.backbone_learning_rate is None
  with pytest.raises(config_lib.ConfigError, match=r"config argument pretrained='/w/a,b' is "
                     r"invalid: .*--config.init_checkpoint=/w/a,b"):
    _config("folder", "path=tree,pretrained=/w/a,b")


def _weights_config(tmp_path, **fields):
  config = _config("digits")
  config.model = "resnet18"
  config.init_checkpoint = str(tmp_path / "resnet18.safetensors")
  (tmp_path / "resnet18.safetensors").write_bytes(b"")  # validate checks only that it is a file.
  config.update(fields)
  return config


def test_a_safetensors_init_checkpoint_means_imagenet_normalization(tmp_path):
  config, _ = prepare.validated_config(_config("digits"))
  assert config.input_normalization == "none"
  config, _ = prepare.validated_config(_weights_config(tmp_path))
  assert config.input_normalization == "imagenet"
  config, _ = prepare.validated_config(_weights_config(tmp_path, freeze_backbone=True,
                                                       backbone_learning_rate=1e-4))
  assert config.freeze_backbone and config.backbone_learning_rate is None  # Nothing to rate.


@pytest.mark.parametrize("fields, match", [
    ({"input_normalization": "none"},
     r"config.input_normalization='none' is invalid: torchvision's and timm's weights "
     r"\(config.init_checkpoint\) expect ImageNet's"),
    ({"input_normalization": "cifar"},
     r"config.input_normalization='cifar' is invalid: choose one of \['none', 'imagenet'\]"),
    ({"resnet_padding": "same"},
     r"config.resnet_padding='same' is invalid: .* need 'torchvision'"),
    ({"resnet_padding": "valid"},
     r"config.resnet_padding='valid' is invalid: choose one of \['torchvision', 'same'\]"),
    ({"backbone_learning_rate": 0.0},
     r"config.backbone_learning_rate=0.0 is invalid: must be > 0, or None"),
    ({"init_checkpoint": "/nowhere/resnet18.safetensors"},
     r"config.init_checkpoint='/nowhere/resnet18.safetensors' is invalid: no such file"),
])
def test_bad_pretrained_fields_are_one_line_errors(tmp_path, fields, match):
  with pytest.raises(config_lib.ConfigError, match=match) as error:
    prepare.validated_config(_weights_config(tmp_path, **fields))
  assert "\n" not in str(error.value)


def test_freezing_needs_weights_to_freeze():
  config = _config("digits")
  config.freeze_backbone = True
  with pytest.raises(config_lib.ConfigError, match=r"config.freeze_backbone=True is invalid: "
                     r"a frozen backbone keeps the weights it starts from"):
    prepare.validated_config(config)


def test_readme_names_every_field_a_resumed_run_may_change():
  """README's "Another run's workdir" lists `config_fields.RESUMABLE_CHANGES` (the population
  in words)."""
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")) as f:
    text = f.read()
  text = " ".join(text.split())
  listed = text[text.index("(only `num_epochs` may grow"):].split(" may change", 1)[0]
  assert set(re.findall(r"`(\w+)`", listed)) | {"population"} == set(config_fields.RESUMABLE_CHANGES)
  assert "the population a run trains in" in listed
