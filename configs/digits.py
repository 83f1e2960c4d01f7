r"""Quickstart: CAMRI on scikit-learn's 8x8 digits (ships offline), a few epochs.

  python -m camri.main --config configs/digits.py --workdir runs/digits

Argument string (optional), comma-separated key=value:
  loss=camri|arcface|normface|cross_entropy   important=<class index>
  e.g. --config configs/digits.py:loss=cross_entropy
"""

import math

from camri import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, loss="camri", important="8")
  config = config_lib.base_config()
  config.dataset = "digits"
  config.model = "small_cnn"
  config.feature_dim = 64
  config.num_epochs = 8
  config.batch_size = 64
  config.eval_batch_size = 360
  config.learning_rate = 1e-3
  config.loss.name = args.loss
  config.loss.important_classes = (args.important,)
  config.loss.margin = (4 * math.pi / 64,)
  config.loss.scale = 16.0
  return config
