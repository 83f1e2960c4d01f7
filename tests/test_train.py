"""Training: data-parallel equivalence, every dataset config on mocked data, resume."""

import csv
import importlib
import json
import math
import os
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from camri import feeds
from camri import metrics
from camri import prepare
from camri import run_log
from camri import train
from tests import digits_runs


def _sharding(devices):
  mesh = jax.sharding.Mesh(np.array(devices).reshape(1, -1), ("members", "data"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
  return train.Sharding(mesh)


def _in_float64(tree):
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _losses_on(devices, config, batches, num_classes=10):
  """Per-step losses and the final parameters of training on `devices`, in float64."""
  sharding = _sharding(devices)
  model, objective = train.make_model(config, num_classes)
  state = train.create_train_state(config, model, batches[0]["image"].shape[1:])
  state = jax.device_put(_in_float64(state), sharding.replicated)
  step = jax.jit(train.make_train_step(objective, config.seed),
                 out_shardings=(sharding.replicated, sharding.replicated))
  losses = []
  for batch in batches:
    sums = jax.device_put(_in_float64(train.empty_train_sums(num_classes)), sharding.replicated)
    state, sums = step(state, sums, sharding.put_batch(_in_float64(batch)))
    losses.append(float(sums["loss_sum"] / sums["count"]))
  return np.array(losses), jax.device_get(state.params)


def test_one_and_two_devices_give_the_same_training(digits_config):
  """Two devices compute what one does, up to the order of their sums.

  Compared in float64, where the bounds follow from round-off alone. (In
  float32 there is no machine-independent bound: the order of the batch sums
  depends on the kernels XLA:CPU picks for the instruction set, and a bias
  right before a BatchNorm, whose true gradient is 0, gets a round-off
  gradient near Adam's eps, so a step of up to the learning rate either way.)

  In float64, with u = 1.1e-16 and batch sums of 8 terms of size <= 10:
  - a gradient's round-off is |dg| <= 8 * 4u * 10 ~ 4e-14;
  - Adam's update lr * m / (sqrt(v) + eps) moves by at most lr * |dg| / eps,
    so 4 steps part any parameter by <= 2 * 4 * 1e-3 * 4e-14 / 1e-8 ~ 3e-8:
    atol 1e-7. (A bias before a BatchNorm is the one such parameter that
    moves that much; the BatchNorm removes it from the loss.)
  - a parameter with a real gradient, |g| >> eps, moves by ~lr * |dg| / |g|,
    so the losses differ by round-off of their own sums, ~1e3 * u: rtol 1e-9.
  A real difference (per-device BatchNorm statistics, a gradient not reduced
  over devices) is a change of the computation, far beyond round-off.
  """
  assert jax.device_count() == 2
  config, _ = prepare.validated_config(digits_config)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.random((8, 8, 8, 1), np.float32),
              "label": rng.integers(0, 10, 8).astype(np.int32),
              "mask": np.ones(8, np.float32)} for _ in range(4)]
  with jax.enable_x64(True):
    one, params_one = _losses_on(jax.devices()[:1], config, batches)
    two, params_two = _losses_on(jax.devices()[:2], config, batches)
  assert all(leaf.dtype == np.float64 for leaf in jax.tree.leaves(params_two))
  assert np.all(np.isfinite(one)) and one[-1] < one[0]
  np.testing.assert_allclose(two, one, rtol=1e-9)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-7),
               params_two, params_one)


