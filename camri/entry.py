"""What the training entry points (camri.main, camri.population) share: exit statuses,
one-line errors, the workdir lock and quiet failed saves. camri.main's docstring
lists the statuses.
"""

import contextlib
import logging as std_logging
import os
import sys
import traceback
from typing import Any

from absl import flags
from absl import logging


def show_traceback() -> bool:
  return os.environ.get("CAMRI_TRACEBACK", "") not in ("", "0") or (
      flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1)


def fail(error, status: int):
  if show_traceback() and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


class _NoLibraryTracebacks(std_logging.Filter):
  """Drops the logged errors of a failed background save (the main thread re-raises it).

  Orbax logs its save thread's error; asyncio logs each of the save's write
  tasks whose error nobody retrieved ("Task exception was never retrieved";
  only orbax and tensorstore run event loops in camri.main).
  """

  def filter(self, record):
    return not (record.exc_info and (f"{os.sep}orbax{os.sep}" in record.pathname
                                     or record.name == "asyncio"))


def quiet_failed_saves():
  """No tracebacks from a checkpoint save that failed: `fail` reports it in one line.

  Orbax and asyncio log the errors of the save's threads and tasks, and
  tensorstore, finishing the save's other writes after orbax closed their
  event loop, reports each as an unraisable "Event loop is closed". All stay
  with --verbosity=1.
  """
  from camri import checkpoint  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(_NoLibraryTracebacks())
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if not checkpoint.is_closed_loop_report(unraisable):
      default_hook(unraisable)

  sys.unraisablehook = hook


@contextlib.contextmanager
def holding_workdir(workdir: str):
  """Process 0 holds the workdir's lock for the run's life; every process exits 2 if it can't."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from camri import run_log  # pylint: disable=g-import-not-at-top
  from camri import workdir_lock  # pylint: disable=g-import-not-at-top
  lock = workdir_lock.WorkdirLock(workdir)
  error, status = None, 0
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lock.WorkdirBusyError as e:
      error, status = e, 2
    except OSError as e:  # E.g. a read-only workdir.
      error, status = run_log.write_failure(e) or e, 6
  if jax.process_count() > 1:  # The others would wait for process 0 forever.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
    error = error or f"process 0 could not lock --workdir {workdir} (see its error)"
  if status:
    fail(error, status)
  try:
    yield
  finally:
    lock.release()


def exit_status(error: Exception) -> tuple[int | None, Any]:
  """(the documented exit status, the one line) of an error a run stops with; None: a bug."""
  from camri import prepare  # pylint: disable=g-import-not-at-top
  if isinstance(error, (prepare.ConfigError, prepare.MissingArchiveError, prepare.DownloadError)):
    return 2, error  # Before TensorFlow loads, for a bad config.
  from camri import checkpoint  # pylint: disable=g-import-not-at-top
  from camri import run_log  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top
  from camri.data import pipeline  # pylint: disable=g-import-not-at-top
  for status, kind in ((3, train.NonFiniteLossError), (4, checkpoint.UnreadableCheckpointError),
                       (5, pipeline.DamagedDataError)):
    if isinstance(error, kind):
      return status, error
  failure = run_log.write_failure(error)  # Orbax and TensorFlow wrap the OSError.
  return (6, failure) if failure else (None, None)


