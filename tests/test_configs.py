"""The dataset configs and their argument strings."""

import importlib
import math

import pytest

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
