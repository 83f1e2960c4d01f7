"""A frozen trunk's output, computed once per split and shared by every run of a study.

With `config.freeze_backbone` the trunk (the backbone but its feature layer,
`models.param_groups`) is a fixed function of the image: its weights get no
update and it runs in inference mode. Without augmentation its output for
each example is then the same at every step, so a run computes it once for
each split (`Classifier.trunk_output`) and trains the new layers (the
feature layer and the head) on it (`Classifier.on_trunk_output`); the train
state and the checkpoints still hold the whole model, so the run's readers
(predict, export, the report) see an ordinary run. With augmentation, or a
head that reads the trunk's feature map (CC-Loss), the trunk runs at every
step as without the cache.

The cache: one file per split in `<prepared data>/trunk_features/`, shared by
every run on that prepared data. Its name is a hash of everything that changes
the features (`cache_key`): the prepared data and the split, the model, the
image size, the normalisation, the padding, the SHA-256 of the trunk's
variables as loaded (it changes with the weights file, or with the source run
and its step of `config.trunk_from`) and the dtype. A file is written to a
temporary name and renamed, under a lock (`fcntl.flock` on `<file>.lock`), so
runs that start together compute it once; each file holds its key and a CRC32
of its arrays, and one that does not read back intact is computed again, with
a one-line warning.

`config.trunk_from` (`take_trunk`, `source_record`): the trunk of a finished
run, restored as its readers restore it (`inference.load_run`).
"""

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import time
import zipfile
import zlib

from absl import logging
import jax
import numpy as np
import optax

from camri import config_lib
from camri import models
from camri import run_log

CACHE_DIR = "trunk_features"


@dataclasses.dataclass(frozen=True)
class TrunkFeatures:
  """How a run with a frozen trunk gets the trunk's output: `arrays` computed once, or None
  (the trunk runs at every step); `line` says which, for the run's first line."""
  arrays: dict[str, dict[str, np.ndarray]] | None  # split -> {"image": features, "label", "id", "mask"}
  line: str


def trunk_variables(variables) -> dict:
  """{"params", "batch_stats"} of a Classifier's variables, only the trunk's modules."""
  return {collection: {name: module for name, module in tree.get("backbone", {}).items()
                       if name not in models.FEATURE_MODULES}
          for collection, tree in variables.items() if collection in ("params", "batch_stats")}


def digest(tree) -> str:
  """SHA-256 (hex) of a tree's leaf paths, dtypes, shapes and bytes."""
  sha = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    leaf = np.ascontiguousarray(leaf)
    sha.update(f"{jax.tree_util.keystr(path)} {leaf.dtype} {leaf.shape}".encode())
    sha.update(leaf.view(np.uint8))
  return sha.hexdigest()


def why_recomputed(config, model) -> str | None:
  """Why a frozen trunk's output cannot be computed once for this run, or None when it can."""
  if config.augment:
    return f"config.augment={tuple(config.augment)} changes the images at every step"
  if getattr(model.head, "uses_feature_map", False):
    return f"loss {config.loss.name!r} reads the trunk's feature map"
  return None


def features_replace_images(config, model) -> bool:
  """Whether the run's steps take its frozen trunk's output, computed once, in place of the
  images: the one answer for the feed (`train.data_on_device`) and for `features_for`."""
  return bool(config.get("freeze_backbone")) and why_recomputed(config, model) is None


def features_for(config, dataset, model, state, members):
  """(state, `TrunkFeatures`) of a run with a frozen trunk, or (state, None) without one.

  Where the features are computed once (`features_replace_images`), the
  returned state's model is `model.clone(on_trunk_output=True)`: its steps
  take the features as their images. A population's members share one trunk:
  a frozen trunk is loaded from config.init_checkpoint or config.trunk_from,
  neither of which a member may change (`config_fields.member_fields`).
  """
  if not config.get("freeze_backbone"):
    return state, None
  if not features_replace_images(config, model):
    return state, TrunkFeatures(
        None, f"trunk features: computed at every step ({why_recomputed(config, model)})")
  start = time.perf_counter()
  # Fetched to the host: each process computes its share of the features on its own devices.
  variables = jax.device_get(_variables(members.of(state, 0)))
  trunk_sha256 = digest(trunk_variables(variables))
  arrays, computed, waited = {}, False, 0.0
  for split in dataset.splits:
    arrays[split], fresh, wait = cached_split(config, dataset, split, model, variables,
                                              trunk_sha256)
    computed, waited = computed or fresh, waited + wait
  images = sum(len(a["label"]) for a in arrays.values())
  took = time.perf_counter() - start
  if computed:
    line = f"trunk features: {images:,} images once, {took:.0f} s"
  elif waited >= 1:
    line = (f"trunk features: {images:,} images, computed by another run (waited "
            f"{waited:.0f} s for it), read from the cache in {took - waited:.1f} s")
  else:
    line = f"trunk features: {images:,} images, read from the cache in {took:.1f} s"
  return state.replace(apply_fn=model.clone(on_trunk_output=True).apply), TrunkFeatures(
      arrays, line)


