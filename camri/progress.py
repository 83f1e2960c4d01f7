"""An epoch's progress: a tqdm bar on a terminal, one line per epoch anywhere else.

A bar redraws itself with carriage returns, which a log file (`launch.log`,
a scheduler's output) keeps, every one of them.
"""

import sys
import time

import tqdm


class EpochLine:
  """What the training loop uses of a tqdm bar (`update`, `set_postfix`, a context), writing
  one line when the epoch's steps end: its steps done, the time they took and the postfix."""

  def __init__(self, total: int, initial: int, desc: str, file):
    self.total, self.n, self.desc, self.file = total, initial, desc, file
    self._initial, self._postfix, self._start = initial, "", time.perf_counter()

  def update(self, steps: int):
    self.n += steps

  def set_postfix(self, **values):
    self._postfix = "".join(f", {key} {value}" for key, value in values.items())

  def __enter__(self):
    return self

  def __exit__(self, *exception):
    seconds = time.perf_counter() - self._start
    print(f"{self.desc}: step {self.n}/{self.total}, {self.n - self._initial} steps in "
          f"{seconds:.1f} s{self._postfix}", file=self.file, flush=True)


def epoch_progress(total: int, initial: int, desc: str, enabled: bool, file=None):
  """A tqdm bar of `total` steps from `initial` where `file` (stderr) is a terminal, else an
  `EpochLine`; with `enabled` False, a bar that shows nothing."""
  file = file or sys.stderr
  if enabled and not file.isatty():
    return EpochLine(total, initial, desc, file)
  return tqdm.tqdm(total=total, initial=initial, disable=not enabled, leave=False, desc=desc,
                   unit="step", dynamic_ncols=True, file=file)
