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
import unicodedata

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
  # Fraction of the training split held out, stratified by class, as the
  # validation split (chosen by a fixed seed, the same for every config.seed);
  # 0: none, train on the whole training split as the paper does.
  c.validation_fraction = 0.1
  c.model = "small_cnn"
  c.feature_dim = 64
  # The weights to start the backbone from, e.g. ImageNet's; None: random
  # initialisation. A `.safetensors` file of a torchvision or timm ResNet's
  # state dict (its trunk), or an orbax checkpoint directory of the backbone's
  # params (or {"params", "batch_stats"}); `models.load_backbone`.
  c.init_checkpoint = config_dict.placeholder(str)
  # What the model does to images in [0, 1] first (`models.NORMALIZATIONS`):
  # "imagenet" (greyscale repeated to RGB, then ImageNet's mean and std, as
  # torchvision's and timm's weights expect) or "none". None: "imagenet" for a
  # .safetensors init_checkpoint, "none" otherwise.
  c.input_normalization = config_dict.placeholder(str)
  # A linear probe: the backbone's trunk keeps its init_checkpoint weights and
  # runs in inference mode (BatchNorm keeps its running statistics); only the
  # feature layer and the head train.
  c.freeze_backbone = False
  # A finished camri run's --workdir: its trunk (parameters and BatchNorm
  # statistics, `models.param_groups`) is this run's, frozen (freeze_backbone is
  # set), and new layers train on it with this run's loss (camri/trunk.py).
  # config.json records the source's path, step and trunk SHA-256.
  c.trunk_from = config_dict.placeholder(str)
  # The learning rate of the backbone's trunk (`models.param_groups`); None:
  # config.learning_rate, as for the feature layer and the head. Unused (None)
  # with freeze_backbone.
  c.backbone_learning_rate = config_dict.placeholder(float)
  # ResNets' padding: "torchvision" (kernel_size // 2 on each side, as the
  # weights of init_checkpoint files expect) or "same" (XLA's SAME: runs from
  # before this field).
  c.resnet_padding = "torchvision"
  c.num_epochs = 10
  c.batch_size = 64
  c.eval_batch_size = 256
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.adam_eps = 1e-8  # Adam's epsilon: optax's default; Keras's is 1e-7.
  c.seed = 0
  c.tag = ""  # Free-form label for grids (e.g. a protocol role); not used in training.
  c.keep_checkpoints = 2
  c.progress_bar = True
  # The convolutions' forward pass, input and weight gradients (camri/models/conv.py):
  # "auto" (per layer, tap matmuls where they are faster on this backend), "xla", "taps".
  c.conv_weight_grad = "auto"
  # Where batches come from (camri/feeds.py): "true", the splits held in device
  # memory; "false", tf.data on the host; "auto", the devices when the data fits
  # in a quarter of their memory, decided again when a run resumes.
  c.data_on_device = "auto"
  # Train steps per jitted call with the data on the devices; 0: 1 on CPU, 50
  # elsewhere (camri.feeds.steps_per_call). A stop signal waits for the call.
  c.steps_per_call = 0
  # How a population's members (runs trained in one program, camri/members.py)
  # run: "vmap", "unroll" (a loop unrolled in the program), or "auto" (unroll
  # on CPU, vmap elsewhere). A single run has no member axis.
  c.member_axis = "auto"

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "camri"
  c.loss.important_classes = ()  # Class indices or names.
  # Hyperparameters (docs/losses.md). None: the loss's own default from
  # LOSS_DEFAULTS, filled in by `validate` for the fields the loss reads, so
  # `loss.name=arcface` gets ArcFace's margin and scale while a value set in a
  # config file or on the command line wins.
  c.loss.margin = config_dict.placeholder(tuple)  # One, or one per important class.
  c.loss.scale = config_dict.placeholder(float)
  c.loss.important_weight = config_dict.placeholder(float)
  c.loss.fn_weight = config_dict.placeholder(float)
  c.loss.fp_weight = config_dict.placeholder(float)
  c.loss.radius = config_dict.placeholder(float)
  c.loss.hinge = config_dict.placeholder(bool)
  c.loss.hinge_margin = config_dict.placeholder(float)
  c.loss.cc_weight = config_dict.placeholder(float)
  c.loss.reduction = config_dict.placeholder(int)
  c.loss.alpha = config_dict.placeholder(float)
  c.loss.beta = config_dict.placeholder(float)
  c.loss.likelihood_weight = config_dict.placeholder(float)
  c.loss.num_heads = config_dict.placeholder(int)
  c.loss.hsic_weight = config_dict.placeholder(float)
  return c


