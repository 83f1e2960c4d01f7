"""Populations (camri/members.py, camri/population.py): K runs in one program, each a run.

The numbers are compared in float64, as in test_feeds.py: a population's step
is another program than a run's alone (members stacked and vmapped, or
unrolled), so XLA may order its sums differently. With u = 1.1e-16 and
batch sums of at most 64 terms of size <= 10, a gradient's round-off is
|dg| <= 64 * 4u * 10 ~ 3e-13. Adam moves a parameter whose true gradient is ~0 (a
bias before a BatchNorm) by at most lr * |dg| / eps a step: over 20 steps at
the members' largest rate, 2e-3, that parts it by <= 2 * 20 * 2e-3 * 3e-13 /
1e-8 ~ 2.4e-6: atol 1e-5. Such a bias does not change the model's outputs,
and the other parameters and the loss sums differ by round-off of their own
sums, ~1e4 * u: rtol 1e-9. Evaluation scores are one forward pass of
parameters agreeing to that, rounded to the saved float32: rtol 2^-22, and
2^-24 of the largest score absolutely.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import feeds
from camri import prepare
from camri import run_log
from camri import train
from camri.data import dataset as dataset_lib
from camri.members import Members
from camri.members import stack

# (seed, margin, learning rate) of the three members.
MEMBERS = [(0, 0.1, 1e-3), (1, 0.3, 2e-3), (2, 0.2, 5e-4)]
# An epoch of 20 steps at batch 8 on 160 training images (the rest held out as the
# validation split): the steps of batch 64 on the whole split, an eighth of the float64
# compute.
SMALL_EPOCH = dict(validation_fraction=0.887, batch_size=8)


def _configs(digits_config, tmp_path, members=MEMBERS, **fields):
  configs = []
  for i, (seed, margin, learning_rate) in enumerate(members):
    config = digits_config.copy_and_resolve_references()
    config.update(**{"batch_size": 64, "eval_batch_size": 100, "seed": seed,
                     "learning_rate": learning_rate, **fields})
    config.loss.margin = (margin,)
    configs.append(prepare.prepare_run(config, str(tmp_path / f"run{i}")))
  return configs


def _in_float64(tree):
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _epoch(configs, member_axis="unroll", steps=None, split="test"):
  """One epoch (or its first `steps`) of `configs` in float64 on the devices, as a
  population (or a run alone): each run's (train sums, params, `split`'s Predictions)."""
  count = len(configs)
  config = configs[0].copy_and_resolve_references()
  config.member_axis = member_axis
  dataset = dataset_lib.open_dataset(config)
  members = Members(configs, [""] * count, dataset.steps_per_epoch(config.batch_size))
  sharding = feeds.Sharding.over_all_devices(count if members.stacked else 0)
  model, objective = train.make_model(config, dataset.num_classes)
  states = [_in_float64(train.create_train_state(c, model, dataset.image_shape)) for c in configs]
  state = jax.device_put(members.stack([s.replace(tx=states[0].tx) for s in states]),
                         sharding.state)
  sums = jax.device_put(members.stack([_in_float64(train.empty_train_sums(10))] * count),
                        sharding.state)
  feed = feeds.make_feed(config, dataset, sharding, train.make_train_step(objective, config.seed),
                         train.make_eval_step(objective), on_device=True,
                         runs=members.stack([train.run_arrays(c, 10) for c in configs]))
  for _, call in list(feed.train_calls(epoch=0, start_step=0))[:steps]:
    state, sums = call(state, sums)
  _, predictions = feed.evaluate(state, split, keep_predictions=True)
  sums, params = jax.device_get((sums, state.params))
  return [(members.of(sums, k), members.of(params, k),
           predictions.of_member(k) if members.stacked else predictions) for k in range(count)]


def _assert_alike(run, other, name):
  (sums, params, predictions), (other_sums, other_params, other_predictions) = run, other
  assert sums["loss_sum"].dtype == np.float64
  np.testing.assert_allclose(other_sums["loss_sum"], sums["loss_sum"], rtol=1e-9, err_msg=name)
  np.testing.assert_array_equal(other_sums["confusion"], sums["confusion"], err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-5, err_msg=name),
               other_params, params)
  np.testing.assert_array_equal(other_predictions.ids, predictions.ids)
  np.testing.assert_allclose(other_predictions.scores, predictions.scores, rtol=2**-22,
                             atol=2**-24 * np.abs(predictions.scores).max(), err_msg=name)


@pytest.mark.parametrize("member_axis, steps, split", [("unroll", None, "test"),
                                                       ("vmap", 1, "val")])
def test_each_member_trains_as_it_would_alone(digits_config, tmp_path, member_axis, steps,
                                              split):
  """Three members of other seeds, margins and learning rates, augmented: each is its run
  alone (its own order, and each example cropped by its key from the member's seed).

  Unrolled, a fourth member at a rate of 1e38 diverges in their program and leaves them
  alone. vmap for 1 step and 2 members only: XLA:CPU's grouped float64 convolution takes
  seconds a step.
  """
  diverging = [(1, 0.3, 1e38)] if member_axis == "unroll" else []
  members = [MEMBERS[0], *diverging, *MEMBERS[1:]] if diverging else MEMBERS[:2]
  healthy = [k for k, (_, _, rate) in enumerate(members) if rate < 1]
  small = SMALL_EPOCH if steps is None else {"batch_size": 8}  # Steps of 8 images.
  configs = _configs(digits_config, tmp_path, members, augment=("crop",), **small)
  with jax.enable_x64(True):
    population = _epoch(configs, member_axis, steps, split)
    alone = [_epoch([configs[k]], steps=steps, split=split)[0] for k in healthy]
  for k, run in zip(healthy, alone):
    _assert_alike(run, population[k], f"member {k}")
  kernels = [np.asarray(p["head"]["kernel"]) for _, p, _ in population]
  if diverging:
    assert not np.allclose(kernels[1], kernels[0], rtol=1e-3)
  # The members did differ: other data orders, margins and rates give other parameters.
  assert not any(np.allclose(a, b) for a, b in zip(kernels, kernels[1:]))


def test_a_member_gone_nan_fails_alone_and_the_others_finish(digits_config, tmp_path):
  """End to end (train.train_runs, float32): the NaN member's failed.json has the line a run
  alone would have stopped with (status 3); its checkpoints stop at the last good step."""
  members = [MEMBERS[0], (1, 0.3, 1e30), MEMBERS[2]]
  configs = _configs(digits_config, tmp_path, members, num_epochs=2)
  workdirs = [str(tmp_path / f"run{i}") for i in range(3)]
  rows = train.train_runs(configs, workdirs, population=True)
  failure = run_log.read_failure(workdirs[1])
  assert failure["status"] == 3
  assert failure["error"].startswith("the training loss or state became NaN or Inf at step 2;")
  assert "no checkpoint was saved" in failure["error"]
  assert rows[1] == [] and run_log.read_metrics(workdirs[1]) == []
  assert not os.listdir(os.path.join(workdirs[1], run_log.CHECKPOINT_DIR))
  for k in (0, 2):
    assert [r["epoch"] for r in rows[k]] == [1, 2]
    assert run_log.is_finished(workdirs[k]) and run_log.read_failure(workdirs[k]) is None
    assert run_log.read_predictions(workdirs[k], "test")["scores"].shape == (360, 10)
  # Trained again (the same command), it fails alike, alone; the finished members are left be.
  finished = [(tmp_path / f"run{k}" / run_log.METRICS_FILE).read_text() for k in (0, 2)]
  train.train_runs(configs, workdirs, population=True)
  assert finished == [(tmp_path / f"run{k}" / run_log.METRICS_FILE).read_text() for k in (0, 2)]
  assert run_log.read_failure(workdirs[1])["status"] == 3


def test_a_members_config_json_is_its_own_plus_the_population(digits_config, tmp_path):
  config = _configs(digits_config, tmp_path, MEMBERS[:1])[0]
  alone = run_log.read_config(tmp_path / "run0")
  prepare.prepare_run(config, str(tmp_path / "run0"),
                      population={"file": "p.json", "size": 3, "member": 0})
  record = run_log.read_config(tmp_path / "run0")
  assert record.pop("population") == {"file": "p.json", "size": 3, "member": 0}
  assert record == alone
  # Resumed alone or in another population, the run is the same run.
  prepare.prepare_run(config, str(tmp_path / "run0"),
                      population={"file": "q.json", "size": 5, "member": 4})
  prepare.prepare_run(config, str(tmp_path / "run0"))


def test_stacking_and_slicing_members():
  trees = [{"a": np.full((2,), k, np.float32), "b": np.int32(k)} for k in range(3)]
  stacked = stack(trees)
  assert stacked["a"].shape == (3, 2) and stacked["b"].shape == (3,)
  members = Members([None] * 3, ["a", "b", "c"], 1)
  assert int(members.of(stacked, 2)["b"]) == 2
  single = Members([None], ["a"], 1)
  assert single.of(trees[0], 0) is trees[0] and single.stack(trees[:1]) is trees[0]


def test_population_file_errors_are_one_line(tmp_path, tfds_dir):
  import run_main  # pylint: disable=g-import-not-at-top
  spec = tmp_path / "population.json"
  base = ["--config", "configs/digits.py", f"--config.data_dir={tfds_dir}"]
  spec.write_text(json.dumps({"members": [
      [*base, "--workdir", str(tmp_path / "a")],
      [*base, "--workdir", str(tmp_path / "b"), "--config.batch_size=32"]]}))
  result = run_main.run(str(spec), module="camri.population")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir {tmp_path / 'b'} cannot join the population of {tmp_path / 'a'}: their "
      "configs differ in 'batch_size' (64 vs 32), and members may differ only in seed, tag, "
      "learning_rate, loss.important_classes, loss.margin, loss.scale")
  spec.write_text("{")
  result = run_main.run(str(spec), module="camri.population")
  assert result.returncode == 2 and result.stderr.startswith(f"error: population file {spec} is")
