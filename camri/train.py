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
`NonFiniteLossError` before anything non-finite is saved. The checkpoint being
written is waited for on every way out.
"""

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
from camri import data as data_lib
from camri import metrics
from camri import models
from camri import objectives
from camri import run_log
from camri.data import pipeline
from camri.objectives import Objective
from camri.preemption import StopRequest


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(RuntimeError):
  """The training loss or the train state became NaN or Inf."""


def make_optimizer(config) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    return optax.adam(config.learning_rate, eps=config.adam_eps)
  return optax.sgd(config.learning_rate, momentum=0.9, nesterov=True)


def make_model(config, num_classes: int) -> tuple[nn.Module, Objective]:
  objective = objectives.make_objective(
      config.loss, num_classes, head_kernel_init=models.HEAD_KERNEL_INITS.get(config.model))
  backbone = models.get_backbone(config.model, config.feature_dim)
  return models.Classifier(backbone, objective.head), objective


def create_train_state(config, model, image_shape) -> TrainState:
  """Parameters initialised from `config.seed` (and `config.init_checkpoint`).

  The step is an int32 array, not a weakly typed 0, so that a new run and one
  restored from a checkpoint compile the same train step.
  """
  variables = jax.jit(model.init, static_argnames="train")(
      jax.random.key(config.seed), jnp.zeros((1, *image_shape), jnp.float32),
      train=False)
  if config.get("init_checkpoint"):
    variables = models.load_backbone(variables, config.init_checkpoint)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), tx=make_optimizer(config))
  return state.replace(step=jnp.zeros((), jnp.int32))


def abstract_train_state(config, model, image_shape,
                         sharding: jax.sharding.Sharding) -> TrainState:
  """`create_train_state`'s shapes and dtypes, placed by `sharding`, to restore into.

  Nothing is initialised or compiled.
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(lambda: create_train_state(config, model, image_shape)))


def make_train_step(objective: Objective, seed: int):
  """(state, sums, batch) -> (state, sums): one optimiser step on the global batch."""

  def train_step(state: TrainState, sums, batch):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    mask = batch["mask"]

    def loss_fn(params):
      outputs, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"],
          train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      per_example = objective.loss(outputs, batch["label"])
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

  def eval_step(state: TrainState, sums, batch):
    outputs = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"], train=False)
    per_example = objective.loss(outputs, batch["label"])
    return metrics.add(sums, metrics.batch_sums(
        per_example, objective.scores(outputs), batch["label"], batch["mask"],
        outputs.get("cosine")))

  return eval_step


def empty_train_sums(num_classes):
  return {**metrics.empty(num_classes), "nonfinite": jnp.zeros((), jnp.float32)}