def test_train_step_loss_is_the_masked_mean_of_the_objective(digits_config):
  """In float64, as above: the jitted step and the eager forward sum in other orders."""
  config, _ = prepare.validated_config(digits_config)
  sharding = _sharding(jax.devices())
  model, objective = train.make_model(config, 10)
  rng = np.random.default_rng(1)
  batch = {"image": rng.random((4, 8, 8, 1), np.float32),
           "label": np.array([8, 1, 2, 8], np.int32),
           "mask": np.array([1, 1, 1, 0], np.float32)}
  with jax.enable_x64(True):
    state = _in_float64(train.create_train_state(config, model, (8, 8, 1)))
    batch = _in_float64(batch)
    outputs, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                batch["image"], train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(0)})
    expected = objective.loss(outputs, jnp.asarray(batch["label"]))[:3]
    step = jax.jit(train.make_train_step(objective, config.seed))
    _, sums = step(state, _in_float64(train.empty_train_sums(10)), sharding.put_batch(batch))
  sums, expected = jax.device_get((sums, expected))
  assert expected.dtype == np.float64 and sums["count"] == 3.0
  np.testing.assert_allclose(sums["loss_sum"], expected.sum(), rtol=1e-9)
  assert np.sum(sums["confusion"]) == 3.0


def _valid_boxes(generate):
  """tfds's mock draws each BBox coordinate uniformly, often with min > max,
  which BBoxFeature refuses to encode: order each min/max pair."""

  def generate_random_obj(self, feature, tensor_info, rng):
    value = generate(self, feature, tensor_info, rng)
    if isinstance(feature, tfds.features.BBoxFeature):
      (ymin, ymax), (xmin, xmax) = np.sort(value[[0, 2]]), np.sort(value[[1, 3]])
      value = np.array([ymin, xmin, ymax, xmax], value.dtype)
    return value

  return generate_random_obj


@pytest.mark.parametrize("name, arg, important, model, image_shape, on_device, augment", [
    ("cifar10", None, (3, "cat"), "reference_cnn", (32, 32, 3), "true", ()),
    ("gtsrb", "important=stop", (14, "stop"), "reference_cnn", (32, 32, 3), "false", ("crop",)),
    ("awa2", "size=32,important=dolphin", (49, "dolphin"), "resnet18", (32, 32, 3), "true",
     ("flip", "crop")),
])
def test_dataset_config_trains_on_mocked_data(tmp_path, name, arg, important, model,
                                              image_shape, on_device, augment):
  """Each dataset config through main's code path: prepare_run, train_and_evaluate.

  Between them, both feeds, augmented (gtsrb from tf.data, awa2 from the
  devices) and not, and device data stored as uint8 (cifar10) and as float32
  (awa2, resized).
  """
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.num_epochs = 1
  config.batch_size = 8
  config.eval_batch_size = 6
  config.progress_bar = False
  config.data_on_device = on_device
  config.augment = augment
  config.data_dir = str(tmp_path / "tfds")
  seen_shapes = []
  original_put_batch = train.Sharding.put_batch
  original_put_batches = train.Sharding.put_batches

  def put_batch(self, batch):
    seen_shapes.append(batch["image"].shape[1:])
    return original_put_batch(self, batch)

  def put_batches(self, batches, sharding=None):
    seen_shapes.extend([batches["image"].shape[2:]] * len(batches["image"]))
    return original_put_batches(self, batches, sharding)

  generator = mocking.RandomFakeGenerator
  with tfds.testing.mock_data(num_examples=16), \
       mock.patch.object(generator, "_generate_random_obj",
                         _valid_boxes(generator._generate_random_obj)), \
       mock.patch.object(train.Sharding, "put_batch", put_batch), \
       mock.patch.object(train.Sharding, "put_batches", put_batches):
    config = prepare.prepare_run(config, str(tmp_path / "run"))
    rows = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert config.loss.important_classes == (important[0],)
  record = run_log.read_config(tmp_path / "run")
  assert record["class_names"][important[0]] == important[1]
  assert record["model"] == model and record["dataset"] == name
  assert set(seen_shapes) == {image_shape}
  # 16 mocked training images, batch 8: 2 steps; 16 test images, eval batch 6:
  # 3 batches, every image counted once.
  assert len(seen_shapes) == 2 + 3
  assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])
  assert sum(np.isfinite(rows[0][f"test_recall_{k}"])
             for k in range(record["num_classes"])) >= 1


