"""camri/progress.py: a bar on a terminal, one line per epoch in a log file."""

import io
import re

import tqdm

from camri import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_a_log_file_gets_one_line_per_epoch_and_a_terminal_a_bar():
  log = io.StringIO()
  for epoch, initial in ((1, 0), (2, 5)):  # The second resumed mid-epoch, at step 5.
    with progress.epoch_progress(20, initial, f"epoch {epoch}/2", enabled=True, file=log) as bar:
      for _ in range(initial, 20, 5):
        bar.update(5)
        bar.set_postfix(loss="0.1234")
  lines = log.getvalue().split("\n")
  assert "\r" not in log.getvalue() and lines[-1] == "" and len(lines) == 3
  assert re.fullmatch(r"epoch 1/2: step 20/20, 20 steps in [\d.]+ s, loss 0\.1234", lines[0])
  assert re.fullmatch(r"epoch 2/2: step 20/20, 15 steps in [\d.]+ s, loss 0\.1234", lines[1])
  terminal = _Terminal()
  with progress.epoch_progress(20, 0, "epoch 1/2", enabled=True, file=terminal) as bar:
    assert isinstance(bar, tqdm.tqdm)
    bar.update(20)
  assert "\r" in terminal.getvalue()
  quiet = io.StringIO()
  with progress.epoch_progress(20, 0, "epoch 1/2", enabled=False, file=quiet) as bar:
    bar.update(20)
  assert quiet.getvalue() == ""