# Each loss's defaults for the `config.loss` fields it reads (docs/losses.md).
# Margin-family defaults are their papers' (CAMRI's: the authors' CIFAR-10 cat
# setting); see docs/losses.md for where a default is this project's choice.
LOSS_DEFAULTS: dict[str, dict[str, object]] = {
    "cross_entropy": {},
    "wce": {"important_weight": 2.0},
    "rwwce": {"fn_weight": 2.0, "fp_weight": 1.0},
    "camri": {"margin": (4 * math.pi / 64,), "scale": 16.0},
    "arcface": {"margin": (0.5,), "scale": 64.0},
    "cosface": {"margin": (0.35,), "scale": 64.0},
    "class_sensitive_cosface": {"margin": (0.35,), "scale": 16.0},
    "normface": {"scale": 16.0},
    # hinge_margin None: the centres' distance / 10 (`default_hinge_margin`).
    "nirvana": {"radius": 200.0, "hinge": False, "hinge_margin": None},
    "cc_loss": {"cc_weight": 1.0, "reduction": 16},
    "competing_ratio": {"alpha": 1.0, "beta": 1.0},
    "lgm": {"alpha": 0.1, "likelihood_weight": 0.01},
    "em_softmax": {"num_heads": 2, "margin": (0.5,), "hsic_weight": 0.1},
}
# Losses whose margin is an angle added to theta: radians in [0, pi).
ANGULAR_MARGIN_LOSSES = ("camri", "arcface")


OPTIMIZERS = ("adam", "sgd")
CONV_WEIGHT_GRADS = ("auto", "xla", "taps")
DATA_ON_DEVICE = ("auto", "true", "false")
INPUT_NORMALIZATIONS = ("none", "imagenet")
RESNET_PADDINGS = ("torchvision", "same")
MEMBER_AXES = ("auto", "vmap", "unroll")


def _fail(field, value, allowed):
  raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def _positive_int(config, field):
  value = config[field]
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    _fail(field, value, "must be an integer >= 1")
  return value


def find_class(name: str, class_names: Sequence[str]) -> int:
  """The index of the class `name` names: the exact name, else the one equal ignoring case, else an index.

  Names are compared in Unicode NFC (macOS writes folder names in NFD) and
  without surrounding spaces, so a name is read the same way for
  `important=` and `camri.predict --bias`.

  Raises:
    ValueError: why `name` names no class (or several: `Red` and `red` for
      `RED`), for a message "<field>=<value> is invalid: <why>".
  """
  def normal(text):
    return unicodedata.normalize("NFC", text.strip())
  wanted = normal(name)
  matches = ([k for k, n in enumerate(class_names) if normal(n) == wanted] or
             [k for k, n in enumerate(class_names) if normal(n).casefold() == wanted.casefold()])
  if len(matches) == 1:
    return matches[0]
  if matches:
    raise ValueError(f"it names {len(matches)} classes that differ only in case "
                     f"({', '.join(class_names[k] for k in matches)}): give the exact name or "
                     "an index")
  if wanted.isdecimal() and int(wanted) < len(class_names):
    return int(wanted)
  shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
  raise ValueError(f"not a class of this dataset: use an index 0..{len(class_names) - 1} or a "
                   f"name ({shown})")


def resolve_classes(field: str, classes: Sequence[int | str],
                    class_names: Sequence[str]) -> tuple[int, ...]:
  """Class indices from indices or names (read by `find_class`)."""
  out = []
  for c in classes:
    if isinstance(c, str):
      try:
        out.append(find_class(c, class_names))
        continue
      except ValueError as e:
        if not c.strip().isdecimal():
          _fail(field, c, str(e))
        c = int(c)  # An index out of range.
    if not isinstance(c, numbers.Integral) or isinstance(c, bool):
      _fail(field, c, "give a class name or index")
    if not 0 <= c < len(class_names):
      _fail(field, c, f"class indices are 0..{len(class_names) - 1}")
    out.append(int(c))
  if len(set(out)) != len(out):
    _fail(field, tuple(classes), "important classes must be distinct")
  return tuple(out)