@dataclasses.dataclass
class Sharding:
  """The device mesh and how arrays are laid out on it."""
  mesh: jax.sharding.Mesh
  replicated: jax.sharding.NamedSharding
  batch: jax.sharding.NamedSharding

  @classmethod
  def over_all_devices(cls):
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    return cls(mesh, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

  def put_batch(self, local_batch):
    """A global array from this process's slice of the batch."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, x), local_batch)


def _stop_now(stop: StopRequest, step: int, every: int) -> bool:
  """Whether to stop after `step`.

  With several processes, they compare their signals every `every` steps, so
  all stop at the same step, and each takes on a signal another one received
  (a preemption notice may reach only one host), so all exit alike.
  """
  if jax.process_count() == 1:
    return bool(stop)
  if step % every:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop: StopRequest | None = None) -> list[dict[str, float]]:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint.

  Args:
    config: a validated config (important classes as indices).
    workdir: the run directory.
    stop: set by a signal handler to checkpoint and return early; by default a
      new one. It handles SIGTERM and SIGINT while this function runs (before
      the first step, a stop returns without training).

  Returns:
    metrics.csv's rows so far.

  Raises:
    NonFiniteLossError: the loss or the state became NaN or Inf; nothing
      non-finite was saved.
    checkpoint.UnreadableCheckpointError: the run has checkpoints, but none
      restores.
  """
  stop = stop if stop is not None else StopRequest()
  stop.install()
  spec = data_lib.get_spec(config.dataset)
  builder = data_lib.get_builder(spec, config.data_dir)
  num_classes = builder.info.features["label"].num_classes
  important = tuple(config.loss.important_classes)
  shape = data_lib.image_shape(builder, config.image_size)
  steps_per_epoch = pipeline.steps_per_epoch(builder, spec, config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs

  sharding = Sharding.over_all_devices()
  model, objective = make_model(config, num_classes)
  fresh_sums = lambda: jax.device_put(empty_train_sums(num_classes), sharding.replicated)
  train_sums = fresh_sums()

  step = last_saved = 0
  manager = checkpoint.manager(workdir, config.keep_checkpoints)
  log = run_log.MetricsLog(workdir, enabled=jax.process_index() == 0)
  try:
    # Parameters are only initialised (a compile of their own) for a new run.
    restored = checkpoint.restore_latest(
        manager, abstract_train_state(config, model, shape, sharding.replicated), train_sums)
    if restored is None:
      state = jax.device_put(create_train_state(config, model, shape), sharding.replicated)
    else:
      step, state, train_sums = restored
      if jax.process_index() == 0:
        print(f"resuming from the checkpoint at step {step} (epoch "
              f"{step // steps_per_epoch} of {config.num_epochs} done)", flush=True)
    log.truncate(step // steps_per_epoch)
    last_saved = step

    train_step = jax.jit(make_train_step(objective, config.seed), donate_argnums=(0, 1),
                         out_shardings=(sharding.replicated, sharding.replicated))
    eval_step = jax.jit(make_eval_step(objective), donate_argnums=1,
                        out_shardings=sharding.replicated)
    show_bar = config.progress_bar and jax.process_index() == 0
    check_every = max(1, min(50, steps_per_epoch // 4))

    for epoch in range(step // steps_per_epoch, config.num_epochs):
      if _stop_now(stop, step, check_every):
        break
      start = step - epoch * steps_per_epoch
      if start == 0:
        train_sums = fresh_sums()
      batches = pipeline.train_batches(
          builder, spec, global_batch_size=config.batch_size,
          image_size=config.image_size, seed=config.seed, epoch=epoch,
          start_step=start, augmentations=tuple(config.augment))
      with tqdm.tqdm(total=steps_per_epoch, initial=start, disable=not show_bar,
                     desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step",
                     leave=False, dynamic_ncols=True) as bar:
        for batch in batches:
          state, train_sums = train_step(state, train_sums, sharding.put_batch(batch))
          step += 1
          bar.update()
          if step % check_every == 0:
            _check_finite(train_sums, step, last_saved)
            bar.set_postfix(loss=f"{float(train_sums['loss_sum'] / train_sums['count']):.4f}")
          if _stop_now(stop, step, check_every):
            break
      _check_finite(train_sums, step, last_saved)
      if step == (epoch + 1) * steps_per_epoch:
        eval_sums = metrics.empty(num_classes)
        for batch in pipeline.eval_batches(
            builder, spec, spec.test_split, global_batch_size=config.eval_batch_size,
            image_size=config.image_size):
          eval_sums = eval_step(state, eval_sums, sharding.put_batch(batch))
        row = {**metrics.summarize(train_sums, important, "train"),
               **metrics.summarize(eval_sums, important, "test", per_class=True)}
        log.write(epoch + 1, row, step)
        if jax.process_index() == 0:
          tqdm.tqdm.write(
              f"epoch {epoch + 1}/{config.num_epochs}  train_loss {row['train_loss']:.4f}  "
              f"test_loss {row['test_loss']:.4f}  test_accuracy {row['test_accuracy']:.4f}  "
              f"test_recall {row['test_recall']:.4f}")
      if step != last_saved:
        checkpoint.save(manager, step, state, train_sums)
        last_saved = step
  finally:
    try:
      manager.close()  # Waits for the checkpoint being written.
      log.close()
    finally:
      stop.uninstall()
  if stop and step < total_steps:
    logging.warning("%s received: stopped at step %d of %d; %s", stop.signal, step,
                    total_steps, f"checkpoint saved at step {last_saved}" if last_saved
                    else "nothing trained yet, no checkpoint")
  return log.rows
