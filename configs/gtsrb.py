r"""GTSRB (43 traffic-sign classes) with the paper's CIFAR-10 training settings.

Each image is cropped to its sign's ROI box and resized to 32x32; reference_cnn
(the paper's 13-layer network), Adam lr 1e-3, batch 64, 300 epochs, inputs in
[0, 1], no augmentation; CAMRI on "stop" (class 14) with m = 4*pi/64, s = 16.
The archives go to <data_dir>/downloads/manual/ (see README, "Datasets").

Argument string (optional), comma-separated key=value:
  loss=camri|arcface|normface|cross_entropy|...
  important=<name or index>, e.g. stop, 14, yield, "speed limit (20km/h)"
  margin=<k, meaning k*pi/64>   scale=<s>
  e.g. --config configs/gtsrb.py:loss=camri,important=stop,margin=5
Augmentation, if wanted: --config.augment='("crop",)' (never a flip: it would
turn "keep left" into "keep right").
"""

from camri import config_args


def get_config(arg=None):
  config, _ = config_args.dataset_config(
      arg, dataset="gtsrb", important="stop")
  config.image_size = 32
  config.model = "reference_cnn"
  config.feature_dim = 512
  config.num_epochs = 300
  config.batch_size = 64
  config.eval_batch_size = 512
  config.learning_rate = 1e-3
  return config
