"""The two feeds (camri/feeds.py): same batches, same training, same evaluation."""

import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import checkpoint
from camri import feeds
from camri import prepare
from camri import run_log
from camri import state as state_lib
from camri import train
from camri.data import dataset as dataset_lib
from camri.data import pipeline
from camri.preemption import StopRequest
from configs import folder as folder_config
from tests.data import test_folder_runs as folder_runs
from tests.feed_probe import seen_batches


def _prepared(config, workdir):
  config = prepare.prepare_run(config, str(workdir))
  return config, dataset_lib.open_dataset(config, workdir=str(workdir))


@pytest.fixture
def digits(digits_config, tmp_path):
  """(validated config, Dataset): digits at batch 8, 20 steps per epoch.

  160 training images (the rest held out as the validation split): an epoch has
  as many steps as batch 64 on the whole training split, and an eighth of its
  compute, which in float64 is most of the feeds' comparison's time.
  """
  digits_config.validation_fraction = 0.887
  digits_config.batch_size = 8
  digits_config.eval_batch_size = 100
  return _prepared(digits_config, tmp_path / "run")


@pytest.fixture
def folder(tmp_path):
  """(validated config, Dataset): an image folder of mixed sizes and kinds, resized to
  8x8 RGB (float32 on the devices), batch 4, 5 steps per epoch."""
  folder_runs.write_tree(tmp_path / "tree", ("train", "test"), stored_at_size=False, seed=5)
  config = folder_config.get_config(f"path={tmp_path / 'tree'},important=bee,size=8")
  config.update(data_dir=str(tmp_path / "tfds"), batch_size=4, eval_batch_size=6,
                progress_bar=False)
  return _prepared(config, tmp_path / "run")


@pytest.mark.parametrize("name, epoch, start_step",
                         [("digits", 0, 0), ("digits", 3, 5), ("folder", 2, 1)])
def test_epoch_order_is_the_order_tfdata_trains_in(name, epoch, start_step, request):
  """`pipeline.epoch_order` picks, from the decoded split, exactly tf.data's batches."""
  config, dataset = request.getfixturevalue(name)
  split = dataset.splits["train"]
  decoded = pipeline.decoded_split(dataset.builder, dataset.spec, split,
                                   image_size=dataset.image_size)
  order = pipeline.epoch_order(dataset.builder, split, local_size=len(decoded["label"]),
                               global_batch_size=config.batch_size, seed=7, epoch=epoch)
  batches = list(dataset.train_batches(global_batch_size=config.batch_size, seed=7,
                                       epoch=epoch, start_step=start_step))
  assert order.shape == (dataset.steps_per_epoch(config.batch_size), config.batch_size)
  assert len(batches) == len(order) - start_step
  for batch, rows in zip(batches, order[start_step:]):
    np.testing.assert_array_equal(batch["image"], feeds.to_float(decoded["image"][rows]))
    np.testing.assert_array_equal(batch["label"], decoded["label"][rows])
  # Stored as uint8 where nothing is resized (as_float gives them back bit for bit);
  # resized ones are kept as float32.
  assert decoded["image"].dtype == (np.uint8 if name == "digits" else np.float32)


def _in_float64(tree):
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _epoch(config, dataset, on_device, steps_per_call=0):
  """One epoch through a feed in float64: (calls' steps, (train sums, params), test
  Predictions)."""
  config = config.copy_and_resolve_references()
  config.steps_per_call = steps_per_call
  sharding = feeds.Sharding.over_all_devices()
  model, objective = train.make_model(config, dataset.num_classes)
  make_feed = lambda on_device: feeds.make_feed(
      config, dataset, sharding, train.make_train_step(objective, config.seed),
      train.make_eval_step(objective), on_device=on_device,
      runs=train.run_arrays(config, dataset.num_classes))
  state = train.create_train_state(config, model, dataset.image_shape)
  state = jax.device_put(_in_float64(state), sharding.replicated)
  sums = jax.device_put(_in_float64(train.empty_train_sums(dataset.num_classes)),
                        sharding.replicated)
  feed, calls = make_feed(on_device), []
  for steps, call in feed.train_calls(epoch=0, start_step=0):
    state, sums = call(state, sums)
    calls.append(steps)
  _, predictions = feed.evaluate(state, "test", keep_predictions=True)
  return calls, jax.device_get((sums, state.params)), predictions


