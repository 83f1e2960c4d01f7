"""The runs one training program trains: one run, or a population's members.

A population is K runs of one program (`camri.population`): their train
states are stacked on a leading member axis and stepped together (`jax.vmap`
of one run's step, camri/feeds.py), while each stays a normal run with its
own workdir, config.json, metrics.csv, predictions, TensorBoard events and
checkpoints, written from its slice of the stack in the single-run format.

`Members` owns those resources (each run's checkpoint manager and metrics
log, closed on every way out) and each run's failure. A single run's failure
(a NaN loss, a failed write) raises, as it always has. A member's (of a
population, even one trained apart from the others) is written
to its workdir (`run_log.record_failure`) and the member is dropped: its
slice goes on being computed, untouched by the others (nothing is shared
between members), but nothing of it is written any more, and its checkpoints
keep the last good step.
"""

import contextlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from camri import checkpoint
from camri import run_log


def stack(trees):
  """Runs' trees as one, each leaf with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


# On CPU, the steps per member from which "unroll" beats "vmap" (`member_axis`).
UNROLL_FROM_STEPS = 300


def member_axis(config, steps: int, on_features: bool = False) -> str:
  """`config.member_axis` of a population whose members train `steps` steps each; "auto"
  is "vmap" on GPU and TPU and on a frozen trunk's output (`on_features`), and on CPU
  "unroll" from `UNROLL_FROM_STEPS` steps on.

  `jax.vmap` turns each member's convolution into one grouped convolution,
  which XLA:CPU runs 2-4x slower per member than the plain one: small_cnn at
  batch 64 took 15.7 ms a step alone, 30 ms a member-step vmapped at K=4 and
  59 ms at K=16, against 10.8 and 17.7 ms unrolled. Unrolled, each member's
  step is the single run's, but the compile grows by about 4 s a member
  (K=16: 74 s, against 5 s vmapped). So unrolling pays from about 4 s /
  15 ms ~ 300 steps a member; both figures scale alike with the CPU's speed.
  On GPU and TPU the grouped convolution is the standard way to batch small
  models. The steps on a trunk's output have no convolution: vmapped, 15
  ResNet-18 heads compiled in 8 s where unrolled took 89 s, and ran an epoch
  no slower.
  """
  if config.member_axis != "auto":
    return config.member_axis
  if jax.default_backend() != "cpu" or on_features:
    return "vmap"
  return "unroll" if steps >= UNROLL_FROM_STEPS else "vmap"


def map_members(fn, how: str, in_axes):
  """`fn` of one run as a function of stacked runs: `jax.vmap`, or a Python loop over the
  members unrolled in the program ("unroll"). `in_axes` as vmap's: 0 or None per argument."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    count = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes) if axis == 0)
    return stack([fn(*(jax.tree.map(lambda x: x[k], a) if axis == 0 else a  # pylint: disable=cell-var-from-loop
                       for a, axis in zip(args, in_axes))) for k in range(count)])

  return unrolled


class Members:
  """The runs trained together, their resources and their failures."""

  def __init__(self, configs, workdirs, steps_per_epoch: int, population: bool = False):
    self.configs, self.workdirs = list(configs), [str(w) for w in workdirs]
    self.steps_per_epoch = steps_per_epoch
    self.stacked = len(self.configs) > 1
    # A population's runs (even one left alone) record their failures; a run alone raises.
    self.records_failures = population or self.stacked
    self.live = list(range(len(self.configs)))
    self.managers, self.logs = [], []

  @property
  def count(self) -> int:
    return len(self.configs)

  def of(self, tree, member: int):
    """Member `member`'s slice of a stacked tree (a single run's tree as it is)."""
    return jax.tree.map(lambda x: x[member], tree) if self.stacked else tree

  def each(self, tree) -> list:
    """Every run's slice of a stacked tree, copied to the host at once (a single run's
    tree as it is)."""
    if not self.stacked:
      return [tree]
    host = jax.device_get(tree)
    return [self.of(host, member) for member in range(self.count)]

  def stack(self, trees):
    """The runs' trees as the program takes them: stacked (on the host, where stacking
    compiles nothing) in a population."""
    if not self.stacked:
      return trees[0]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)

  @contextlib.contextmanager
  def opened(self):
    """Each run's checkpoint manager and metrics log, closed on every way out.

    Closing a manager waits for the checkpoint being written; a write that
    failed in the background raises there (or at the next save). A run that
    ends in an error keeps only the metrics.csv rows its complete checkpoints
    hold (as its resume would): a failed save of the last epoch's checkpoint
    does not leave the run looking finished.
    """
    main_process = jax.process_index() == 0
    failed = True
    try:
      for config, workdir in zip(self.configs, self.workdirs):
        self.managers.append(checkpoint.manager(workdir, config.keep_checkpoints))
        self.logs.append(run_log.MetricsLog(workdir, enabled=main_process,
                                            num_epochs=config.num_epochs))
      yield self
      failed = False
    finally:
      errors = []
      for member, manager in enumerate(self.managers):
        try:
          with self.guard(member):
            manager.close()
        except BaseException as e:  # pylint: disable=broad-except
          errors.append(e)
      for member, log in enumerate(self.logs):
        if failed or errors or member not in self.live:
          self._forget_unsaved_epochs(member)
        log.close()
      if errors and not failed:
        raise errors[0]

  def _forget_unsaved_epochs(self, member: int):
    saved = max(checkpoint.complete_steps(self.workdirs[member]), default=0)
    try:
      self.logs[member].truncate(saved // self.steps_per_epoch)
    except OSError:  # The disk is full: the next run drops those rows when it resumes.
      pass

  def fail(self, member: int, error: Exception, status: int):
    """A run failed: a single run raises `error`; a member is recorded and dropped."""
    if not self.records_failures:
      raise error
    if member not in self.live:
      return
    self.live.remove(member)
    logging.error("member %d (%s) failed: %s", member, self.workdirs[member], error)
    if jax.process_index() == 0:
      try:
        run_log.record_failure(self.workdirs[member], str(error), status)
      except OSError:
        pass  # Its disk is what failed: the population's log has the line.

  @contextlib.contextmanager
  def guard(self, member: int):
    """Runs a write of `member`'s: a write that fails (`run_log.write_failure`) fails the
    member; other errors raise."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      failure = run_log.write_failure(e)
      if failure is None or not self.records_failures:
        raise
      self.fail(member, run_log.WriteFailedError(failure), status=6)

  def nonfinite(self, train_sums) -> list[int]:
    """The live runs whose loss or state became NaN or Inf (`train_sums["nonfinite"]` > 0)."""
    bad = np.atleast_1d(np.asarray(jax.device_get(train_sums["nonfinite"])))
    return [(member, int(bad[member])) for member in self.live if bad[member]]
