"""Training: state, the data-parallel step, evaluation and the epoch loop.

The step is written once for the global batch and compiled with `jax.jit` over
a 1-D device mesh ("data"): the batch is sharded over every device of every
host, the state is replicated, and XLA inserts the gradient all-reduce (and
the cross-device BatchNorm statistics). The result does not depend on the
device count, and dropout keys are `fold_in(seed, step)`, so a resumed run
repeats an uninterrupted one.

Stopping: SIGTERM or SIGINT finishes the current step, writes a checkpoint
(with the epoch's metric sums, so the epoch can be resumed mid-way) and
returns; a second signal exits at once. A NaN or Inf loss or state raises
`NonFiniteLossError` before anything non-finite is saved, a prepared data file
that cannot be read `pipeline.DamagedDataError`. The checkpoint being written is waited
for on every way out (a failed write surfaces there, or at the next save, as
orbax or tensorstore's error; `run_log.write_failure` reads it).
"""

import contextlib
import dataclasses
from typing import Any

from absl import logging
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from camri import checkpoint
from camri import config_lib
from camri import feeds
from camri import metrics
from camri import models
from camri import objectives
from camri import run_log
from camri.data import dataset as dataset_lib
from camri.data.dataset import Dataset
from camri.feeds import Predictions
from camri.feeds import Sharding
from camri.objectives import Objective
from camri.preemption import StopRequest


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(RuntimeError):
  """The training loss or the train state became NaN or Inf."""


def make_optimizer(config) -> optax.GradientTransformation:
  """config.optimizer at config.learning_rate; the backbone's trunk frozen or at its own rate.

  With config.freeze_backbone or config.backbone_learning_rate, the trunk's
  parameters ("trunk" of `models.param_groups`) get no update or their own
  optimiser; the feature layer and the head keep config.learning_rate.
  """
  new_layers = _optimizer(config, config.learning_rate)
  if config.get("freeze_backbone"):
    trunk = optax.set_to_zero()
  elif config.get("backbone_learning_rate") is not None:
    trunk = _optimizer(config, config.backbone_learning_rate)
  else:
    return new_layers
  return optax.multi_transform({"trunk": trunk, "new": new_layers}, models.param_groups)


def _optimizer(config, learning_rate) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(learning_rate, eps=config.adam_eps)
  return optax.sgd(learning_rate, momentum=0.9, nesterov=True)


def make_model(config, num_classes: int) -> tuple[nn.Module, Objective]:
  objective = objectives.make_objective(
      config.loss, num_classes, head_kernel_init=models.HEAD_KERNEL_INITS.get(config.model))
  backbone = models.get_backbone(
      config.model, config.feature_dim, config.conv_weight_grad,
      frozen_trunk=config.get("freeze_backbone", False),
      resnet_padding=config.get("resnet_padding", "torchvision"))
  return models.Classifier(backbone, objective.head,
                           config.get("input_normalization") or "none"), objective


def create_train_state(config, model, image_shape, load_init_checkpoint=True) -> TrainState:
  """Parameters initialised from `config.seed` (and `config.init_checkpoint`).

  The step is an int32 array, not a weakly typed 0, so that a new run and one
  restored from a checkpoint compile the same train step.
  """
  variables = jax.jit(model.init, static_argnames="train")(
      jax.random.key(config.seed), jnp.zeros((1, *image_shape), jnp.float32),
      train=False)
  if load_init_checkpoint and config.get("init_checkpoint"):
    variables = models.load_backbone(variables, config.init_checkpoint, config.model)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), tx=make_optimizer(config))
  return state.replace(step=jnp.zeros((), jnp.int32))