def _checkpointed_and_resumed_on_the_device(config, dataset, workdir, stop_after, monkeypatch,
                                            capsys):
  """`_epoch`'s figures of `train.train_and_evaluate` in float64: the host feed stopped
  (SIGTERM, a checkpoint) after step `stop_after`, then the run resumed on the device feed.

  The resumed run shows its progress where stderr is not a terminal: one line, no
  carriage returns (camri/progress.py).
  """
  for module in (state_lib, train):
    real = module.create_train_state
    monkeypatch.setattr(module, "create_train_state",
                        lambda *args, real=real, **kwargs: _in_float64(real(*args, **kwargs)))
  empty = train.empty_train_sums
  monkeypatch.setattr(train, "empty_train_sums", lambda *args: _in_float64(empty(*args)))
  calls, stop, real_call_hooks = [], StopRequest(), train.call_hooks

  def call_hooks(*args, **kwargs):
    def stop_after_step(step, steps, sums):
      calls.append(steps)
      if step >= stop_after:
        stop.received_elsewhere(signal.SIGTERM)
      return False
    return [stop_after_step, *real_call_hooks(*args, **kwargs)]

  monkeypatch.setattr(train, "call_hooks", call_hooks)
  config = config.copy_and_resolve_references()
  config.update(num_epochs=1, steps_per_call=1, data_on_device="false")
  assert train.train_and_evaluate(config, str(workdir), stop) == []
  assert checkpoint.complete_steps(workdir) == [stop_after]
  capsys.readouterr()
  config.update(data_on_device="true", progress_bar=True)
  assert len(train.train_and_evaluate(config, str(workdir))) == 1
  out, err = capsys.readouterr()
  assert f"resuming from the checkpoint at step {stop_after}" in out
  steps = dataset.steps_per_epoch(config.batch_size)
  assert "\r" not in err and re.search(
      f"^epoch 1/1: step {steps}/{steps}, {steps - stop_after} steps in [\\d.]+ s, "
      r"loss \d\.\d{4}$", err, re.MULTILINE), err
  sharding = feeds.Sharding.over_all_devices()
  model, _ = train.make_model(config, dataset.num_classes)
  with checkpoint.manager(workdir, read_only=True) as manager:
    step, state, sums = train.restore_train_state(
        manager, config, model, dataset.image_shape, sharding.replicated,
        train.empty_train_sums(dataset.num_classes))
  assert step == steps
  saved = run_log.read_predictions(workdir, "test")
  return calls, jax.device_get((sums, state.params)), feeds.Predictions(
      saved["ids"], saved["labels"], saved["scores"])


@pytest.mark.parametrize("name", ["digits", "folder"])
def test_the_feeds_and_any_steps_per_call_train_alike(name, request, tmp_path, monkeypatch,
                                                      capsys):
  """tf.data, the device feed, and (digits) 1 or 7 steps per call: one epoch agrees;
  digits augmented (crop and flip), and also as a run stopped on the host feed after step
  9 (its checkpoint written) and resumed from that checkpoint on the device feed.

  The programs differ (a step alone, a step in a loop, float32 or uint8
  input), so XLA may order their sums differently. Compared in float64, as in
  test_train.py's one-vs-two-devices test, with u = 1.1e-16 and batch sums of
  at most 64 terms of size <= 10 (8 here): a gradient's round-off is
  |dg| <= 64 * 4u * 10 ~ 3e-13; Adam moves a parameter whose true gradient is ~0
  (a bias before a BatchNorm) by at most lr * |dg| / eps a step, so 20 steps part
  it by <= 2 * 20 * 1e-3 * 3e-13 / 1e-8 ~ 1.2e-6: atol 1e-5. Other parameters and the
  loss differ by round-off of their own sums, ~1e4 * u: rtol 1e-9.
  Evaluation scores are one forward pass of equal parameters, then rounded to
  the saved float32: they agree to float32's rounding, rtol 2^-22.
  """
  config, dataset = request.getfixturevalue(name)
  steps = dataset.steps_per_epoch(config.batch_size)
  if name == "digits":
    config = config.copy_and_resolve_references()
    config.augment = ("crop", "flip")  # configs/digits.py allows none; the feeds don't mind.
  with jax.enable_x64(True):
    runs = {"tf.data": _epoch(config, dataset, on_device=False),
            "device, 1 step per call": _epoch(config, dataset, on_device=True, steps_per_call=1)}
    if name == "digits":
      runs["device, 7 steps per call"] = _epoch(config, dataset, on_device=True,
                                                steps_per_call=7)
      runs["tf.data, checkpointed at step 9, resumed on the device"] = (
          _checkpointed_and_resumed_on_the_device(config, dataset, tmp_path / "resumed", 9,
                                                  monkeypatch, capsys))
  assert [calls for calls, _, _ in runs.values()] == [
      [1] * steps, [1] * steps, [7, 7, 6], [1] * steps][:len(runs)]
  _, (sums, params), predictions = runs.pop("tf.data")
  assert sums["loss_sum"].dtype == np.float64
  for name, (_, (other_sums, other_params), other_predictions) in runs.items():
    np.testing.assert_allclose(other_sums["loss_sum"], sums["loss_sum"], rtol=1e-9, err_msg=name)
    np.testing.assert_array_equal(other_sums["confusion"], sums["confusion"], err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-5),
                 other_params, params)
    np.testing.assert_array_equal(other_predictions.ids, predictions.ids)
    np.testing.assert_array_equal(other_predictions.labels, predictions.labels)
    np.testing.assert_allclose(other_predictions.scores, predictions.scores, rtol=2**-22,
                               atol=2**-24 * np.abs(predictions.scores).max())
  assert len(predictions.ids) == dataset.splits["test"].size