def test_rerun_resumes_and_a_finished_run_is_not_retrained(digits_config, tmp_path_factory,
                                                            tmp_path, capsys):
  """From a copy of the session's two-epoch run of this config (tests/digits_runs.py)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(digits_runs.shared_run(digits_config.data_dir, tmp_path_factory, "camri"),
                  workdir)
  digits_config.num_epochs = digits_runs.EPOCHS
  config = prepare.prepare_run(digits_config, workdir)
  first = run_log.read_metrics(workdir)
  assert [r["epoch"] for r in first] == [1, 2]
  _assert_predictions_match_the_last_row(workdir, first[-1])
  with mock.patch.object(feeds, "make_feed", side_effect=AssertionError("no feed is needed")):
    np.testing.assert_equal(train.train_and_evaluate(config, workdir), first)  # Nothing to do.
  saved = run_log.read_predictions(workdir, "test")
  run_log.predictions_path(workdir, "test").unlink()
  again = train.train_and_evaluate(config, workdir)  # Finished: only the lost file is remade.
  np.testing.assert_equal(again, first)  # NaN == NaN (a never predicted class's precision).
  np.testing.assert_equal(run_log.read_predictions(workdir, "test"), saved)
  digits_config.num_epochs = 3
  config = prepare.prepare_run(digits_config, workdir)
  capsys.readouterr()
  longer = train.train_and_evaluate(config, workdir)
  said = capsys.readouterr().out.splitlines()
  assert said[1:3] == ["resuming from the checkpoint at step 40 (epoch 2 of 3 done)",
                       "data_on_device=auto decided anew on resuming (either feed trains the "
                       "same batches)"]
  assert [r["epoch"] for r in longer] == [1, 2, 3]
  np.testing.assert_equal(longer[:2], first)
  np.testing.assert_equal(run_log.read_metrics(workdir), longer)
  _assert_predictions_match_the_last_row(workdir, longer[-1])  # Rewritten for epoch 3.
  assert longer[-1]["test_accuracy"] >= 0.9


def test_a_workdir_from_before_the_validation_split_is_the_run_it_was(digits_config, tmp_path):
  workdir = tmp_path / "old"
  prepare.prepare_run(digits_config.copy_and_resolve_references(), str(workdir))
  path = workdir / run_log.CONFIG_FILE
  record = json.loads(path.read_text())
  del record["validation_fraction"]  # config.json as written before the field existed.
  path.write_text(json.dumps(record))
  assert run_log.read_config(workdir)["validation_fraction"] == 0.0
  with pytest.raises(prepare.ConfigError, match="validation_fraction"):
    prepare.prepare_run(digits_config.copy_and_resolve_references(), str(workdir))
  digits_config.validation_fraction = 0.0
  prepare.prepare_run(digits_config, str(workdir))  # Resumable as what it was.


def _assert_predictions_match_the_last_row(workdir, last):
  """predictions/{val,test}.npz: one row per example, argmax accuracy as metrics.csv's."""
  for split, size in (("val", 145), ("test", 360)):
    saved = run_log.read_predictions(workdir, split)
    assert saved["scores"].shape == (size, 10) and saved["scores"].dtype == np.float32
    assert len(set(saved["ids"])) == size and saved["labels"].shape == (size,)
    assert np.mean(np.argmax(saved["scores"], -1) == saved["labels"]) == last[f"{split}_accuracy"]
  assert {"val_loss", "val_accuracy", "val_recall", "val_recall_8", "val_precision_8",
          "test_precision_8"} <= set(last)