def abstract_train_state(config, model, image_shape,
                         sharding: jax.sharding.Sharding) -> TrainState:
  """`create_train_state`'s shapes and dtypes, placed by `sharding`, to restore into.

  Nothing is initialised or compiled, and config.init_checkpoint is not read:
  a run restores without the weights it started from.
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(lambda: create_train_state(config, model, image_shape,
                                                load_init_checkpoint=False)))


def make_train_step(objective: Objective, seed: int):
  """(state, sums, batch) -> (state, sums): one optimiser step on the global batch."""

  def train_step(state: TrainState, sums, batch):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    mask = batch["mask"]

    def loss_fn(params):
      outputs, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"],
          train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      per_example = objective.loss(outputs, batch["label"], batch["mask"])
      return jnp.sum(per_example * mask) / jnp.sum(mask), (outputs, per_example, updates)

    grads, (outputs, per_example, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
    step_sums = metrics.batch_sums(per_example, objective.scores(outputs),
                                   batch["label"], mask, outputs.get("cosine"))
    # Counts steps, not examples: once non-finite, the state stays so, and the
    # first bad step is the current one minus this count plus one.
    nonfinite = jnp.any(~jnp.isfinite(per_example) & (mask > 0)) | ~_all_finite(state)
    step_sums["nonfinite"] = nonfinite.astype(jnp.float32)
    return state, metrics.add(sums, step_sums)

  return train_step


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_eval_step(objective: Objective):
  """(state, sums, batch) -> (sums, scores): the batch's metric sums and (N, K) prediction scores."""

  def eval_step(state: TrainState, sums, batch):
    outputs = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"], train=False)
    per_example = objective.loss(outputs, batch["label"], batch["mask"])
    scores = objective.scores(outputs)
    return metrics.add(sums, metrics.batch_sums(
        per_example, scores, batch["label"], batch["mask"], outputs.get("cosine"))), scores

  return eval_step


def empty_train_sums(num_classes):
  return {**metrics.empty(num_classes), "nonfinite": jnp.zeros((), jnp.float32)}


def restore_or_init(config, model, dataset: Dataset, sharding: Sharding,
                    manager) -> tuple[int, TrainState, Any]:
  """(step, state, the epoch's train metric sums) of the newest intact checkpoint, or a new run's.

  Parameters are only initialised (a compile of their own) for a new run.

  Raises:
    checkpoint.UnreadableCheckpointError: there are checkpoints but none restores.
  """
  sums = jax.device_put(empty_train_sums(dataset.num_classes), sharding.replicated)
  restored = checkpoint.restore_latest(
      manager, abstract_train_state(config, model, dataset.image_shape, sharding.replicated),
      sums, delete_unreadable=True)
  if restored is not None:
    return restored
  state = create_train_state(config, model, dataset.image_shape)
  return 0, jax.device_put(state, sharding.replicated), sums


def save_predictions(workdir, split: str, predictions: Predictions, step: int):
  """predictions/<split>.npz, stamped with `step`.

  With several processes, each writes its part and process 0 joins them once
  all have (after a barrier).
  """
  several = jax.process_count() > 1
  run_log.write_predictions(workdir, split, {**dataclasses.asdict(predictions), "step": step},
                            part=jax.process_index() if several else None)
  if several:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"predictions {split}")
    if jax.process_index() == 0:
      run_log.merge_prediction_parts(workdir, split, jax.process_count())


def evaluate_splits(feed, state, step, config, workdir, save: bool) -> dict[str, float]:
  """The metrics of every split in `dataset.eval_splits`; with `save`, their predictions saved too.

  The one evaluation of a run, for every split: the per-epoch metrics and the
  saved predictions come from the same pass.
  """
  row = {}
  for split in feed.dataset.eval_splits:
    sums, predictions = feed.evaluate(state, split, keep_predictions=save)
    row |= metrics.summarize(sums, config.loss.important_classes, split, per_class=True)
    if save:
      save_predictions(workdir, split, predictions, step)
  return row


def save_missing_predictions(feed, state, step, workdir):
  """Saves the predictions of every evaluated split whose file is missing or not from `step`.

  For a rerun of a finished run only: the files it reads are not being
  written, so every process decides alike whether to evaluate (a collective).
  """
  for split in feed.dataset.eval_splits:
    saved = run_log.read_predictions(workdir, split)
    if saved is None or int(saved["step"]) != step:
      _, predictions = feed.evaluate(state, split, keep_predictions=True)
      save_predictions(workdir, split, predictions, step)


