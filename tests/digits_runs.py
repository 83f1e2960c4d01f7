"""Digits runs trained once per test session, for the tests that only read them.

tests/test_objectives.py checks that every loss trains (and names its defaults
in config.json); tests/test_predict.py and tests/test_export.py read three of
the same runs, which they would otherwise train again.
"""

import fcntl
import os
import shutil

from camri import prepare
from camri import run_log
from camri import train

EPOCHS = 2


def shared_run(tfds_dir, tmp_path_factory, loss: str) -> str:
  """The workdir of an EPOCHS-epoch digits run with `loss` and its defaults, trained as
  camri.main trains it, once for all pytest-xdist workers (as conftest's `reference`)."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  shared = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    shared = shared.parent  # The session's directory, above each worker's.
  workdir = shared / "digits_runs" / loss
  workdir.parent.mkdir(exist_ok=True)
  with open(workdir.parent / f"{loss}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not run_log.is_finished(workdir):
      shutil.rmtree(workdir, ignore_errors=True)
      config = digits.get_config(f"loss={loss}")
      config.update(data_dir=tfds_dir, progress_bar=False, num_epochs=EPOCHS)
      train.train_and_evaluate(prepare.prepare_run(config, str(workdir)), str(workdir))
  return str(workdir)
