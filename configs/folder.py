r"""Your own images: an image-folder tree (camri/data/folder.py).

  python -m camri.main --config configs/folder.py:path=/data/signs,important=stop \
      --workdir runs/signs

reads /data/signs/train/<class>/<image> (and test/, val/ where present; without
test/, 20% of each class of train/ is the test split). Images of any size are
resized to `size` x `size` and decoded to `channels` channels; a small CNN,
Adam lr 1e-3, batch 32, 30 epochs.

Argument string, comma-separated key=value:
  path=<the tree; required> (a path with a comma: --config.folder=PATH instead)
  important=<class folder name or index>: CAMRI on that class; without it,
    plain cross-entropy (loss=... still chooses any loss)
  loss=...   margin=<k, meaning k*pi/64>   scale=<s>
  size=<image size in pixels, default 64>   channels=<3 (RGB, default) or 1>
  model=small_cnn|reference_cnn|resnet18_small_inputs|resnet18|...
Augmentation: --config.augment='("flip", "crop")'.
"""

import os
import shlex

from camri import config_lib


def _absolute(path):
  return os.path.abspath(os.path.expanduser(path))


def get_config(arg=None):
  config, args = config_lib.dataset_config(
      arg, dataset="folder", important="", loss="",
      comma_hints={"path": lambda path: "leave path= out and give the tree as "
                                        f"--config.folder={shlex.quote(_absolute(path))}"},
      path="", size=64, channels=3, model="small_cnn")
  if not args.loss:
    config.loss.name = "camri" if args.important else "cross_entropy"
  # Absolute, so that config.json names the tree whatever the working directory.
  config.folder = _absolute(args.path) if args.path else ""
  config.channels = config_lib.number_arg("channels", args.channels, int)
  config.image_size = config_lib.number_arg("size", args.size, int)
  config.model = args.model
  config.feature_dim = 64
  config.num_epochs = 30
  config.batch_size = 32
  config.eval_batch_size = 256
  config.learning_rate = 1e-3
  return config