def _augmented_in_numpy(image, key, augmentations):
  """`feeds.augment` of one image, its geometry in NumPy from the same key's draws."""
  crop_key, flip_key = jax.random.split(key)
  height, width, _ = image.shape
  pad = max(1, height // 8)
  if "crop" in augmentations:
    top, left = np.asarray(jax.random.randint(crop_key, (2,), 0, 2 * pad + 1))
    image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))[top:top + height, left:left + width]
  if "flip" in augmentations and jax.random.bernoulli(flip_key):
    image = image[:, ::-1]
  return image


def test_device_augmentation_is_a_seeded_crop_and_flip():
  """crop: a window of the image padded by 1/8 of its side with zeros; flip: mirrored or not."""
  image = jnp.arange(16 * 16 * 2, dtype=jnp.float32).reshape(1, 16, 16, 2) + 1
  keys = jax.random.split(jax.random.key(0), 64)
  flipped = feeds.augment(jnp.repeat(image, 64, 0), keys, ("flip",))
  mirrored = jnp.all(flipped == image[:, :, ::-1], axis=(1, 2, 3))
  assert jnp.all(mirrored | jnp.all(flipped == image, axis=(1, 2, 3)))
  assert 16 < int(mirrored.sum()) < 48
  cropped = feeds.augment(jnp.repeat(image, 64, 0), keys, ("crop",))
  padded = np.pad(np.asarray(image[0]), ((2, 2), (2, 2), (0, 0)))
  offsets = set()
  for window in np.asarray(cropped):
    found = [(t, l) for t in range(5) for l in range(5)
             if np.array_equal(padded[t:t + 16, l:l + 16], window)]
    assert found
    offsets.add(found[0])
  assert len(offsets) > 10  # The offsets vary over the whole range, 0..4 each way.
  both = feeds.augment(jnp.repeat(image, 64, 0), keys, ("crop", "flip"))
  for augmented, key in zip(np.asarray(both), keys):
    np.testing.assert_array_equal(augmented,
                                  _augmented_in_numpy(np.asarray(image[0]), key, ("crop", "flip")))


def test_augmentation_and_dropout_draw_from_separate_streams():
  """Dropout's key of step s is fold_in(key(seed), s) (camri/state.py); no epoch's
  augmentation key is one derived from it."""
  examples = jnp.arange(4, dtype=jnp.int32)
  for epoch in range(3):
    dropout_key = jax.random.fold_in(jax.random.key(5), epoch)
    from_dropout = jax.vmap(lambda e: jax.random.fold_in(dropout_key, e))(examples)
    keys = feeds.augmentation_keys(5, epoch, examples)
    assert not np.any(np.all(jax.random.key_data(keys) == jax.random.key_data(from_dropout), -1))
  assert not np.array_equal(jax.random.key_data(feeds.augmentation_keys(5, 0, examples)),
                            jax.random.key_data(feeds.augmentation_keys(5, 1, examples)))


