"""Everything checked before a run computes or writes anything.

`prepare_run` validates the config against the known datasets, models and
losses, resolves important classes by name, refuses a workdir that holds a
different run, checks that config.init_checkpoint fits the backbone, prepares the
dataset, checks what needs the prepared data (a training split that holds a
batch, a fixed image size), and only then writes config.json. TensorFlow is
not loaded before the config and the workdir have passed (except to check an
init_checkpoint: the model code imports the input pipeline), so a bad command
fails in a second or two.
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
from camri.data.download import DownloadError
from camri.data.manual import MissingArchiveError

__all__ = ["ConfigError", "DownloadError", "MissingArchiveError", "prepare_run",
           "setup_runtime", "validated_config"]


def setup_runtime(reader=False):
  """Quiet library logs (unless --verbosity is given).

  A reader of finished runs (`reader=True`: predict, export, the checkpoint
  plots) hears no warnings either: orbax's notes on opening checkpoints
  read-only and tfds's on an unprepared data_dir are about writes it never makes;
  and TensorFlow, which only decodes its images, is kept off the accelerators.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from absl import flags, logging  # pylint: disable=g-import-not-at-top,g-multiple-import
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR if reader else logging.WARNING)
    # TensorFlow's own deprecation notices (tfds calls deprecated tf.data ops).
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
  if reader:
    keep_accelerators_for_jax()


def keep_accelerators_for_jax():
  """tf.data runs on the CPU; TensorFlow must not take GPU memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def validated_config(config):
  """The validated config with important classes as indices, and the class names."""
  spec = data_lib.DATASETS.get(config.dataset)
  names = None if spec is None else data_lib.config_class_names(config)
  resolved = config_lib.validate(
      config, datasets=list(data_lib.DATASETS), models=list(models.BACKBONES),
      losses={k: v[1] for k, v in objectives.OBJECTIVES.items()},
      augmentations=spec.augmentations if spec else (), class_names=names,
      device_count=jax.device_count())
  return resolved, names


def _check_init_checkpoint(config, num_classes):
  """Raises ConfigError unless config.init_checkpoint fits the model's backbone.

  Only shapes are built (jax.eval_shape): no parameters are initialised.
  """
  from camri import train  # pylint: disable=g-import-not-at-top
  model, _ = train.make_model(config, num_classes)
  _, builder = data_lib.builder_for(config, prepare=False)
  images = jnp.zeros((1, *data_lib.image_shape(builder, config.image_size)))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), images)
  models.load_backbone(variables, config.init_checkpoint)


# What config.json records besides the config: derived from it and the data.
DERIVED_FIELDS = ("class_names", "num_classes", "image_shape", "prepared_data")


def _run_record(config, class_names) -> dict:
  """config.json: the config, the class names, the model's input shape and the data's copy.

  Readers (predict, export) build the model from "class_names" and
  "image_shape" without opening the dataset. "prepared_data" names the builder
  config of datasets that have one (an image-folder tree's path and file
  fingerprint), so a run is not resumed, or read, on a tree that changed under it.
  """
  record = json.loads(config.to_json_best_effort())
  record["class_names"] = list(class_names)
  record["num_classes"] = len(class_names)
  builder = data_lib.builder_for(config, prepare=False)[1]
  record["image_shape"] = list(data_lib.image_shape(builder, config.image_size))
  if builder.builder_config is not None:
    record["prepared_data"] = builder.builder_config.name
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


def check_workdir(workdir: str, record: dict):
  """Refuses a workdir whose run cannot be continued with the config `record`."""
  fresh = f"use another --workdir, or delete {workdir} to start afresh"
  previous = run_log.read_config(workdir)
  if previous is None:
    leftovers = [n for n in (run_log.METRICS_FILE, run_log.CHECKPOINT_DIR)
                 if os.path.exists(os.path.join(workdir, n))]
    if leftovers:
      raise ConfigError(f"--workdir {workdir} holds {' and '.join(leftovers)} but no "
                        f"{run_log.CONFIG_FILE}, so its run is unknown: {fresh}")
    return
  # config.json files from before "image_shape" was recorded.
  previous.setdefault("image_shape", record["image_shape"])
  diffs = _differences(previous, record)
  if diffs:
    raise ConfigError(
        f"--workdir {workdir} holds a run with a different config ({'; '.join(diffs[:3])}"
        f"{'; ...' if len(diffs) > 3 else ''}): {fresh}")
  done = max((r["epoch"] for r in run_log.read_metrics(workdir)), default=0)
  if record["num_epochs"] < done:
    raise ConfigError(
        f"config.num_epochs={record['num_epochs']} is invalid: --workdir {workdir} "
        f"already holds {done} trained epochs; use num_epochs >= {done}, or {fresh}")


def prepare_run(config, workdir: str):
  """Validates `config` for `workdir`, prepares the data, writes config.json.

  Raises:
    ConfigError: with a one-line message, before anything is written.
    MissingArchiveError: the dataset's archives are not in its manual
      directory (a one-line message naming each file, its download URL and
      the directory), before anything is written.
    DownloadError: the dataset's files could not be downloaded (a one-line
      message saying how to get a copy), before anything is written.
  """
  resolved, class_names = validated_config(config)
  record = _run_record(resolved, class_names)
  check_workdir(workdir, record)
  if resolved.init_checkpoint:
    _check_init_checkpoint(resolved, len(class_names))
  keep_accelerators_for_jax()
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top  (loads TensorFlow)
  dataset_lib.open_dataset(resolved).steps_per_epoch(resolved.batch_size)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    run_log.write_config(workdir, record)
  return resolved
