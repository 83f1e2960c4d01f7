"""Everything checked before a run computes or writes anything.

`prepare_run` validates the config against the known datasets, models and
losses, resolves important classes by name, refuses a workdir that holds a
different run, checks that config.init_checkpoint fits the backbone, prepares the
dataset, checks what needs the prepared data (a training split that holds a
batch, a fixed image size, a feed the run can take), and only then writes
config.json. TensorFlow is
not loaded before the config and the workdir have passed (except to check an
init_checkpoint: the model code imports the input pipeline), so a bad command
fails in a second or two.
"""

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp

from camri import config_fields
from camri import config_lib
from camri import data as data_lib
from camri import models
from camri import objectives
from camri import run_log
from camri.config_lib import ConfigError
from camri.data.download import DownloadError
from camri.data.manual import MissingArchiveError

__all__ = ["ConfigError", "DownloadError", "MissingArchiveError", "prepare_run",
           "setup_runtime", "use_compilation_cache", "validated_config"]


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


def use_compilation_cache(directory=None):
  """Turns on JAX's persistent compilation cache for the programs this process compiles.

  A run resumed after preemption, a rerun and the next process of a study then
  load the programs compiled before instead of compiling them again (seconds
  each on a CPU; the cache keys a program by its computation, devices and
  compiler, so a loaded program is the one a compile gives). The directory:
  JAX_COMPILATION_CACHE_DIR where the environment sets it (empty: no cache),
  else `directory` (a study's), else `default_compilation_cache()`. A cache
  entry that cannot be written or read is a warning, never a failure.
  """
  if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", directory or default_compilation_cache())


def default_compilation_cache() -> str:
  """$XDG_CACHE_HOME/camri/jax, by default ~/.cache/camri/jax."""
  home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(home, "camri", "jax")


