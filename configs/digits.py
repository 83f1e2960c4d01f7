r"""Quickstart: CAMRI on scikit-learn's 8x8 digits (ships offline), a few epochs.

  python -m camri.main --config configs/digits.py --workdir runs/digits

Argument string (optional), comma-separated key=value:
  loss=<any config.loss.name, docs/losses.md>   important=<class index>
  e.g. --config configs/digits.py:loss=arcface
The loss's hyperparameters are its defaults (config_lib.LOSS_DEFAULTS) unless
set on the command line, e.g. --config.loss.margin=0.3 --config.loss.scale=8.
"""

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
  return config
