"""The base config and its validation.

Configs in configs/ start from `base_config()` and change what their dataset
needs. `validate` checks every field against what is allowed and resolves the
important classes to indices, before any compute starts or any file is
written; each problem is a `ConfigError` with a one-line message that names the
field, the value and what is allowed.
"""

from collections.abc import Sequence
import math
import numbers
import os

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
  """A config field outside what is allowed."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)  # None: tfds's default.
  c.image_size = 0  # 0: the dataset's own size, no resizing.
  c.augment = ()  # A subset of the dataset's allowed augmentations.
  c.model = "small_cnn"
  c.feature_dim = 64
  # Orbax checkpoint of the backbone's params (or {"params", "batch_stats"})
  # to start from, e.g. ImageNet weights; None: random initialisation.
  c.init_checkpoint = config_dict.placeholder(str)
  c.num_epochs = 10
  c.batch_size = 64
  c.eval_batch_size = 256
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.seed = 0
  c.tag = ""  # Free-form label for grids (e.g. a protocol role); not used in training.
  c.keep_checkpoints = 2
  c.progress_bar = True

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "camri"
  c.loss.important_classes = ()  # Class indices or names.
  c.loss.margin = (4 * math.pi / 64,)  # Radians: one, or one per important class.
  c.loss.scale = 16.0
  return c


OPTIMIZERS = ("adam", "sgd")
# Fields that may change between the runs of one workdir: they don't change
# what an epoch computes.
RESUMABLE_CHANGES = ("num_epochs", "progress_bar", "keep_checkpoints", "data_dir")


def _fail(field, value, allowed):
  raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def _positive_int(config, field):
  value = config[field]
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    _fail(field, value, "must be an integer >= 1")
  return value


def resolve_classes(field: str, classes: Sequence[int | str],
                    class_names: Sequence[str]) -> tuple[int, ...]:
  """Class indices from indices or names (case-insensitive)."""
  lower = [n.lower() for n in class_names]
  out = []
  for c in classes:
    if isinstance(c, numbers.Integral) and not isinstance(c, bool):
      if not 0 <= c < len(class_names):
        _fail(field, c, f"class indices are 0..{len(class_names) - 1}")
      out.append(int(c))
    elif isinstance(c, str) and c.strip().lower() in lower:
      out.append(lower.index(c.strip().lower()))
    elif isinstance(c, str) and c.strip().isdigit():
      out.extend(resolve_classes(field, [int(c)], class_names))
    else:
      shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
      _fail(field, c, f"not a class of this dataset: use an index 0..{len(class_names) - 1} or a name ({shown})")
  if len(set(out)) != len(out):
    _fail(field, tuple(classes), "important classes must be distinct")
  return tuple(out)


def validate(config, *, datasets: Sequence[str], models: Sequence[str],
             losses: dict[str, Sequence[str]], augmentations: Sequence[str],
             class_names: Sequence[str] | None, device_count: int):
  """Checks `config` and returns a copy with important classes as indices.

  Args:
    config: the run's ConfigDict.
    datasets, models: the known names.
    losses: known loss name -> the `config.loss` fields it uses.
    augmentations: the augmentations this dataset allows.
    class_names: the dataset's class names (None: the dataset is unknown).
    device_count: devices the global batch is split over.
  """
  if config.dataset not in datasets:
    _fail("dataset", config.dataset, f"choose one of {sorted(datasets)}")
  if config.model not in models:
    _fail("model", config.model, f"choose one of {sorted(models)}")
  if config.loss.name not in losses:
    _fail("loss.name", config.loss.name, f"choose one of {sorted(losses)}")
  if config.optimizer not in OPTIMIZERS:
    _fail("optimizer", config.optimizer, f"choose one of {list(OPTIMIZERS)}")
  for field in ("num_epochs", "batch_size", "eval_batch_size", "feature_dim",
                "keep_checkpoints"):
    _positive_int(config, field)
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % device_count:
      _fail(field, config[field], f"must be divisible by the device count ({device_count})")
  if not isinstance(config.image_size, numbers.Integral) or config.image_size < 0:
    _fail("image_size", config.image_size, "must be an integer >= 0 (0: keep the dataset's size)")
  checkpoint = config.get("init_checkpoint")
  if checkpoint is not None and not os.path.isdir(os.path.expanduser(checkpoint)):
    _fail("init_checkpoint", checkpoint,
          "no such directory: give an orbax checkpoint directory of the backbone's params")
  if not (isinstance(config.learning_rate, numbers.Real) and config.learning_rate > 0):
    _fail("learning_rate", config.learning_rate, "must be > 0")
  if not isinstance(config.seed, numbers.Integral) or config.seed < 0:
    _fail("seed", config.seed, "must be an integer >= 0")
  unknown = [a for a in config.augment if a not in augmentations]
  if unknown:
    _fail("augment", tuple(config.augment),
          f"this dataset allows {list(augmentations) or 'no augmentation'}")

  used = losses[config.loss.name]
  resolved = config.copy_and_resolve_references()
  important = resolve_classes("loss.important_classes",
                              config.loss.important_classes, class_names)
  if "important_classes" in used and not important:
    _fail("loss.important_classes", tuple(config.loss.important_classes),
          f"loss {config.loss.name!r} needs at least one important class")
  if "margin" in used:
    margins = tuple(config.loss.margin)
    if not margins or any(not isinstance(m, numbers.Real) or not 0 <= m < math.pi
                           for m in margins):
      _fail("loss.margin", margins, "margins are radians in [0, pi)")
    if "important_classes" in used and len(margins) not in (1, len(important)):
      _fail("loss.margin", margins,
            f"give one margin or one per important class ({len(important)})")
  if "scale" in used and not (isinstance(config.loss.scale, numbers.Real)
                              and config.loss.scale > 0):
    _fail("loss.scale", config.loss.scale, "must be > 0")
  with resolved.unlocked():
    resolved.loss.important_classes = important
  return resolved


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style argument string 'a=1,b=x' over `defaults` (values stay strings).

  Unknown keys are an error that lists the known ones.
  """
  args = ml_collections.ConfigDict({k: str(v) for k, v in defaults.items()})
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r} is invalid: use key=value with key in "
                        f"{sorted(defaults)}")
    args[key] = value
  return args


def number_arg(key: str, value: str, kind=float):
  """`kind(value)` of an argument-string value, or a one-line ConfigError."""
  try:
    return kind(value)
  except ValueError:
    raise ConfigError(f"config argument {key}={value!r} is invalid: must be "
                      f"{'an integer' if kind is int else 'a number'}") from None


def dataset_config(arg: str | None, *, dataset: str, important: str,
                   margin: float = 4, scale: float = 16, loss: str = "camri",
                   **defaults) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """`base_config()` for `dataset` with the loss set from an argument string.

  Every dataset config takes the keys
    loss=<name>   important=<class name or index; empty: none>
    margin=<k, meaning k*pi/64>   scale=<s>
  (the authors write margins as k*pi/64) and the dataset's own `defaults`.
  Several important classes: --config.loss.important_classes='(3,5)'.

  Returns:
    (config, args): the config with dataset and loss set from the arguments
    (margin in radians), and all parsed arguments, as strings.
  """
  args = parse_arg(arg, loss=loss, important=important, margin=margin, scale=scale,
                   **defaults)
  config = base_config()
  config.dataset = dataset
  config.loss.name = args.loss
  config.loss.important_classes = (args.important,) if args.important else ()
  config.loss.margin = (number_arg("margin", args.margin) * math.pi / 64,)
  config.loss.scale = number_arg("scale", args.scale)
  return config, args
