r"""Quickstart: CAMRI on scikit-learn's 8x8 digits (ships offline), a few epochs.

  python -m camri.main --config configs/digits.py --workdir runs/digits

Argument string (optional), comma-separated key=value:
  loss=<any config.loss.name, docs/losses.md>   important=<class index>
  margin=<k, meaning k*pi/64>   scale=<s>   (unset: the loss's defaults,
  config_lib.LOSS_DEFAULTS; override any field, e.g. --config.loss.margin=0.3)
  e.g. --config configs/digits.py:loss=arcface
"""

from camri import config_args


def get_config(arg=None):
  config, _ = config_args.dataset_config(
      arg, dataset="digits", important="8")
  config.model = "small_cnn"
  config.feature_dim = 64
  config.num_epochs = 8
  config.batch_size = 64
  config.eval_batch_size = 360
  config.learning_rate = 1e-3
  return config
