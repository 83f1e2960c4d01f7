"""Trains one run: `python -m camri.main --config configs/digits.py --workdir DIR`.

Config fields can be overridden on the command line (`--config.loss.margin=0.3`)
and configs take an argument string (`--config configs/cifar10.py:important=dog`).
Running the same command again in the same workdir resumes the run.

Exit status:
  0  the run is finished (or was already).
  2  bad command line or config, a workdir holding another run, a workdir in use
     by another live process (`camri.workdir_lock`; the line names its host,
     pid and start), a dataset's manually downloaded archives missing, or a
     dataset's download failing: one line `error: ...` on stderr, nothing
     computed or written.
  3  the loss or the train state became NaN or Inf (the message names the step);
     the checkpoints saved before are kept.
  4  the workdir has checkpoints but none of them restores.
  5  reading the prepared dataset failed (a truncated or corrupt file): the line
     names its directory, whose deletion makes the next run prepare it again;
     the checkpoints saved before are kept.
  6  a write failed (no space, quota, file size limit, read-only, permission):
     the line names the path and the OS error; the checkpoints and metrics.csv
     written before are intact, so the same command resumes once fixed.
  130 / 143  stopped by SIGINT / SIGTERM after saving a checkpoint; the same
     command resumes.

Errors are one line `error: ...` on stderr, without a traceback; --verbosity=1
(or CAMRI_TRACEBACK=1 in the environment) prints the traceback too.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from camri import cli
from camri.entry import exit_status
from camri.entry import fail
from camri.entry import holding_workdir
from camri.entry import quiet_failed_saves
from camri.entry import show_traceback

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() (several hosts; auto-detects TPU pods, Slurm, ...).")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config reported in one line (`cli.config_error`),
  status 2. --help exits 0.
  """
  cli.exit_on_help(argv)
  try:
    argv = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    message = cli.config_error(e, argv)
    if message is not None:
      fail(message, 2)
    if not isinstance(e, flags.Error):
      raise
    fail(f"{e} (flags: --helpshort)", 2)
  try:
    _CONFIG.value.get("dataset")  # A config file that failed to load raises here.
  except IOError as e:
    fail(cli.config_file_error(e), 2)
  return argv


def _resume_command() -> str:
  return shlex.join([os.path.basename(sys.executable), "-m", "camri.main", *sys.argv[1:]])


def _train():
  """Prepares and trains the run: (config, metrics.csv's rows, the StopRequest)."""
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri.preemption import StopRequest  # pylint: disable=g-import-not-at-top
  stop = StopRequest()
  try:
    config = prepare.prepare_run(_CONFIG.value, _WORKDIR.value)
    from camri import train  # pylint: disable=g-import-not-at-top  (after the config is checked: it loads TensorFlow)
    stop.install()
    return config, train.train_and_evaluate(config, _WORKDIR.value, stop), stop
  except Exception as e:  # pylint: disable=broad-except
    status, message = exit_status(e)
    if status is None:
      raise
    fail(message, status)
  finally:
    stop.uninstall()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help is fast and flag errors come before JAX starts.
  import jax  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime()
  prepare.use_compilation_cache()
  if not show_traceback():
    quiet_failed_saves()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  with holding_workdir(_WORKDIR.value):  # Before anything in the workdir is read or written.
    config, rows, stop = _train()
  finished = bool(rows) and rows[-1]["epoch"] == config.num_epochs
  if stop and not finished:
    print(f"stopped by {stop.signal}. Resume with the same command:\n  "
          f"{_resume_command()}", file=sys.stderr)
    sys.exit(143 if stop.signal == "SIGTERM" else 130)
  if rows:
    last = rows[-1]
    print(f"done: epoch {last['epoch']}  test_accuracy {last['test_accuracy']:.4f}  "
          f"test_recall {last['test_recall']:.4f}  ({_WORKDIR.value}/metrics.csv)")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
