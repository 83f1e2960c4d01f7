"""A run's checkpoints: orbax, written asynchronously, checked when read back.

Each checkpoint `checkpoints/<step>/` holds the train state, the running sums
of the epoch's train metrics (so a run resumed mid-epoch writes the same
metrics.csv row as an uninterrupted one) and a fingerprint: the CRC32 of every
array's bytes. Orbax writes a step into a temporary directory and renames it
when complete, so a process killed while saving leaves no `<step>/` (the
temporary directory is removed with a warning on the next start); the
fingerprint catches the rest: a checkpoint whose files were truncated, deleted
or altered afterwards. `restore_latest` falls back to the newest checkpoint
that restores intact.

The fingerprint is over this process's copy of each array, so it assumes the
state is replicated (as `train.Sharding` lays it out).
"""

import contextlib
import gc
import os
import sys
import zlib

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from camri import run_log

# Orbax's suffix for a step directory still being written.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class UnreadableCheckpointError(RuntimeError):
  """A run has checkpoints, but none of them restores."""


def manager(workdir, keep: int | None = None, read_only=False) -> ocp.CheckpointManager:
  """The manager of `workdir/checkpoints`, keeping the newest `keep` steps.

  The trainer's manager removes a partly written step left by a stopped
  process. `read_only` is every reader's (features, predict, export): it
  creates, cleans up and deletes nothing, so it is safe on a run that is
  still training and writing a checkpoint.
  """
  directory = os.path.abspath(os.path.join(workdir, run_log.CHECKPOINT_DIR))
  if read_only:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False))
  if jax.process_index() == 0 and os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      if _TMP_SUFFIX in name:
        logging.warning("skipping the partly written checkpoint %s (its process stopped "
                        "while saving it); removing it", os.path.join(directory, name))
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, cleanup_tmp_directories=True))


def complete_steps(workdir) -> list[int]:
  """The steps whose checkpoint was written completely, read from the directory (sorted).

  Orbax renames a step's temporary directory to `<step>/` once every file is
  written; a save that failed leaves only the temporary one.
  """
  directory = os.path.join(workdir, run_log.CHECKPOINT_DIR)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def fingerprint(tree) -> str:
  """CRC32 (hex) of the bytes of every array in `tree`, in tree order."""
  crc = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    crc = zlib.crc32(np.ascontiguousarray(leaf).view(np.uint8), crc)
  return f"{crc:08x}"


def save(mngr: ocp.CheckpointManager, step: int, state, train_sums):
  """Starts writing a checkpoint; `mngr.wait_until_finished()` waits for it."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      train_sums=ocp.args.StandardSave(train_sums),
      fingerprint=ocp.args.JsonSave({"crc32": fingerprint((state, train_sums))})))


def _restore(mngr: ocp.CheckpointManager, step: int, state, train_sums):
  """(state, train_sums) of `step`; raises if it does not restore intact."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, (state, train_sums))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract[0]),
      train_sums=ocp.args.StandardRestore(abstract[1]),
      fingerprint=ocp.args.JsonRestore()))
  arrays = (restored["state"], restored["train_sums"])
  if fingerprint(arrays) != restored["fingerprint"]["crc32"]:
    raise ValueError("its arrays do not match the fingerprint saved with them")
  return arrays


def is_closed_loop_report(unraisable) -> bool:
  """Whether an unraisable exception is an abandoned checkpoint I/O's "Event loop is closed".

  Orbax runs a save's or a restore's reads and writes on an event loop that it
  closes when one of them fails; tensorstore's callbacks and the unfinished
  coroutines, run or collected afterwards, each report this. The failure
  itself is raised (and reported) in the main thread.
  """
  return (unraisable.exc_type is RuntimeError
          and str(unraisable.exc_value) == "Event loop is closed")


def _is_abandoned_read(unraisable) -> bool:
  """A restore's read that orbax left unfinished when another failed, reported when collected."""
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


@contextlib.contextmanager
def _without_abandoned_read_reports():
  """Drops what a failed restore's abandoned reads report, collecting them here.

  Otherwise they surface whenever the garbage collector next runs (in a test:
  in another test's teardown). The failure itself is the restore's exception.
  """
  default_hook = sys.unraisablehook
  sys.unraisablehook = lambda u: (None if is_closed_loop_report(u) or _is_abandoned_read(u)
                                  else default_hook(u))
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = default_hook


def restore_latest(mngr: ocp.CheckpointManager, state, train_sums, delete_unreadable=False,
                   up_to: int | None = None):
  """The newest checkpoint (of a step <= `up_to`, if given) that restores intact:
  (step, state, train_sums).

  Newer checkpoints that do not restore are reported and, with
  `delete_unreadable` (the trainer's; never with a read-only manager), deleted:
  a later save of the same step would collide with them. Readers keep the
  default and open the manager read-only: they never change a workdir.

  Args:
    mngr: the run's checkpoint manager.
    state, train_sums: trees of arrays or `jax.ShapeDtypeStruct`s with the
      structure, shapes, dtypes and shardings to restore into.

  Returns:
    None when there is no checkpoint.

  Steps after `up_to` (a population's member that saved a step the others
  did not, camri/members.py) are passed over, and deleted with
  `delete_unreadable`: the resumed run writes them again, the same.

  Raises:
    UnreadableCheckpointError: there are checkpoints but none restores (the
      code or the environment changed, or every file was damaged).
  """
  unreadable = []
  for step in sorted(mngr.all_steps()):
    if up_to is not None and step > up_to and delete_unreadable:
      logging.warning("deleting the checkpoint at step %d: the population resumes from step %d",
                      step, up_to)
      mngr.delete(step)
  steps = sorted((s for s in mngr.all_steps() if up_to is None or s <= up_to), reverse=True)
  if not steps:
    return None  # Nothing read, so no abandoned read to collect (gc.collect: ~0.3 s).
  with _without_abandoned_read_reports():
    for step in steps:
      try:
        restored = _restore(mngr, step, state, train_sums)
      except Exception as e:  # pylint: disable=broad-except  (orbax and tensorstore raise many kinds)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        logging.warning("the checkpoint at step %d is unreadable (%s); trying an older one",
                        step, reason)
        unreadable.append((step, reason))
        continue
      for bad, _ in unreadable if delete_unreadable else ():
        logging.warning("deleting the unreadable checkpoint at step %d; resuming from step %d",
                        bad, step)
        mngr.delete(bad)
      return (step, *restored)
  if unreadable:
    step, reason = unreadable[0]
    raise UnreadableCheckpointError(
        f"no checkpoint in {mngr.directory} restores (the newest, step {step}: {reason}); "
        f"delete {mngr.directory} to train this run afresh")
  return None