def validate(config, *, datasets: Sequence[str], models: Sequence[str],
             losses: dict[str, Sequence[str]], augmentations: Sequence[str],
             class_names: Sequence[str] | None, device_count: int):
  """Checks `config` and returns the copy a run uses.

  In the copy the important classes are indices, and each `config.loss` field
  the loss reads that is None holds the loss's default from `LOSS_DEFAULTS`.

  Args:
    config: the run's ConfigDict.
    datasets, models: the known names.
    losses: known loss name -> the `config.loss` fields it reads (checked with
      `LOSS_FIELD_CHECKS`).
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
  if config.conv_weight_grad not in CONV_WEIGHT_GRADS:
    _fail("conv_weight_grad", config.conv_weight_grad,
          f"choose one of {list(CONV_WEIGHT_GRADS)}")
  if config.data_on_device not in DATA_ON_DEVICE:
    _fail("data_on_device", config.data_on_device, f"choose one of {list(DATA_ON_DEVICE)}")
  if config.resnet_padding not in RESNET_PADDINGS:
    _fail("resnet_padding", config.resnet_padding, f"choose one of {list(RESNET_PADDINGS)}")
  for field in ("num_epochs", "batch_size", "eval_batch_size", "feature_dim",
                "keep_checkpoints"):
    _positive_int(config, field)
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % device_count:
      _fail(field, config[field], f"must be divisible by the device count ({device_count})")
  if config.member_axis not in MEMBER_AXES:
    _fail("member_axis", config.member_axis, f"choose one of {list(MEMBER_AXES)}")
  if not isinstance(config.steps_per_call, numbers.Integral) or config.steps_per_call < 0:
    _fail("steps_per_call", config.steps_per_call, "must be an integer >= 0 (0: auto)")
  if not isinstance(config.image_size, numbers.Integral) or config.image_size < 0:
    _fail("image_size", config.image_size, "must be an integer >= 0 (0: keep the dataset's size)")
  _check_init_checkpoint(config)
  if not (isinstance(config.learning_rate, numbers.Real) and config.learning_rate > 0):
    _fail("learning_rate", config.learning_rate, "must be > 0")
  if not (_real(config.adam_eps) and config.adam_eps > 0):
    _fail("adam_eps", config.adam_eps, "must be > 0")
  fraction = config.validation_fraction
  if not (_real(fraction) and 0 <= fraction < 1):
    _fail("validation_fraction", fraction, "must be in [0, 1) (0: no validation split)")
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
  with resolved.unlocked():
    resolved.loss.important_classes = important
    if resolved.input_normalization is None:
      from_file = is_state_dict(config.get("init_checkpoint"))
      resolved.input_normalization = "imagenet" if from_file else "none"
    if resolved.trunk_from is not None:
      resolved.trunk_from = os.path.abspath(os.path.expanduser(resolved.trunk_from))
      resolved.freeze_backbone = True
    if resolved.freeze_backbone:
      resolved.backbone_learning_rate = None
    for field, default in LOSS_DEFAULTS.get(config.loss.name, {}).items():
      if field in used and resolved.loss.get(field) is None:
        resolved.loss[field] = default
  _check_loss_fields(resolved, used, len(class_names))
  return resolved


def is_state_dict(path: str | None) -> bool:
  """Whether config.init_checkpoint `path` is a state dict file (`.safetensors`), not orbax's."""
  return path is not None and str(path).endswith(".safetensors")


