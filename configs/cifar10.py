r"""CIFAR-10 with the paper's settings (Nishiyama et al., IJCNN 2022).

reference_cnn (13 conv layers, GAP, Dense(512) + BN, started as the authors'
Keras model), Adam lr 1e-3 with Keras's epsilon 1e-7, batch 64, 300 epochs,
inputs in [0, 1], no augmentation; CAMRI on cat (class 3) with m = 4*pi/64 and
s = 16.

Argument string (optional), comma-separated key=value:
  loss=camri|arcface|normface|cross_entropy|...   important=<name or index>
  margin=<k, meaning k*pi/64>   scale=<s>   (unset: the loss's default,
  config_lib.LOSS_DEFAULTS; CAMRI's is the cat setting m = 4*pi/64, s = 16)
  e.g. --config configs/cifar10.py:important=dog,margin=5
The authors' other settings: dog m = 5*pi/64, s = 16; airplane m = 4*pi/64, s = 8.
"""

from camri import config_args


def get_config(arg=None):
  config, _ = config_args.dataset_config(
      arg, dataset="cifar10", important="cat")
  config.image_size = 0  # Native 32x32.
  config.model = "reference_cnn"
  config.feature_dim = 512
  config.num_epochs = 300
  config.batch_size = 64
  config.eval_batch_size = 500
  config.learning_rate = 1e-3
  config.adam_eps = 1e-7  # The authors' (Keras's default).
  return config
