"""Training: evaluation and the epoch loop, of one run or of a population.

The step (camri/state.py) is written once for the global batch and compiled
with `jax.jit` over the device mesh (`feeds.Sharding`): the batch is sharded
over every device of every host, the state is replicated, and XLA inserts the
gradient all-reduce (and the cross-device BatchNorm statistics). The result
does not depend on the device count, and dropout keys are `fold_in(seed,
step)`, so a resumed run repeats an uninterrupted one. A population's members
(camri/members.py) go through the same loop, their states stacked.

Stopping: SIGTERM or SIGINT finishes the current step, writes a checkpoint
(with the epoch's metric sums, so the epoch can be resumed mid-way) and
returns; a second signal exits at once. A NaN or Inf loss or state raises
`NonFiniteLossError` before anything non-finite is saved, a prepared data file
that cannot be read `pipeline.DamagedDataError`. The checkpoint being written is waited
for on every way out (a failed write surfaces there, or at the next save, as
orbax or tensorstore's error; `run_log.write_failure` reads it).
"""

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

from camri import checkpoint
from camri import config_lib
from camri import feeds
from camri import metrics
from camri import progress
from camri import run_log
from camri import trunk
from camri.data import dataset as dataset_lib
from camri.data.dataset import Dataset
from camri.feeds import Predictions
from camri.feeds import Sharding
from camri.members import Members
from camri.preemption import StopRequest
from camri.state import (TrainState, abstract_train_state, create_train_state,  # noqa: F401  (train.X for every caller)
                         empty_train_sums, make_eval_step, make_model, make_optimizer,
                         make_train_step, restore_train_state, run_arrays)


# A run on a frozen trunk's output computed once (camri/trunk.py) saves its checkpoints at
# most this often, and at its end or a stop: its checkpoint holds the whole model, mostly
# the trunk that its epochs never change, and writing it costs more than such an epoch.
FEATURES_CHECKPOINT_INTERVAL_S = 60


class NonFiniteLossError(RuntimeError):
  """The training loss or the train state became NaN or Inf."""


def restore_or_init(config, model, dataset: Dataset, sharding: Sharding,
                    manager, up_to: int | None = None) -> tuple[int, TrainState, Any]:
  """(step, state, the epoch's train metric sums) of the newest intact checkpoint, or a new run's.

  Parameters are only initialised (a compile of their own) for a new run.

  Raises:
    checkpoint.UnreadableCheckpointError: there are checkpoints but none restores.
  """
  sums = jax.device_put(empty_train_sums(dataset.num_classes), sharding.replicated)
  restored = restore_train_state(manager, config, model, dataset.image_shape,
                                 sharding.replicated, sums, delete_unreadable=True, up_to=up_to)
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


def evaluate_splits(feed, state, step, members: Members, save: bool,
                    splits=None) -> list[dict[str, float]]:
  """Each run's metrics of every split in `dataset.eval_splits` (or `splits`); with `save`,
  their predictions saved too.

  The one evaluation of a run, for every split: the per-epoch metrics and the
  saved predictions come from the same pass.
  """
  rows = [{} for _ in range(members.count)]
  for split in feed.dataset.eval_splits if splits is None else splits:
    sums, predictions = feed.evaluate(state, split, keep_predictions=save)
    sums = members.each(sums)
    for member in members.live:
      rows[member] |= metrics.summarize(sums[member],
                                        members.configs[member].loss.important_classes, split,
                                        per_class=True)
      if save:
        with members.guard(member):
          save_predictions(members.workdirs[member], split,
                           predictions.of_member(member) if members.stacked else predictions,
                           step)
  return rows


def missing_predictions(dataset: Dataset, step: int, members: Members) -> list[str]:
  """The evaluated splits whose predictions file, of any live run, is missing or not from `step`.

  For a rerun of a finished run only: the files it reads are not being
  written, so every process decides alike whether to evaluate (a collective).
  """
  return [split for split in dataset.eval_splits
          if any(saved is None or int(saved["step"]) != step
                 for saved in (run_log.read_predictions(members.workdirs[member], split)
                               for member in members.live))]


def save_checkpoints(members: Members, step: int, state, train_sums):
  """Starts writing every live run's checkpoint of `step`."""
  states, sums = members.each(state), members.each(train_sums)
  for member in members.live:
    with members.guard(member):
      checkpoint.save(members.managers[member], step, states[member], sums[member])


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


def _check_finite(train_sums, step, last_saved, members: Members):
  """Fails each run whose loss or state became NaN or Inf (a single run raises)."""
  for member, bad_steps in members.nonfinite(train_sums):
    kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved
            else "no checkpoint was saved")
    members.fail(member, NonFiniteLossError(
        f"the training loss or state became NaN or Inf at step {step - bad_steps + 1}; "
        f"stopped without saving it, {kept}: lower config.learning_rate or check the data"),
                 status=3)


def train_epoch(state, sums, step, calls, hooks):
  """Runs `calls` (`feeds.Call`s); after each, every hook(step, steps, sums) runs, and any
  returning True stops."""
  for steps, call in calls:
    state, sums = call(state, sums)
    step += steps
    if any([hook(step, steps, sums) for hook in hooks]):  # A list: every hook runs.
      break
  return state, sums, step