def test_metrics_summary_matches_hand_computed_values():
  cos = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, -1.0]])
  labels = jnp.array([1, 0, 0, 2])
  sums = metrics.batch_sums(jnp.array([1.0, 2.0, 3.0, 4.0]), cos, labels,
                            jnp.array([1.0, 1.0, 1.0, 0.0]), cosine=cos)
  out = metrics.summarize(sums, [0], "test", per_class=True)
  assert out["test_loss"] == pytest.approx(2.0)
  assert out["test_accuracy"] == pytest.approx(1.0)
  assert out["test_recall"] == pytest.approx(1.0)
  assert out["test_recall_1"] == pytest.approx(1.0)
  assert np.isnan(out["test_recall_2"])  # Its only example is padding.
  # Class 0: angles 0 and 60 degrees -> mean 30, population variance 900.
  assert out["test_angle_mean_0"] == pytest.approx(30.0, abs=1e-4)
  assert out["test_angle_var_0"] == pytest.approx(900.0, rel=1e-4)
  assert out["test_angle_mean_1"] == pytest.approx(0.0, abs=1e-4)


def test_precision_of_a_class_never_predicted_is_nan_in_metrics_csv_as_the_readme_says(tmp_path):
  confusion = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # Nothing predicted 2.
  sums = {**metrics.empty(3), "confusion": confusion, "count": jnp.float32(5)}
  log = run_log.MetricsLog(tmp_path, num_epochs=1)
  log.write(1, metrics.summarize(sums, [2], "test", per_class=True), step=1)
  log.close()
  with open(tmp_path / run_log.METRICS_FILE, newline="") as f:
    [row] = list(csv.DictReader(f))
  assert (row["test_precision_0"], row["test_precision_2"]) == (str(2 / 3), "nan")
  assert math.isnan(run_log.read_metrics(tmp_path)[0]["test_precision_2"])
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")) as f:
    readme = " ".join(f.read().split())
  assert "`<split>_precision_<k>` for every class k (precision is `nan` while no example is " \
         "predicted k)" in readme


@pytest.mark.parametrize("fields, trunk_step", [
    ({}, 1e-3), ({"backbone_learning_rate": 1e-4}, 1e-4), ({"freeze_backbone": True}, 0.0)])
def test_the_trunk_has_its_own_learning_rate_or_none(digits_config, fields, trunk_step):
  """Adam's first step moves each parameter by its learning rate (|g| >> eps)."""
  digits_config.update(fields)
  params = {"backbone": {"Conv_0": {"kernel": np.ones(3)}, "FeatureLayer_0": {"bias": np.ones(2)}},
            "head": {"kernel": np.ones(2)}}
  tx = train.make_optimizer(digits_config)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["Conv_0"]["kernel"], -trunk_step, rtol=1e-4)
  for new in (updates["backbone"]["FeatureLayer_0"]["bias"], updates["head"]["kernel"]):
    np.testing.assert_allclose(new, -1e-3, rtol=1e-4)


@pytest.mark.parametrize("backbone_learning_rate", [None, 1e-4])
def test_a_checkpoint_from_before_the_learning_rate_was_state_restores(
    digits_config, tmp_path, backbone_learning_rate):
  """A train state saved with the optimiser of old (no `inject_hyperparams`) restores as the
  state today's optimiser has after the same update, bit for bit."""
  from camri import checkpoint  # pylint: disable=g-import-not-at-top
  digits_config.backbone_learning_rate = backbone_learning_rate
  config, _ = prepare.validated_config(digits_config)
  model, _ = train.make_model(config, 10)
  grads = lambda state: jax.tree.map(lambda x: jnp.full_like(x, 0.5), state.params)
  old = train.create_train_state(config, model, (8, 8, 1), inject=False)
  old = old.apply_gradients(grads=grads(old))
  manager = checkpoint.manager(tmp_path, 2)
  checkpoint.save(manager, 1, old, train.empty_train_sums(10))
  manager.wait_until_finished()
  sharding = train.Sharding.over_all_devices()
  step, state, _ = train.restore_train_state(manager, config, model, (8, 8, 1),
                                             sharding.replicated, train.empty_train_sums(10))
  manager.close()
  new = train.create_train_state(config, model, (8, 8, 1))
  new = new.apply_gradients(grads=grads(new))
  assert step == 1
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(new.opt_state)
  jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state, state.step),
               (new.params, new.opt_state, new.step))