def _stop_now(stop: StopRequest, due: bool = True) -> bool:
  """Whether to stop now.

  With several processes, they compare their signals when `due` (alike in
  every process), so all stop at the same step, and each takes on a signal
  another one received (a preemption notice may reach only one host), so all
  exit alike.
  """
  if jax.process_count() == 1:
    return bool(stop)
  if not due:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  received = multihost_utils.process_allgather(np.int32(stop.number))
  if np.any(received):
    stop.received_elsewhere(int(np.max(received)))
  return bool(stop)


def _check_finite(train_sums, step, last_saved):
  bad_steps = int(jax.device_get(train_sums["nonfinite"]))
  if bad_steps:
    kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved
            else "no checkpoint was saved")
    raise NonFiniteLossError(
        f"the training loss or state became NaN or Inf at step {step - bad_steps + 1}; "
        f"stopped without saving it, {kept}: lower config.learning_rate or check the data")


def train_epoch(state, sums, step, calls, hooks):
  """Runs `calls` (`feeds.Call`s); after each, every hook(step, steps, sums) runs, and any
  returning True stops."""
  for steps, call in calls:
    state, sums = call(state, sums)
    step += steps
    if any([hook(step, steps, sums) for hook in hooks]):  # A list: every hook runs.
      break
  return state, sums, step


def call_hooks(stop: StopRequest, every: int, last_saved: int, bar: tqdm.tqdm):
  """After each call: the progress bar; the finite check and the stop poll every `every` steps."""

  def due(step, steps):
    return step // every != (step - steps) // every

  def progress(step, steps, sums):
    bar.update(steps)
    if due(step, steps):
      _check_finite(sums, step, last_saved)
      bar.set_postfix(loss=f"{float(sums['loss_sum'] / sums['count']):.4f}")

  return [progress, lambda step, steps, sums: _stop_now(stop, due(step, steps))]


def describe_run(config, dataset: Dataset, steps_per_epoch: int, feed) -> str:
  """The run's first line: devices, processes, batch, split sizes, steps per epoch, the feed."""
  devices = jax.devices()
  per_device = config.batch_size // len(devices)
  return (f"{len(devices)} x {devices[0].device_kind}, {jax.process_count()} process"
          f"{'es' if jax.process_count() > 1 else ''}; batch {config.batch_size} "
          f"({per_device} per device); {config.dataset}: {dataset.describe()}; "
          f"{steps_per_epoch} steps per epoch; {feed.describe()}")


@contextlib.contextmanager
def run_resources(config, workdir, steps_per_epoch: int):
  """A run's checkpoint manager and metrics log, closed on every way out.

  Closing the manager waits for the checkpoint being written; a write that
  failed in the background raises there (or at the next save), with an error
  raised meanwhile as its context, for `run_log.write_failure` to read. A run
  ending in an error keeps only the metrics.csv rows its complete checkpoints
  hold (as its resume would): a failed save of the last epoch's checkpoint
  does not leave the run looking finished.
  """
  manager = checkpoint.manager(workdir, config.keep_checkpoints)
  log = run_log.MetricsLog(workdir, enabled=jax.process_index() == 0,
                           num_epochs=config.num_epochs)
  failed = True
  try:
    yield manager, log
    failed = False
  finally:
    try:
      manager.close()
    except BaseException:
      failed = True
      raise
    finally:
      if failed:
        _forget_unsaved_epochs(log, workdir, steps_per_epoch)
      log.close()