def without_trunk(state):
  """`state` with its trunk's parameters and BatchNorm statistics as `optax.MaskedNode`s
  (the leaves its optimiser state already masks): the state of the steps on the trunk's
  output, which neither read nor change the trunk (`with_trunk` puts it back)."""
  def masked(tree):
    return jax.tree.map(lambda x, group: optax.MaskedNode() if group == "trunk" else x,
                        tree, models.param_groups(tree))
  return state.replace(params=masked(state.params), batch_stats=masked(state.batch_stats))


def with_trunk(state, whole):
  """`state` (`without_trunk`'s) with the trunk of `whole` in place of its masked leaves."""
  def filled(tree, whole_tree):
    return jax.tree.map(lambda x, w: w if isinstance(x, optax.MaskedNode) else x, tree,
                        whole_tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return state.replace(params=filled(state.params, whole.params),
                       batch_stats=filled(state.batch_stats, whole.batch_stats))


def _variables(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def cache_key(config, dataset, split: str, trunk_sha256: str, dtype: str) -> dict:
  """Everything the features of `split` depend on (`cache_path` hashes it)."""
  part = dataset.splits[split]
  held_out = (None if part.held_out is None else
              hashlib.sha256("\n".join(sorted(map(str, part.held_out))).encode()).hexdigest())
  builder = dataset.builder
  return {"data": os.path.abspath(str(builder.data_dir)), "builder": builder.name,
          "builder_config": getattr(builder.builder_config, "name", None),
          "tfds_split": part.tfds_split, "held_out": held_out,
          "keep_held_out": part.keep_held_out, "size": part.size,
          "processes": [jax.process_index(), jax.process_count()],
          "model": config.model, "image_size": config.image_size,
          "input_normalization": config.input_normalization,
          "resnet_padding": config.resnet_padding, "trunk_sha256": trunk_sha256,
          "dtype": dtype}


def cache_path(dataset, key: dict, split: str) -> str:
  name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
  return os.path.join(str(dataset.builder.data_dir), CACHE_DIR, f"{split}-{name}.npz")


def cached_split(config, dataset, split: str, model, variables, trunk_sha256: str):
  """(the split's features as `TrunkFeatures.arrays` holds them, whether they were computed
  now rather than read, the seconds waited for another process computing them)."""
  forward = _trunk_forward(model)
  dtype = str(jax.eval_shape(forward, variables,
                             jax.ShapeDtypeStruct((1, *dataset.image_shape), np.float32)).dtype)
  key = cache_key(config, dataset, split, trunk_sha256, dtype)

  def compute():
    parts = []
    for batch in dataset.eval_batches(split, global_batch_size=config.eval_batch_size):
      real = batch["mask"] > 0
      parts.append({"image": np.asarray(forward(variables, batch["image"]))[real],
                    "label": batch["label"][real], "id": batch["id"][real]})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  arrays, computed, waited = read_or_compute(cache_path(dataset, key, split), key, compute)
  return {**arrays, "id": arrays["id"].astype(object),
          "mask": np.ones(len(arrays["label"]), np.float32)}, computed, waited


@functools.lru_cache(maxsize=4)
def _trunk_forward(model):
  """`Classifier.trunk_output`, compiled once per model and input shape."""
  return jax.jit(functools.partial(model.apply, method="trunk_output"))


def read_or_compute(path: str, key: dict, compute):
  """(the arrays saved at `path` for `key`, or `compute()`'s, saved there; whether computed;
  the seconds spent waiting for the lock).

  Under `path`.lock, so that of processes asking at once one computes and the
  others wait, then read. A file that does not read back intact is computed
  again, with a one-line warning.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with _locked(path + ".lock") as waited:
    arrays, problem = _read(path, key)
    if arrays is not None:
      return arrays, False, waited
    if problem:
      logging.warning("the trunk features cache %s is damaged (%s): computing it again",
                      path, problem)
    arrays = compute()
    run_log.atomic_write(path, _encoded(arrays, key))
    return arrays, True, waited


@contextlib.contextmanager
def _locked(path):
  """Holds an exclusive flock on `path`; yields the seconds it waited for it."""
  with open(path, "a") as f:
    start = time.perf_counter()
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield time.perf_counter() - start
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _crc(arrays) -> str:
  crc = 0
  for name in sorted(arrays):
    crc = zlib.crc32(np.ascontiguousarray(arrays[name]).view(np.uint8), crc)
  return f"{crc:08x}"


def _encoded(arrays, key) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  arrays = {**arrays, "id": np.asarray(arrays["id"]).astype(bytes)}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays, key=json.dumps(key, sort_keys=True), crc32=_crc(arrays))
  return buffer.getvalue()


def _read(path, key):
  """(arrays, None) of an intact file for `key`; (None, why not) of another; (None, None)
  without one."""
  if not os.path.exists(path):
    return None, None
  try:
    with np.load(path, allow_pickle=False) as saved:
      arrays = {name: saved[name] for name in ("image", "label", "id")}
      saved_key, crc = str(saved["key"]), str(saved["crc32"])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    return None, f"{type(e).__name__}: {str(e)[:100]}"
  if json.loads(saved_key) != key:
    return None, "it was written for other features"
  if _crc(arrays) != crc:
    return None, "its arrays do not match their CRC32"
  return arrays, None


# What a source run and the run taking its trunk must share: the trunk's shape and its input.
SHARED_WITH_SOURCE = ("model", "input_normalization", "resnet_padding")


def source_record(config) -> dict:
  """config.json's record of run `config.trunk_from`: its path, step, trunk SHA-256 and loss.

  Raises:
    ConfigError: the source is not a finished run, or its trunk does not fit `config`.
  """
  from camri import inference  # pylint: disable=g-import-not-at-top  (inference imports train)
  source = config.trunk_from
  path = os.path.abspath(os.path.expanduser(source))
  if not run_log.is_finished(path):
    raise config_lib.ConfigError(
        f"config.trunk_from={source!r} is invalid: it is not a finished camri run (no "
        f"{run_log.CONFIG_FILE}, or fewer epochs in {run_log.METRICS_FILE} than it trains): "
        "give the --workdir of a finished run")
  try:
    run = _load_source(path)
  except inference.RunNotFoundError as e:
    raise config_lib.ConfigError(f"config.trunk_from={source!r} is invalid: {e}") from None
  for field in SHARED_WITH_SOURCE:
    if run.config.get(field) != config.get(field):
      raise config_lib.ConfigError(
          f"config.{field}={config.get(field)!r} is invalid: the run of config.trunk_from="
          f"{source!r} has {field}={run.config.get(field)!r}, which its trunk needs: give that")
  return {"run": path, "step": run.step, "model": run.config.model,
          "trunk_sha256": digest(trunk_variables(run.variables)), "loss": run.config.loss.name}


@functools.lru_cache(maxsize=2)
def _load_source(path):
  """The source run, restored read-only (orbax's notes on read-only opening silenced)."""
  from camri import inference  # pylint: disable=g-import-not-at-top
  verbosity = logging.get_verbosity()
  logging.set_verbosity(min(verbosity, logging.ERROR))
  try:
    return inference.load_run(path, prepare_data=False)
  finally:
    logging.set_verbosity(verbosity)


def take_trunk(variables, source) -> dict:
  """`variables` (a Classifier's) with the trunk of finished run `source` in place of theirs."""
  taken = trunk_variables(_load_source(os.path.abspath(os.path.expanduser(source))).variables)
  # Host copies: the train step donates the state's buffers, and the source stays cached
  # for the next run of this process on it (a population of heads after another).
  taken = jax.tree.map(np.array, taken)
  merged = {c: dict(tree) for c, tree in variables.items()}
  for collection, modules in taken.items():
    merged[collection]["backbone"] = {**variables[collection]["backbone"], **modules}
  return merged
