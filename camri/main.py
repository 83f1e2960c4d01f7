"""Trains one run: `python -m camri.main --config configs/digits.py --workdir DIR`.

Config fields can be overridden on the command line (`--config.loss.margin=0.3`)
and configs take an argument string (`--config configs/cifar10.py:important=dog`).
Running the same command again in the same workdir resumes the run.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads.

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() (several hosts; auto-detects TPU pods, Slurm, ...).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help is fast and flag errors come before JAX starts.
  import jax  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    config = prepare.prepare_run(_CONFIG.value, _WORKDIR.value)
  except (prepare.ConfigError, prepare.MissingArchiveError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  from camri import train  # pylint: disable=g-import-not-at-top
  stop = train.StopRequest()
  try:
    rows = train.train_and_evaluate(config, _WORKDIR.value, stop)
  except prepare.ConfigError as e:  # E.g. config.init_checkpoint does not fit.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  if stop:
    print(f"stopped by {stop.signal}; checkpoint saved. Resume with the same command:\n  "
          + " ".join([os.path.basename(sys.executable), "-m", "camri.main"] + sys.argv[1:]),
          file=sys.stderr)
    sys.exit(143 if stop.signal == "SIGTERM" else 130)
  if rows:
    last = rows[-1]
    print(f"done: epoch {last['epoch']}  test_accuracy {last['test_accuracy']:.4f}  "
          f"test_recall {last['test_recall']:.4f}  ({_WORKDIR.value}/metrics.csv)")


if __name__ == "__main__":
  app.run(main)
