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


def _signal_at(signal_step: int):
  from camri import train  # pylint: disable=g-import-not-at-top
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
  # The entry point first: it sets the environment before TensorFlow loads.
  if sys.argv[2] == "--population":
    from camri import population  # pylint: disable=g-import-not-at-top
    from camri import train  # pylint: disable=g-import-not-at-top,g-bad-import-order
    train.call_hooks = _signal_at(int(sys.argv[1]))
    app.run(population.main, argv=[sys.argv[0], *sys.argv[3:]])
  else:
    from camri import main  # pylint: disable=g-import-not-at-top
    from camri import train  # pylint: disable=g-import-not-at-top,g-bad-import-order
    train.call_hooks = _signal_at(int(sys.argv[1]))
    app.run(main.main, argv=[sys.argv[0], *sys.argv[2:]], flags_parser=main._parse_flags)  # pylint: disable=protected-access