def call_hooks(stop: StopRequest, every: int, last_saved: int, bar,
               members: Members):
  """After each call: the progress bar; the finite check and the stop poll every `every` steps;
  a stop once no run is left."""

  def due(step, steps):
    return step // every != (step - steps) // every

  def progress(step, steps, sums):
    bar.update(steps)
    if due(step, steps):
      _check_finite(sums, step, last_saved, members)
    if due(step, steps) and members.live:
      loss = np.ravel(jax.device_get(sums["loss_sum"] / sums["count"]))[members.live]
      bar.set_postfix(loss=f"{float(np.mean(loss)):.4f}")
    return not members.live

  return [progress, lambda step, steps, sums: _stop_now(stop, due(step, steps))]


def describe_run(config, dataset: Dataset, steps_per_epoch: int, feed, members: Members,
                 features: trunk.TrunkFeatures | None = None) -> str:
  """The run's first line: devices, processes, batch, split sizes, steps per epoch, the feed,
  a population's size, and how a frozen trunk's output is had (`features`)."""
  devices = jax.devices()
  per_device = config.batch_size // len(devices)
  population = f"; a population of {members.count} runs" if members.stacked else ""
  return (f"{len(devices)} x {devices[0].device_kind}, {jax.process_count()} process"
          f"{'es' if jax.process_count() > 1 else ''}; batch {config.batch_size} "
          f"({per_device} per device); {config.dataset}: {dataset.describe()}; "
          f"{steps_per_epoch} steps per epoch; {feed.describe()}{population}"
          + (f"; {features.line}" if features is not None else ""))


class _MembersApart(Exception):
  """A population's members restored different steps: they train apart, in these groups."""

  def __init__(self, groups: list[list[int]]):
    super().__init__(groups)
    self.groups = groups


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
  return train_runs([config], [workdir], stop)[0]


def train_runs(configs, workdirs, stop: StopRequest | None = None,
               population: bool = False) -> list[list[dict]]:
  """`train_and_evaluate` of one run, or of a `population`: runs whose configs differ only
  in `config_fields.member_fields`, trained together in one program (camri/members.py).

  A population's finished members are left be while the others train; members
  that restore different steps train apart, a group per step, one after the
  other. Returns each run's metrics.csv rows.
  """
  stop = stop if stop is not None else StopRequest()
  rows = [run_log.read_metrics(w) for w in workdirs]
  groups = [list(range(len(configs)))]
  if population:
    unfinished = [i for i, w in enumerate(workdirs) if not run_log.is_finished(w)]
    groups = [unfinished] if unfinished else groups
  while groups:
    group = groups.pop(0)
    try:
      trained = _train([configs[i] for i in group], [workdirs[i] for i in group], stop,
                       population)
    except _MembersApart as apart:
      groups = [[group[i] for i in part] for part in apart.groups] + groups
      continue
    for i, member_rows in zip(group, trained):
      rows[i] = member_rows
  return rows


