"""A run's train state, its optimiser and its steps: what training compiles.

`make_train_step` and `make_eval_step` are written for one run; a population
(camri/members.py) maps them over its members. Everything a run may differ
in from the others of its program reaches them as arrays: the learning rate
in the optimiser state (`optax.inject_hyperparams`), the seed and the loss's
numbers in `run_arrays`.
"""

import functools
from typing import Any

from absl import logging
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from camri import checkpoint
from camri import metrics
from camri import models
from camri import objectives
from camri import trunk
from camri.objectives import Objective


class TrainState(train_state.TrainState):
  batch_stats: Any


def make_optimizer(config, inject: bool = True) -> optax.GradientTransformation:
  """config.optimizer at config.learning_rate; the backbone's trunk frozen or at its own rate.

  With config.freeze_backbone or config.backbone_learning_rate, the trunk's
  parameters ("trunk" of `models.param_groups`) get no update or their own
  optimiser; the feature layer and the head keep config.learning_rate.

  The learning rates are `optax.inject_hyperparams` state, arrays of the
  train state rather than constants of the step, so that the runs of a
  population, whose rates differ, share one compiled step (`inject=False`: the
  optimiser of runs saved before, to restore them).
  """
  optimizer = functools.partial(_optimizer, inject=inject)
  new_layers = optimizer(config, config.learning_rate)
  if config.get("freeze_backbone"):
    trunk = optax.set_to_zero()
  elif config.get("backbone_learning_rate") is not None:
    trunk = optimizer(config, config.backbone_learning_rate)
  else:
    return new_layers
  return optax.multi_transform({"trunk": trunk, "new": new_layers}, models.param_groups)


def _optimizer(config, learning_rate, inject=True) -> optax.GradientTransformation:
  if not inject:
    return (optax.adam(learning_rate, eps=config.adam_eps) if config.optimizer == "adam"
            else optax.sgd(learning_rate, momentum=0.9, nesterov=True))
  if config.optimizer == "adam":
    # Only the rate is an array: Adam's other constants stay in the program, as
    # without injection (as arrays, b1 and b2 change the update's round-off).
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
        learning_rate, eps=config.adam_eps)
  return optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))(
      learning_rate, momentum=0.9, nesterov=True)


def make_model(config, num_classes: int) -> tuple[nn.Module, Objective]:
  objective = objectives.make_objective(
      config.loss, num_classes, head_kernel_init=models.HEAD_KERNEL_INITS.get(config.model))
  backbone = models.get_backbone(
      config.model, config.feature_dim, config.conv_weight_grad,
      frozen_trunk=config.get("freeze_backbone", False),
      resnet_padding=config.get("resnet_padding", "torchvision"))
  return models.Classifier(backbone, objective.head,
                           config.get("input_normalization") or "none"), objective


def create_train_state(config, model, image_shape, load_init_checkpoint=True,
                       inject=True) -> TrainState:
  """Parameters initialised from `config.seed` (and `config.init_checkpoint`, then the trunk
  of `config.trunk_from`).

  The step is an int32 array, not a weakly typed 0, so that a new run and one
  restored from a checkpoint compile the same train step.
  """
  variables = _init(model, jax.random.key(config.seed),
                    jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  if load_init_checkpoint and config.get("init_checkpoint"):
    variables = models.load_backbone(variables, config.init_checkpoint, config.model,
                                     frozen=config.get("freeze_backbone", False))
  if load_init_checkpoint and config.get("trunk_from"):
    variables = trunk.take_trunk(variables, config.trunk_from)
  state = TrainState.create(
      apply_fn=model.apply, params=variables["params"],
      batch_stats=variables.get("batch_stats", {}), tx=make_optimizer(config, inject))
  return state.replace(step=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model, key, image: jax.ShapeDtypeStruct):
  """model.init, compiled once per model and shape: a population's runs share it."""
  return model.init(key, jnp.zeros(image.shape, image.dtype), train=False)


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


def restore_train_state(manager, config, model, image_shape, sharding, train_sums, **kwargs):
  """`checkpoint.restore_latest` of a run's train state, placed by `sharding`; `kwargs` are its.

  A run saved before the learning rate was an array of the state (its
  optimiser not yet `optax.inject_hyperparams`) restores too: its optimiser
  state is wrapped as today's, with config.learning_rate.
  """
  abstract = abstract_train_state(config, model, image_shape, sharding)
  try:
    return checkpoint.restore_latest(manager, abstract, train_sums, **kwargs)
  except checkpoint.UnreadableCheckpointError:
    legacy = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        jax.eval_shape(lambda: create_train_state(config, model, image_shape, False,
                                                  inject=False)))
    try:
      restored = checkpoint.restore_latest(manager, legacy, train_sums, **kwargs)
    except checkpoint.UnreadableCheckpointError:
      restored = None
    if restored is None:
      raise
  step, state, sums = restored
  logging.warning("restored step %d, saved before the learning rate was part of the train "
                  "state", step)
  fresh = create_train_state(config, model, image_shape, False)
  opt_state = _wrap_legacy(fresh.opt_state, state.opt_state, state.step)
  return step, jax.device_put(fresh.replace(step=state.step, params=state.params,
                                            batch_stats=state.batch_stats,
                                            opt_state=opt_state), sharding), sums


def _wrap_legacy(new, old, step):
  """`old`, an optimiser state without injected hyperparameters, in the structure of `new`."""
  if isinstance(new, optax.InjectStatefulHyperparamsState):
    return new._replace(count=jnp.array(step, new.count.dtype, copy=True), inner_state=old)
  if isinstance(new, dict):
    return {key: _wrap_legacy(new[key], old[key], step) for key in new}
  if isinstance(new, tuple) and not isinstance(new, jax.Array):
    children = [_wrap_legacy(n, o, step) for n, o in zip(new, old)]
    return new._replace(**dict(zip(new._fields, children))) if hasattr(new, "_fields") \
        else type(new)(children)
  return old


def run_arrays(config, num_classes: int) -> dict:
  """What a run's step takes besides its state: its seed and its loss's `hparams`, as arrays.

  A population stacks its members' (camri/members.py).
  """
  objective = objectives.make_objective(config.loss, num_classes)
  return {"seed": np.int32(config.seed), "loss": objective.hparams}


def make_train_step(objective: Objective, seed: int):
  """(state, sums, batch, run) -> (state, sums): one optimiser step on the global batch.

  `run` is `run_arrays`; without it, `seed` and the objective's own hparams.
  """

  def train_step(state: TrainState, sums, batch, run=None):
    run = run if run is not None else {"seed": seed, "loss": objective.hparams}
    dropout_key = jax.random.fold_in(jax.random.key(run["seed"]), state.step)
    mask = batch["mask"]

    def loss_fn(params):
      outputs, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, batch["image"],
          train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      per_example = objective.loss(outputs, batch["label"], batch["mask"], run["loss"])
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
  """(state, sums, batch, run) -> (sums, scores): the batch's metric sums and (N, K)
  prediction scores; `run` as `make_train_step`'s."""

  def eval_step(state: TrainState, sums, batch, run=None):
    outputs = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"], train=False)
    per_example = objective.loss(outputs, batch["label"], batch["mask"],
                                 None if run is None else run["loss"])
    scores = objective.scores(outputs)
    return metrics.add(sums, metrics.batch_sums(
        per_example, scores, batch["label"], batch["mask"], outputs.get("cosine"))), scores

  return eval_step


def empty_train_sums(num_classes):
  return {**metrics.empty(num_classes), "nonfinite": jnp.zeros((), jnp.float32)}