def keep_accelerators_for_jax():
  """tf.data runs on the CPU; TensorFlow must not take GPU memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


def validated_config(config):
  """The validated config with important classes as indices, and the class names."""
  resolved, names, _ = _validated(config)
  return resolved, names


def _validated(config, workdir=None):
  """(the validated config, the class names, the unprepared builder) of a run in `workdir`."""
  spec = data_lib.DATASETS.get(config.dataset)
  names = builder = None
  if spec is not None:
    builder = data_lib.builder_for(config, prepare=False, workdir=workdir)[1]
    names = data_lib.class_names(spec, builder)
  resolved = config_lib.validate(
      config, datasets=list(data_lib.DATASETS), models=list(models.BACKBONES),
      losses={k: v[1] for k, v in objectives.OBJECTIVES.items()},
      augmentations=spec.augmentations if spec else (), class_names=names,
      device_count=jax.device_count())
  if spec.check_classes:
    spec.check_classes(resolved, builder)
  return resolved, names, builder


def _check_init_checkpoint(config, num_classes, image_shape, sha256=None):
  """Raises ConfigError unless config.init_checkpoint fits the model's backbone.

  Only shapes are built (jax.eval_shape): no parameters are initialised. A
  `.safetensors` file (its `sha256`) found to fit once is not read again for the
  same backbone in this process (a population's members: one file, ~0.5 s each).
  """
  fitted = (sha256, config.model, config.feature_dim, tuple(image_shape),
            bool(config.freeze_backbone))
  if sha256 and fitted in _FITTED:
    return
  from camri import train  # pylint: disable=g-import-not-at-top
  model, _ = train.make_model(config, num_classes)
  images = jnp.zeros((1, *image_shape))
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), images)
  models.load_backbone(variables, config.init_checkpoint, config.model,
                       frozen=config.freeze_backbone)
  if sha256:
    _FITTED.add(fitted)


_FITTED = set()  # `_check_init_checkpoint`'s files that fit, by SHA-256 and backbone.


# What config.json records besides the config: derived from it and the data.
DERIVED_FIELDS = ("class_names", "num_classes", "image_shape", "prepared_data",
                  "init_checkpoint_sha256", "trunk_source")


def _run_record(config, class_names, builder) -> dict:
  """config.json: the config, the class names, the model's input shape, the data's copy.

  Readers (predict, export) build the model from "class_names" and
  "image_shape" without opening the dataset. "prepared_data" names the builder
  config of datasets that have one (an image-folder tree's path and file
  fingerprint): the prepared copy the run is bound to, which resuming and
  reading it read (`camri.data.folder`). "init_checkpoint_sha256" is the
  SHA-256 of a .safetensors init_checkpoint: a resume refuses another file.
  "trunk_source" records config.trunk_from's run: its path, step, trunk SHA-256 and loss
  (`trunk.source_record`); a resume refuses another.
  """
  record = json.loads(config.to_json_best_effort())
  record["class_names"] = list(class_names)
  record["num_classes"] = len(class_names)
  record["image_shape"] = list(data_lib.image_shape(builder, config.image_size))
  if builder.builder_config is not None:
    record["prepared_data"] = builder.builder_config.name
  if config_lib.is_state_dict(config.init_checkpoint):
    record["init_checkpoint_sha256"] = _sha256(config.init_checkpoint)
  if config.get("trunk_from"):
    from camri import trunk  # pylint: disable=g-import-not-at-top  (restores the source run)
    record["trunk_source"] = trunk.source_record(config)
  return record


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with open(os.path.expanduser(path), "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _differences(old: dict, new: dict, prefix="") -> list[str]:
  diffs = []
  for key in sorted(set(old) | set(new)):
    name = f"{prefix}{key}"
    a, b = old.get(key), new.get(key)
    if name in config_fields.RESUMABLE_CHANGES:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += _differences(a, b, prefix=f"{name}.")
    elif a != b:
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
  started, now = previous.get("init_checkpoint_sha256"), record.get("init_checkpoint_sha256")
  same_path = previous.get("init_checkpoint") == record["init_checkpoint"]
  if started and now and started != now and same_path:
    raise ConfigError(
        f"config.init_checkpoint={record['init_checkpoint']!r} is invalid: the file changed since "
        f"the run in --workdir {workdir} started from it (SHA-256 {started[:16]}... then, "
        f"{now[:16]}... now): restore that file, or {fresh}")
  started, now = previous.get("trunk_source"), record.get("trunk_source")
  if started and now and started != now:
    raise ConfigError(
        f"config.trunk_from={record['trunk_from']!r} is invalid: the run in --workdir {workdir} "
        f"took the trunk of {started['run']} at step {started['step']} (SHA-256 "
        f"{started['trunk_sha256'][:16]}...), which is now {now['run']} at step {now['step']} "
        f"({now['trunk_sha256'][:16]}...): give that run back, or {fresh}")
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


def _check_feed(config, dataset, population: dict | None):
  """Raises the ConfigError `train.data_on_device` would: a population, of
  `population["size"]` runs, whose data cannot be on the devices."""
  if population is None:
    return  # A run alone takes either feed.
  from camri import train  # pylint: disable=g-import-not-at-top
  train.data_on_device(config, dataset, runs=population["size"])


def prepare_run(config, workdir: str, population: dict | None = None):
  """Validates `config` for `workdir`, prepares the data, writes config.json.

  `population`: the record of the population the run trains in
  (`camri.population`), written to config.json as "population".

  Raises:
    ConfigError: with a one-line message, before anything is written.
    MissingArchiveError: the dataset's archives are not in its manual
      directory (a one-line message naming each file, its download URL and
      the directory), before anything is written.
    DownloadError: the dataset's files could not be downloaded (a one-line
      message saying how to get a copy), before anything is written.
  """
  resolved, class_names, builder = _validated(config, workdir)
  record = _run_record(resolved, class_names, builder)
  if population is not None:
    record["population"] = population
  check_workdir(workdir, record)
  if resolved.init_checkpoint:
    _check_init_checkpoint(resolved, len(class_names), record["image_shape"],
                           record.get("init_checkpoint_sha256"))
  keep_accelerators_for_jax()
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top  (loads TensorFlow)
  dataset = dataset_lib.open_dataset(resolved, workdir=workdir)
  dataset.steps_per_epoch(resolved.batch_size)
  _check_feed(resolved, dataset, population)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    spec = data_lib.get_spec(resolved.dataset)
    for name, text in (spec.run_files(builder) if spec.run_files else {}).items():
      run_log.atomic_write(os.path.join(workdir, name), text)
    run_log.write_config(workdir, record)
  for used in (builder, dataset.builder):  # Read again, the run's data is its bound copy.
    data_lib.folder.release_tree(used)
  return resolved
