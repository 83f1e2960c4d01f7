"""Everything checked before a run computes or writes anything.

`prepare_run` validates the config against the known datasets, models and
losses, resolves important classes by name, refuses a workdir that holds a
different run, prepares the dataset, and only then writes config.json.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp

from camri import config_lib
from camri import data as data_lib
from camri import models
from camri import objectives
from camri import run_log
from camri.config_lib import ConfigError
from camri.data import MissingArchiveError

__all__ = ["ConfigError", "MissingArchiveError", "prepare_run", "validated_config"]


def setup_runtime():
  """Quiet library logs (unless --verbosity is given); keep accelerators for JAX."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top,g-multiple-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  tf.config.set_visible_devices([], "GPU")  # tf.data runs on the CPU.


def validated_config(config):
  """The validated config with important classes as indices, and the class names."""
  spec = data_lib.DATASETS.get(config.dataset)
  class_names = None
  if spec is not None:
    builder = data_lib.get_builder(spec, config.data_dir, prepare=False)
    class_names = data_lib.class_names(spec, builder)
  resolved = config_lib.validate(
      config, datasets=list(data_lib.DATASETS), models=list(models.BACKBONES),
      losses={k: v[1] for k, v in objectives.OBJECTIVES.items()},
      augmentations=spec.augmentations if spec else (), class_names=class_names,
      device_count=jax.device_count())
  return resolved, class_names


def _check_init_checkpoint(config, num_classes):
  """Raises ConfigError unless config.init_checkpoint fits the model's backbone.

  Only shapes are built (jax.eval_shape): no parameters are initialised.
  """
  from camri import train  # pylint: disable=g-import-not-at-top
  model, _ = train.make_model(config, num_classes)
  builder = data_lib.get_builder(data_lib.get_spec(config.dataset), config.data_dir,
                                 prepare=False)
  images = jnp.zeros((1, *train.image_shape(builder, config.image_size)))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), images)
  models.load_backbone(variables, config.init_checkpoint)


def _run_record(config, class_names) -> dict:
  record = json.loads(config.to_json_best_effort())
  record["class_names"] = list(class_names)
  record["num_classes"] = len(class_names)
  return record


def _differences(old: dict, new: dict, prefix="") -> list[str]:
  diffs = []
  for key in sorted(set(old) | set(new)):
    name = f"{prefix}{key}"
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += _differences(a, b, prefix=f"{name}.")
    elif a != b and name not in config_lib.RESUMABLE_CHANGES:
      diffs.append(f"{name}: {a!r} -> {b!r}")
  return diffs


def prepare_run(config, workdir: str):
  """Validates `config` for `workdir`, prepares the data, writes config.json.

  Raises:
    ConfigError: with a one-line message, before anything is written.
    MissingArchiveError: the dataset's archives are not in its manual
      directory (a one-line message naming each file, its download URL and
      the directory), before anything is written.
  """
  resolved, class_names = validated_config(config)
  if resolved.init_checkpoint:
    _check_init_checkpoint(resolved, len(class_names))
  record = _run_record(resolved, class_names)
  previous = run_log.read_config(workdir)
  if previous is not None:
    diffs = _differences(previous, record)
    if diffs:
      raise ConfigError(
          f"--workdir {workdir} holds a run with a different config ({'; '.join(diffs[:3])}"
          f"{'; ...' if len(diffs) > 3 else ''}): use another --workdir, or delete "
          f"{workdir} to start that run afresh")
  data_lib.get_builder(data_lib.get_spec(resolved.dataset), resolved.data_dir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    run_log.write_config(workdir, record)
  return resolved
