"""`python -m camri.main` whose training data turn NaN at one batch (bad data).

    python tests/nan_data_main.py EPOCH BATCH <camri.main flags>

The BATCH-th batch (0-based) of epoch EPOCH (0-based) has NaN images; the rest
of the run is the real command line.
"""

import sys

import numpy as np
from absl import app

from camri import main  # Sets the environment before TensorFlow loads.
from camri.data import pipeline  # pylint: disable=g-bad-import-order


def _nan_at(bad_epoch: int, bad_index: int):
  real_batches = pipeline.train_batches

  def train_batches(*args, epoch, **kwargs):
    for i, batch in enumerate(real_batches(*args, epoch=epoch, **kwargs)):
      if (epoch, i) == (bad_epoch, bad_index - kwargs.get("start_step", 0)):
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      yield batch

  return train_batches


if __name__ == "__main__":
  pipeline.train_batches = _nan_at(int(sys.argv[1]), int(sys.argv[2]))
  app.run(main.main, argv=[sys.argv[0], *sys.argv[3:]], flags_parser=main._parse_flags)  # pylint: disable=protected-access
