"""`python -m camri.main` whose training data turn NaN at one step (bad data).

    python tests/nan_data_main.py STEP <camri.main flags>

The batch of step STEP (0-based, over the whole run) has NaN images, whichever
feed brings it; the rest of the run is the real command line.
"""

import sys

from absl import app
import jax.numpy as jnp

from camri import main  # Sets the environment before TensorFlow loads.
from camri import train  # pylint: disable=g-bad-import-order


def _nan_at(bad_step: int):
  real_make_train_step = train.make_train_step

  def make_train_step(*args, **kwargs):
    real_step = real_make_train_step(*args, **kwargs)

    def train_step(state, sums, batch, run=None):
      image = jnp.where(state.step == bad_step, jnp.nan, batch["image"])
      return real_step(state, sums, {**batch, "image": image}, run)

    return train_step

  return make_train_step


if __name__ == "__main__":
  train.make_train_step = _nan_at(int(sys.argv[1]))
  app.run(main.main, argv=[sys.argv[0], *sys.argv[2:]], flags_parser=main._parse_flags)  # pylint: disable=protected-access