def _check_init_checkpoint(config):
  """The checks of init_checkpoint and of the fields that go with it.

  Whether the weights fit the model is checked once the model is known
  (`models.load_backbone`, from `prepare.prepare_run`).
  """
  checkpoint = config.get("init_checkpoint")
  path = os.path.expanduser(checkpoint) if checkpoint is not None else None
  state_dict = is_state_dict(checkpoint)
  if state_dict and not os.path.isfile(path):
    _fail("init_checkpoint", checkpoint, "no such file: give a .safetensors file of a "
          "torchvision or timm ResNet's weights")
  if checkpoint is not None and not state_dict and not os.path.isdir(path):
    _fail("init_checkpoint", checkpoint,
          "no such directory: give an orbax checkpoint directory of the backbone's params, "
          "or a .safetensors file of a torchvision or timm ResNet's weights")
  normalization = config.get("input_normalization")
  if normalization is not None and normalization not in INPUT_NORMALIZATIONS:
    _fail("input_normalization", normalization,
          f"choose one of {list(INPUT_NORMALIZATIONS)}, or None for what init_checkpoint needs")
  if state_dict and normalization == "none":
    _fail("input_normalization", normalization, "torchvision's and timm's weights "
          "(config.init_checkpoint) expect ImageNet's: leave it None or give 'imagenet'")
  if state_dict and config.resnet_padding != "torchvision":
    _fail("resnet_padding", config.resnet_padding, "torchvision's and timm's weights "
          "(config.init_checkpoint) need 'torchvision'")
  trunk_from = config.get("trunk_from")
  if trunk_from is not None and not os.path.isdir(os.path.expanduser(trunk_from)):
    _fail("trunk_from", trunk_from, "no such directory: give the --workdir of a finished run")
  if config.freeze_backbone and checkpoint is None and trunk_from is None:
    _fail("freeze_backbone", True, "a frozen backbone keeps the weights it starts from: "
          "give them as config.init_checkpoint, or a run's trunk as config.trunk_from")
  rate = config.get("backbone_learning_rate")
  if rate is not None and not (_real(rate) and rate > 0):
    _fail("backbone_learning_rate", rate, "must be > 0, or None for config.learning_rate")


def _real(value):
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _integer(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_POSITIVE = (lambda v: _real(v) and v > 0, "must be > 0")
_NON_NEGATIVE = (lambda v: _real(v) and v >= 0, "must be >= 0")
# config.loss field -> (check, what is allowed), for the fields a loss reads.
LOSS_FIELD_CHECKS = {
    "scale": _POSITIVE,
    "important_weight": _POSITIVE,
    "fn_weight": _POSITIVE,
    "fp_weight": _NON_NEGATIVE,
    "radius": _POSITIVE,
    "hinge": (lambda v: isinstance(v, bool), "must be True or False"),
    "hinge_margin": (lambda v: v is None or (_real(v) and v >= 0),
                     "must be >= 0, or None for the centres' distance / 10"),
    "cc_weight": _NON_NEGATIVE,
    "reduction": (lambda v: _integer(v) and v >= 1, "must be an integer >= 1"),
    "alpha": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE,
    "likelihood_weight": _NON_NEGATIVE,
    "num_heads": (lambda v: _integer(v) and v >= 1, "must be an integer >= 1"),
    "hsic_weight": _NON_NEGATIVE,
}


def _check_loss_fields(config, used, num_classes):
  """The range checks of the `config.loss` fields that loss `config.loss.name` reads."""
  loss = config.loss
  important = loss.important_classes
  if "important_classes" in used and not important:
    _fail("loss.important_classes", tuple(important),
          f"loss {loss.name!r} needs at least one important class")
  if "margin" in used:
    margins = tuple(loss.margin) if isinstance(loss.margin, (tuple, list)) else loss.margin
    if loss.name in ANGULAR_MARGIN_LOSSES:
      ok, allowed = (lambda m: _real(m) and 0 <= m < math.pi), "margins are radians in [0, pi)"
    else:
      ok, allowed = (lambda m: _real(m) and m >= 0), "margins must be >= 0"
    if not isinstance(margins, tuple) or not margins or not all(ok(m) for m in margins):
      _fail("loss.margin", margins, allowed)
    if "important_classes" in used and len(margins) not in (1, len(important)):
      _fail("loss.margin", margins,
            f"give one margin or one per important class ({len(important)})")
    if "important_classes" not in used and len(margins) != 1:
      _fail("loss.margin", margins, f"loss {loss.name!r} takes one margin")
  for field in used:
    if field in LOSS_FIELD_CHECKS:
      ok, allowed = LOSS_FIELD_CHECKS[field]
      if not ok(loss[field]):
        _fail(f"loss.{field}", loss[field], allowed)
  if loss.name == "nirvana" and config.feature_dim < num_classes - 1:
    _fail("feature_dim", config.feature_dim,
          f"loss 'nirvana' puts {num_classes} centres on a simplex: needs feature_dim "
          f">= num_classes - 1 = {num_classes - 1}")

