"""A frozen trunk's output computed once (camri/trunk.py): the same training, one cache."""

import logging
import re
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from camri import config_fields
from camri import config_lib
from camri import feeds
from camri import inference
from camri import prepare
from camri import run_log
from camri import train
from camri import trunk
from camri.data import dataset as dataset_lib
from configs import folder as folder_config
from tests import round_off
from tests.data import test_folder_runs as folder_runs


def _save(path, tree):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, jax.device_get(tree))
  checkpointer.wait_until_finished()
  return str(path)


def _frozen_config(config, tmp_path, model="small_cnn", image_shape=(8, 8, 1)):
  """`config` with a frozen trunk of backbone `model`, started from its own seed-0 variables
  (params and batch statistics, saved as an orbax init_checkpoint)."""
  config.update(model=model, feature_dim=16)
  validated, names = prepare.validated_config(config)
  state = train.create_train_state(validated, train.make_model(validated, len(names))[0],
                                   image_shape)
  config.init_checkpoint = _save(tmp_path / f"{model}_weights", {
      "params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]})
  config.freeze_backbone = True
  return config


@pytest.fixture
def frozen(digits_config, tmp_path):
  """(validated config, Dataset, model, variables): digits on a frozen small_cnn trunk."""
  digits_config.update(batch_size=64, eval_batch_size=100)
  config = prepare.prepare_run(_frozen_config(digits_config, tmp_path), str(tmp_path / "run"))
  dataset = dataset_lib.open_dataset(config, workdir=str(tmp_path / "run"))
  model, _ = train.make_model(config, dataset.num_classes)
  state = train.create_train_state(config, model, dataset.image_shape)
  return config, dataset, model, {"params": state.params, "batch_stats": state.batch_stats}


def _in_float64(tree):
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _epoch(config, dataset, model, once: bool):
  """One epoch of the frozen-trunk run in float64, the trunk's output computed `once` or at
  every step: (train sums, params, test Predictions)."""
  sharding = feeds.Sharding.over_all_devices()
  _, objective = train.make_model(config, dataset.num_classes)
  state = jax.device_put(_in_float64(train.create_train_state(config, model,
                                                              dataset.image_shape)),
                         sharding.replicated)
  arrays = None
  if once:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    sha = trunk.digest(trunk.trunk_variables(variables))
    arrays = {split: trunk.cached_split(config, dataset, split, model, variables, sha)[0]
              for split in dataset.splits}
    assert arrays["train"]["image"].dtype == np.float64
    state = state.replace(apply_fn=model.clone(on_trunk_output=True).apply)
  feed = feeds.make_feed(config, dataset, sharding, train.make_train_step(objective, config.seed),
                         train.make_eval_step(objective), on_device=True,
                         runs=train.run_arrays(config, dataset.num_classes), split_arrays=arrays)
  sums = jax.device_put(_in_float64(train.empty_train_sums(dataset.num_classes)),
                        sharding.replicated)
  calls, evaluate = [], feed._eval  # pylint: disable=protected-access
  for steps, call in feed.train_calls(epoch=0, start_step=0):
    state, sums = call(state, sums)
    calls.append(steps)
  feed._eval = lambda *a: (calls.append("eval"), evaluate(*a))[1]  # pylint: disable=protected-access
  _, predictions = feed.evaluate(state, "test", keep_predictions=True)
  return jax.device_get((sums, state.params)), predictions, calls


def test_features_once_train_as_the_trunk_recomputed_at_every_step(frozen):
  """One epoch on the trunk's output computed once equals one recomputing it at every step.

  In float64 (u = 1.1e-16): the two programs compute the same functions and
  differ only in the order of their sums. The trunk's output is a sum of at
  most 576 terms per layer (small_cnn's convolutions), its relative round-off
  ~ 4 * 576 u ~ 3e-13 either way. From there the argument of
  test_feeds.py's feeds test holds: a gradient's round-off is ~1e-12 of its
  size; Adam moves a parameter whose true gradient is ~0 (the feature layer's
  bias before its BatchNorm) by at most lr * |dg| / eps ~ 1e-3 * 3e-13 / 1e-8
  a step, 20 steps: <= 1e-6 (atol 1e-5); other parameters and the loss by
  round-off of their own sums, ~1e4 u (rtol 1e-9). The frozen trunk's
  parameters never move: equal bit for bit. Scores are rounded to the saved
  float32: rtol 2^-22.

  On CPU the steps on images are a call each, and so is each test batch (XLA:CPU
  loops over convolutions slowly, `feeds.steps_per_call`); the steps on the
  features, which have none, are one call for the epoch, and the test split another.
  """
  config, dataset, model, _ = frozen
  with jax.enable_x64(True):
    (sums, params), predictions, calls = _epoch(config, dataset, model, once=False)
    (once_sums, once_params), once_predictions, once_calls = _epoch(config, dataset, model,
                                                                    once=True)
  steps = dataset.steps_per_epoch(config.batch_size)
  if jax.default_backend() == "cpu":
    assert calls == [1] * steps + ["eval"] * 4  # 360 test images, eval batch 100.
  assert once_calls == [steps, "eval"]
  assert sums["loss_sum"].dtype == np.float64
  np.testing.assert_allclose(once_sums["loss_sum"], sums["loss_sum"], rtol=1e-9)
  np.testing.assert_array_equal(once_sums["confusion"], sums["confusion"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-5),
               once_params, params)
  jax.tree.map(np.testing.assert_array_equal, trunk.trunk_variables({"params": once_params}),
               trunk.trunk_variables({"params": params}))
  np.testing.assert_array_equal(once_predictions.ids, predictions.ids)
  np.testing.assert_allclose(once_predictions.scores, predictions.scores, rtol=2**-22,
                             atol=2**-24 * np.abs(predictions.scores).max())


def test_the_cache_is_computed_once_checked_and_keyed_by_the_weights(frozen, caplog):
  config, dataset, model, variables = frozen
  sha = trunk.digest(trunk.trunk_variables(variables))
  first, computed, _ = trunk.cached_split(config, dataset, "test", model, variables, sha)
  assert computed and first["image"].shape == (dataset.splits["test"].size, 64)
  again, computed, _ = trunk.cached_split(config, dataset, "test", model, variables, sha)
  assert not computed
  jax.tree.map(np.testing.assert_array_equal, again, first)

  # A truncated file is computed again, with a one-line warning.
  key = trunk.cache_key(config, dataset, "test", sha, "float32")
  path = trunk.cache_path(dataset, key, "test")
  with open(path, "r+b") as f:
    f.truncate(f.seek(0, 2) // 2)
  with caplog.at_level(logging.WARNING):
    repaired, computed, _ = trunk.cached_split(config, dataset, "test", model, variables, sha)
  assert computed
  jax.tree.map(np.testing.assert_array_equal, repaired, first)
  warnings = [r.getMessage() for r in caplog.records if "trunk features cache" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert f"the trunk features cache {path} is damaged (" in warnings[0]

  # Other weights: other features, in another file.
  shifted = jax.tree.map(lambda x: x * 1.5, variables)
  other_sha = trunk.digest(trunk.trunk_variables(shifted))
  assert other_sha != sha
  other, computed, _ = trunk.cached_split(config, dataset, "test", model, shifted, other_sha)
  assert computed and not np.allclose(other["image"], first["image"])


def test_runs_that_start_together_compute_the_cache_once(tmp_path):
  """Two threads open the lock file apart: flock excludes them as it does two processes."""
  computed = []

  def compute():
    computed.append(1)
    time.sleep(0.5)
    return {"image": np.ones((3, 2), np.float32), "label": np.arange(3, dtype=np.int32),
            "id": np.array([b"a", b"b", b"c"], object)}

  path, key = str(tmp_path / "cache" / "test-x.npz"), {"k": 1}
  results = []
  threads = [threading.Thread(target=lambda: results.append(
      trunk.read_or_compute(path, key, compute))) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(computed) == 1
  assert sorted(fresh for _, fresh, _ in results) == [False, True]
  # The reader waited for the computing thread's 0.5 s (less the start-up between them).
  waits = {fresh: waited for _, fresh, waited in results}
  assert waits[True] < 0.1 and 0.1 < waits[False]
  np.testing.assert_array_equal(results[0][0]["id"].astype(object), [b"a", b"b", b"c"])


def test_a_frozen_small_cnn_runs_end_to_end_on_features_computed_once(
    digits_config, tmp_path, capsys):
  """One epoch on the cached features; the readers see the whole model; later runs read
  the cache."""
  digits_config.update(batch_size=64, eval_batch_size=100, num_epochs=1)
  config = _frozen_config(digits_config, tmp_path)
  workdir = str(tmp_path / "run")
  rows = train.train_and_evaluate(prepare.prepare_run(config, workdir), workdir)
  first_line = capsys.readouterr().out.splitlines()[0]
  assert "; trunk features: 1,797 images once, " in first_line
  steps = re.search(r"; (\d+) steps per epoch; ", first_line).group(1)
  assert re.search(rf"; data on the devices \(float32, [\d.]+ MiB\), {steps} steps per call;",
                   first_line)
  run = inference.load_run(workdir)  # The checkpoint holds the whole model.
  saved = run_log.read_predictions(workdir, "test")
  scores, labels = [], []
  for batch in run.dataset.eval_batches("test", global_batch_size=100):
    real = batch["mask"] > 0
    scores.append(np.asarray(run.scores(run.variables, batch["image"]))[real])
    labels.append(batch["label"][real])
  scores, labels = np.concatenate(scores), np.concatenate(labels)
  round_off.assert_same_predictions(np.argmax(saved["scores"], 1), scores)
  assert rows[-1]["test_accuracy"] == pytest.approx(np.mean(np.argmax(scores, 1) == labels),
                                                    abs=np.mean(round_off.near_ties(scores)))
  # A population of it and another seed trains its members on the one set of features,
  # read from the cache.
  workdirs = [str(tmp_path / f"member{seed}") for seed in (0, 1)]
  configs = []
  for seed, workdir in zip((0, 1), workdirs):
    config.seed = seed
    configs.append(prepare.prepare_run(config, workdir))
  train.train_runs(configs, workdirs, population=True)
  assert ("a population of 2 runs; trunk features: 1,797 images, read from the cache in "
          in capsys.readouterr().out)
  assert all(len(run_log.read_metrics(w)) == 1 for w in workdirs)
  # Other weights in the same file: the features are computed again, not read stale.
  weights = ocp.StandardCheckpointer().restore(config.init_checkpoint)
  shutil.rmtree(config.init_checkpoint)
  _save(config.init_checkpoint, jax.tree.map(lambda x: np.asarray(x) * 1.5, weights))
  changed = str(tmp_path / "changed")
  train.train_and_evaluate(prepare.prepare_run(config, changed), changed)
  assert "trunk features: 1,797 images once, " in capsys.readouterr().out


def test_a_frozen_reference_cnn_runs_end_to_end_on_features_computed_once(tmp_path, capsys):
  """The paper's 13-layer network on a tiny folder (its 3x3 convolutions on 2x2 maps are slow
  on XLA:CPU, issue 26 section 3): the trunk runs once per image."""
  folder_runs.write_tree(tmp_path / "tree", ("train", "test"), stored_at_size=True, seed=2)
  config = folder_config.get_config(f"path={tmp_path / 'tree'},important=bee,size=8")
  config.update(data_dir=str(tmp_path / "tfds"), batch_size=4, eval_batch_size=6,
                num_epochs=1, progress_bar=False)
  config = _frozen_config(config, tmp_path, "reference_cnn", image_shape=(8, 8, 3))
  workdir = str(tmp_path / "run")
  [row] = train.train_and_evaluate(prepare.prepare_run(config, workdir), workdir)
  per_split = len(folder_runs.CLASSES) * len(folder_runs.KINDS)
  first_line = next(line for line in capsys.readouterr().out.splitlines()
                    if "steps per epoch" in line)  # After the folder's own line.
  assert f"; trunk features: {2 * per_split} images once, " in first_line
  saved = run_log.read_predictions(workdir, "test")
  assert len(saved["ids"]) == per_split
  assert np.mean(np.argmax(saved["scores"], 1) == saved["labels"]) == row["test_accuracy"]


def test_a_resume_with_another_trunk_source_is_refused_in_one_line(tmp_path):
  source = {"run": "/runs/ce", "step": 40, "trunk_sha256": "a" * 64, "loss": "cross_entropy"}
  record = config_fields.with_added_fields({
      "trunk_from": "/runs/ce", "trunk_source": source, "num_epochs": 1, "init_checkpoint": None,
      "image_shape": [8, 8, 1], "model": "small_cnn"})
  run_log.write_config(tmp_path, record)
  prepare.check_workdir(str(tmp_path), record)  # The same source resumes.
  moved = {**record, "trunk_source": {**source, "step": 80, "trunk_sha256": "b" * 64}}
  with pytest.raises(prepare.ConfigError, match=(
      r"^config.trunk_from='/runs/ce' is invalid: the run in --workdir .* took the trunk of "
      r"/runs/ce at step 40 \(SHA-256 aaaaaaaaaaaaaaaa...\), which is now /runs/ce at step 80 "
      r"\(bbbbbbbbbbbbbbbb...\): give that run back, or use another --workdir")) as e:
    prepare.check_workdir(str(tmp_path), moved)
  assert "\n" not in str(e.value)


def test_with_augmentation_or_a_feature_map_head_the_trunk_runs_at_every_step(digits_config):
  config, names = prepare.validated_config(digits_config)
  model, _ = train.make_model(config, len(names))
  assert trunk.why_recomputed(config, model) is None
  with config.unlocked():
    config.augment = ("crop",)
  assert trunk.why_recomputed(config, model) == (
      "config.augment=('crop',) changes the images at every step")
  with config.unlocked():
    config.augment = ()
    config.loss.name = "cc_loss"
  cc_model, _ = train.make_model(config, len(names))
  assert trunk.why_recomputed(config, cc_model) == "loss 'cc_loss' reads the trunk's feature map"


def test_a_population_on_features_is_not_refused_for_its_images(digits_config, tmp_path,
                                                                monkeypatch):
  """A population's images must fit on the devices, unless a frozen trunk's features,
  computed once, replace them (`trunk.features_replace_images`, asked by `data_on_device`)."""
  monkeypatch.setattr(feeds, "fits_on_devices", lambda dataset, runs=1: False)
  config = _frozen_config(digits_config, tmp_path)
  record = {"file": "p.json", "population": 0, "size": 15, "member": 0}
  prepare.prepare_run(config.copy_and_resolve_references(), str(tmp_path / "a"), population=record)
  config.augment = ("crop",)  # The trunk then runs at every step, on the images.
  with pytest.raises(config_lib.ConfigError, match=r"^config.data_on_device='auto' is invalid "
                     "for a population of 15 runs"):
    prepare.prepare_run(config, str(tmp_path / "b"), population=record)

