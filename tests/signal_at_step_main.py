"""`python -m camri.main` (or camri.population) that sends itself SIGTERM once training
reaches a step.

    python tests/signal_at_step_main.py STEP <camri.main flags>
    python tests/signal_at_step_main.py STEP --population POPULATION.json

The signal is sent after the call that reaches step STEP (or passes it), as a
scheduler's would land between two calls; the rest is the real command line.
"""

import os
import signal
import sys

from absl import app

from camri import main  # Sets the environment before TensorFlow loads.
from camri import train  # pylint: disable=g-bad-import-order


def _signal_at(signal_step: int):
  real_call_hooks = train.call_hooks

  def call_hooks(*args, **kwargs):
    def send(step, steps, sums):
      del sums
      if step - steps < signal_step <= step:
        os.kill(os.getpid(), signal.SIGTERM)
      return False

    return [send, *real_call_hooks(*args, **kwargs)]

  return call_hooks


if __name__ == "__main__":
  train.call_hooks = _signal_at(int(sys.argv[1]))
  if sys.argv[2] == "--population":
    from camri import population  # pylint: disable=g-import-not-at-top
    app.run(population.main, argv=[sys.argv[0], *sys.argv[3:]])
  else:
    app.run(main.main, argv=[sys.argv[0], *sys.argv[2:]], flags_parser=main._parse_flags)  # pylint: disable=protected-access