@pytest.mark.parametrize("name, epoch, start_step", [("digits", 2, 17), ("folder", 1, 2)])
def test_the_feeds_give_the_step_the_same_augmented_batches(name, epoch, start_step, request):
  """With crop and flip, bit for bit, mid-epoch too: each example as NumPy crops and flips
  it by the draws of its key, from (seed, epoch, example id)."""
  config, dataset = request.getfixturevalue(name)
  config = config.copy_and_resolve_references()
  config.augment = ("crop", "flip")
  host, device = (seen_batches(config, dataset, on_device, epoch, start_step)
                  for on_device in (False, True))
  assert len(host) == len(device) == dataset.steps_per_epoch(config.batch_size) - start_step
  for a, b in zip(host, device):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  split = dataset.splits["train"]
  decoded = pipeline.decoded_split(dataset.builder, dataset.spec, split,
                                   image_size=dataset.image_size)
  order = pipeline.epoch_order(dataset.builder, split, local_size=len(decoded["label"]),
                               global_batch_size=config.batch_size, seed=config.seed,
                               epoch=epoch)
  rows = order[start_step]
  keys = feeds.augmentation_keys(config.seed, epoch, jnp.asarray(rows, jnp.int32))
  stored = np.asarray(feeds.to_float(decoded["image"][rows]))
  expected = [_augmented_in_numpy(image, key, config.augment) for image, key in zip(stored, keys)]
  np.testing.assert_array_equal(device[0]["image"], np.stack(expected))
  np.testing.assert_array_equal(device[0]["label"], decoded["label"][rows])
  # Augmented: most images moved or mirrored.
  changed = [not np.array_equal(a, b) for a, b in zip(device[0]["image"], stored)]
  assert sum(changed) > len(rows) // 2


def test_auto_decides_in_every_process_alike(digits, monkeypatch):
  """"auto" decides anew at each start (a resumed run's too), one answer for all
  processes: the devices only where every process's share fits."""
  config, dataset = digits
  config = config.copy_and_resolve_references()
  config.data_on_device = "auto"
  assert feeds.fits_on_devices(dataset) and train.data_on_device(config, dataset)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.stack([x, np.zeros_like(x)]))  # The other does not fit.
  assert not train.data_on_device(config, dataset)
  config.data_on_device = "true"
  assert train.data_on_device(config, dataset)


def test_evaluation_is_a_call_per_batch_on_cpu_and_copies_scores_only_when_kept(
    digits, monkeypatch):
  """With 7 steps per call, on CPU each test batch is its own call (XLA:CPU loops slowly);
  where a split is one call (GPU, TPU), its scores leave the devices only when kept."""
  config, dataset = digits
  config = config.copy_and_resolve_references()
  config.steps_per_call = 7
  sharding = feeds.Sharding.over_all_devices()
  model, objective = train.make_model(config, dataset.num_classes)
  state = jax.device_put(train.create_train_state(config, model, dataset.image_shape),
                         sharding.replicated)

  def feed_and_calls():
    feed = feeds.make_feed(config, dataset, sharding,
                           train.make_train_step(objective, config.seed),
                           train.make_eval_step(objective), on_device=True,
                           runs=train.run_arrays(config, dataset.num_classes))
    calls, evaluate = [], feed._eval  # pylint: disable=protected-access
    feed._eval = lambda *args: (calls.append(args[3]), evaluate(*args))[1]  # pylint: disable=protected-access
    return feed, calls

  feed, calls = feed_and_calls()
  feed.evaluate(state, "test", keep_predictions=False)
  assert calls == [0, 1, 2, 3]  # 360 test images, eval batch 100: a call per batch.
  monkeypatch.setattr(feeds, "evaluates_in_one_call", lambda *args: True)
  feed, calls = feed_and_calls()
  copied = []
  for name in ("local_rows", "local_columns"):
    monkeypatch.setattr(feeds, name, lambda x, name=name: copied.append(name))
  sums, predictions = feed.evaluate(state, "test", keep_predictions=False)
  assert calls == [None] and predictions is None and not copied
  assert int(np.sum(jax.device_get(sums["count"]))) == 360
