"""Stopping a run cleanly on SIGTERM (preemption, `scancel`, `kill`) or SIGINT (Ctrl-C).

The training loop polls a `StopRequest` after every step; the handler only sets
it, so the step in flight finishes, a checkpoint is written and the loop
returns. A second signal exits at once.
"""

import os
import signal
import threading


class StopRequest:
  """Set by SIGTERM / SIGINT: the loop finishes its step, checkpoints and returns.

  A second signal exits the process at once (status 128 + signal number),
  without waiting for the checkpoint being written: as after a kill -9, the
  next run resumes from the newest complete checkpoint.
  """

  def __init__(self):
    self.signal = None
    self._previous = {}

  def install(self):
    """Handles SIGTERM and SIGINT until `uninstall` (only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def uninstall(self):
    """Gives the signals back to their previous handlers."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal is not None:
      # os.write, not print: a handler may interrupt a print to the same stream.
      os.write(2, f"{name} again: exiting now; the next run resumes from the newest "
                  "complete checkpoint\n".encode())
      os._exit(128 + signum)
    self.signal = name

  @property
  def number(self) -> int:
    """The signal's number, 0 while none was received."""
    return signal.Signals[self.signal].value if self.signal else 0

  def received_elsewhere(self, number: int):
    """Records signal `number`, received by another process of the run."""
    if self.signal is None:
      self.signal = signal.Signals(number).name

  def __bool__(self):
    return self.signal is not None