def _forget_unsaved_epochs(log: run_log.MetricsLog, workdir, steps_per_epoch: int):
  saved = max(checkpoint.complete_steps(workdir), default=0)
  try:
    log.truncate(saved // steps_per_epoch)
  except OSError:  # The disk is full: the next run drops those rows when it resumes.
    pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop: StopRequest | None = None) -> list[dict[str, float]]:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint.

  Every epoch ends with one row of metrics.csv: the epoch's train metrics and
  an evaluation of every split in `Dataset.eval_splits`; the last epoch's
  evaluation also writes predictions/<split>.npz (again if missing, when rerun).

  Args:
    config: a validated config (important classes as indices).
    workdir: the run directory.
    stop: set (by the caller's signal handler, `StopRequest.install`) to
      checkpoint and return early.

  Returns:
    metrics.csv's rows so far.

  Raises:
    NonFiniteLossError: the loss or the state became NaN or Inf; nothing
      non-finite was saved.
    checkpoint.UnreadableCheckpointError: the run has checkpoints, but none
      restores.
    pipeline.DamagedDataError: a file of the prepared dataset cannot be read.
  """
  stop = stop if stop is not None else StopRequest()
  dataset = dataset_lib.open_dataset(config, workdir=workdir)
  steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  sharding = Sharding.over_all_devices()
  model, objective = make_model(config, dataset.num_classes)
  main_process = jax.process_index() == 0
  with run_resources(config, workdir, steps_per_epoch) as (manager, log):
    step, state, train_sums = restore_or_init(config, model, dataset, sharding, manager)
    restored_step = step
    feed = feeds.make_feed(config, dataset, sharding, make_train_step(objective, config.seed),
                           make_eval_step(objective),
                           on_device=data_on_device(config, dataset, workdir, step))
    _say(describe_run(config, dataset, steps_per_epoch, feed), main_process)
    if step:
      _say(f"resuming from the checkpoint at step {step} (epoch {step // steps_per_epoch} "
           f"of {config.num_epochs} done)", main_process)
    log.truncate(step // steps_per_epoch)
    last_saved = step
    check_every = max(1, min(50, steps_per_epoch // 4))
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      if _stop_now(stop):
        break
      if step == epoch * steps_per_epoch:
        train_sums = jax.device_put(empty_train_sums(dataset.num_classes), sharding.replicated)
      done_in_epoch = step - epoch * steps_per_epoch
      with _progress_bar(config, epoch, done_in_epoch, steps_per_epoch, main_process) as bar:
        state, train_sums, step = train_epoch(
            state, train_sums, step, feed.train_calls(epoch, done_in_epoch),
            call_hooks(stop, check_every, last_saved, bar))
      _check_finite(train_sums, step, last_saved)
      if step == (epoch + 1) * steps_per_epoch:
        row = metrics.summarize(train_sums, config.loss.important_classes, "train")
        row |= evaluate_splits(feed, state, step, config, workdir, save=step == total_steps)
        log.write(epoch + 1, row, step)
      if step != last_saved:
        checkpoint.save(manager, step, state, train_sums)
        last_saved = step
    if restored_step == total_steps:  # A rerun of a finished run: remake lost predictions.
      save_missing_predictions(feed, state, step, workdir)
  if stop and step < total_steps:
    logging.warning("%s received: stopped at step %d of %d; %s", stop.signal, step,
                    total_steps, f"checkpoint saved at step {last_saved}" if last_saved
                    else "nothing trained yet, no checkpoint")
  return log.rows


def data_on_device(config, dataset: Dataset, workdir, step: int) -> bool:
  """Whether the run's data is fed from device memory (`config.data_on_device`).

  A resumed run keeps the choice it started with ("auto" may decide otherwise
  on another machine, and the two feeds augment differently); runs from
  before the device feed used tf.data.

  Raises:
    ConfigError: `config.data_on_device` asks for the other feed than the
      resumed run's, and the run augments.
  """
  recorded = (run_log.read_data_on_device(workdir) or False) if step else None
  if config.data_on_device == "auto":
    chosen = recorded if recorded is not None else feeds.fits_on_devices(dataset)
  else:
    chosen = config.data_on_device == "true"
    if recorded is not None and chosen != recorded and config.augment:
      raise config_lib.ConfigError(
          f"config.data_on_device={config.data_on_device!r} is invalid: this run started "
          f"with data_on_device={str(recorded).lower()} and augments, which the two feeds do "
          "differently; resume with that value (or 'auto'), or use a new --workdir")
  if not step and jax.process_index() == 0:
    run_log.write_data_on_device(workdir, chosen)
  return chosen


def _progress_bar(config, epoch: int, initial: int, steps_per_epoch: int, main_process: bool):
  return tqdm.tqdm(total=steps_per_epoch, initial=initial,
                   disable=not (config.progress_bar and main_process), leave=False,
                   desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step", dynamic_ncols=True)


def _say(text: str, main_process: bool):
  if main_process:
    tqdm.tqdm.write(text)