def _train(configs, workdirs, stop: StopRequest, population: bool) -> list[list[dict]]:
  config = configs[0]
  dataset = dataset_lib.open_dataset(config, workdir=workdirs[0])
  steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  members = Members(configs, workdirs, steps_per_epoch, population)
  sharding = Sharding.over_all_devices(members.count if members.stacked else 0)
  model, objective = make_model(config, dataset.num_classes)
  main_process = jax.process_index() == 0
  with members.opened():
    step, state, train_sums = _restore_or_init(members, model, dataset, sharding)
    restored_step = step
    lost = missing_predictions(dataset, step, members) if step == total_steps else []
    if step == total_steps and not lost:  # Finished: no feed, which would decode the data.
      return [log.rows for log in members.logs]
    state, features = trunk.features_for(config, dataset, model, state, members)
    feed = feeds.make_feed(config, dataset, sharding, make_train_step(objective, config.seed),
                           make_eval_step(objective),
                           on_device=data_on_device(config, dataset, members.count),
                           runs=members.stack([run_arrays(c, dataset.num_classes)
                                               for c in configs]),
                           split_arrays=features and features.arrays)
    _say(describe_run(config, dataset, steps_per_epoch, feed, members, features), main_process)
    if step:
      _say(f"resuming from the checkpoint at step {step} (epoch {step // steps_per_epoch} "
           f"of {config.num_epochs} done)", main_process)
      if config.data_on_device == "auto":
        _say("data_on_device=auto decided anew on resuming (either feed trains the same batches)",
             main_process)
    for log in members.logs:
      log.truncate(step // steps_per_epoch)
    last_saved, saved_at = step, time.monotonic()
    save_every_s = FEATURES_CHECKPOINT_INTERVAL_S if features and features.arrays else 0
    check_every = max(1, min(50, steps_per_epoch // 4))
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      if _stop_now(stop) or not members.live:
        break
      if step == epoch * steps_per_epoch:
        train_sums = _empty_sums(members, dataset.num_classes, sharding)
      done_in_epoch = step - epoch * steps_per_epoch
      with _progress_bar(config, epoch, done_in_epoch, steps_per_epoch, main_process) as bar:
        state, train_sums, step = train_epoch(
            state, train_sums, step, feed.train_calls(epoch, done_in_epoch),
            call_hooks(stop, check_every, last_saved, bar, members))
      _check_finite(train_sums, step, last_saved, members)
      if step == (epoch + 1) * steps_per_epoch:
        rows = evaluate_splits(feed, state, step, members, save=step == total_steps)
        sums = members.each(train_sums)
        for member in members.live:
          with members.guard(member):
            members.logs[member].write(epoch + 1, metrics.summarize(
                sums[member], configs[member].loss.important_classes, "train") | rows[member],
                step)
      if step != last_saved and _save_due(saved_at, save_every_s):
        save_checkpoints(members, step, state, train_sums)
        last_saved, saved_at = step, time.monotonic()
    if step != last_saved:  # The end, or a stop, between two saves of `save_every_s`.
      save_checkpoints(members, step, state, train_sums)
      last_saved = step
    if restored_step == total_steps:  # A rerun of a finished run: remake lost predictions.
      evaluate_splits(feed, state, step, members, save=True, splits=lost)
  if stop and step < total_steps:
    logging.warning("%s received: stopped at step %d of %d; %s", stop.signal, step,
                    total_steps, f"checkpoint saved at step {last_saved}" if last_saved
                    else "nothing trained yet, no checkpoint")
  return [log.rows for log in members.logs]


def _restore_or_init(members: Members, model, dataset: Dataset, sharding: Sharding):
  """`restore_or_init` of every run, stacked in a population.

  Raises:
    _MembersApart: a population's members restored different steps.
  """
  # A population resumes from the newest step every member saved (a member may have
  # saved a step the others did not when the process was killed), but for members
  # that failed before: they stopped apart, and train apart.
  failed = [run_log.read_failure(w) is not None for w in members.workdirs]
  saved = [set(checkpoint.complete_steps(w)) for w, f in zip(members.workdirs, failed) if not f]
  common = max(set.intersection(*saved), default=0) if members.stacked and saved else None
  restored = [restore_or_init(config, model, dataset, sharding, manager,
                              up_to=None if gone else common)
              for config, manager, gone in zip(members.configs, members.managers, failed)]
  steps = [step for step, _, _ in restored]
  if len(set(steps)) > 1:
    raise _MembersApart([[i for i, s in enumerate(steps) if s == step]
                         for step in sorted(set(steps))])
  for workdir in members.workdirs if jax.process_index() == 0 else ():
    run_log.clear_failure(workdir)
  # One optimiser for all: each run's learning rate is in its state (`make_optimizer`).
  states = [state.replace(tx=restored[0][1].tx) for _, state, _ in restored]
  return (steps[0], jax.device_put(members.stack(states), sharding.state),
          jax.device_put(members.stack([sums for *_, sums in restored]), sharding.state))


def _empty_sums(members: Members, num_classes: int, sharding: Sharding):
  return jax.device_put(members.stack([empty_train_sums(num_classes)] * members.count),
                        sharding.state)


def data_on_device(config, dataset: Dataset, runs: int = 1) -> bool:
  """Whether the data of `runs` runs of `config` (a population of them, if several) is fed
  from device memory (`config.data_on_device`).

  "auto" decides at every start, a resumed run's too (the feeds give the
  same batches, so a run may switch), all processes alike: the devices where
  the data fits in every process's. A population's data is on the devices,
  and so are a frozen trunk's features where they replace the images
  (`trunk.features_replace_images`).

  Raises:
    ConfigError: a population's data cannot be on the devices.
  """
  if trunk.features_replace_images(config, make_model(config, dataset.num_classes)[0]):
    return True
  if config.data_on_device == "auto":
    on_device = _in_every_process(feeds.fits_on_devices(dataset, runs=runs))
  else:
    on_device = config.data_on_device == "true"
  if runs > 1 and not on_device:
    raise config_lib.ConfigError(
        f"config.data_on_device={config.data_on_device!r} is invalid for a population of "
        f"{runs} runs: its data must fit on the devices (a quarter of their memory); "
        "use a smaller population, or train the runs alone")
  return on_device


def _save_due(saved_at: float, every_s: float) -> bool:
  """Whether `every_s` seconds have passed since `saved_at` (time.monotonic), in every process
  alike (a collective, where `every_s` is not 0)."""
  return not every_s or _in_every_process(time.monotonic() - saved_at >= every_s)


def _in_every_process(true: bool) -> bool:
  """Whether `true` holds in every process: one answer for all (a collective)."""
  if jax.process_count() == 1:
    return true
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.min(multihost_utils.process_allgather(np.int32(true))))


def _progress_bar(config, epoch: int, initial: int, steps_per_epoch: int, main_process: bool):
  return progress.epoch_progress(steps_per_epoch, initial,
                                 f"epoch {epoch + 1}/{config.num_epochs}",
                                 enabled=config.progress_bar and main_process)


def _say(text: str, main_process: bool):
  if main_process:
    tqdm.tqdm.write(text)
