r"""Your own images: an image-folder tree (camri/data/folder.py).

  python -m camri.main --config configs/folder.py:path=/data/signs,important=stop \
      --workdir runs/signs

reads /data/signs/train/<class>/<image> (and test/, val/ where present; without
test/, 20% of each class of train/ is the test split). Images of any size are
resized to `size` x `size` and decoded to `channels` channels; a small CNN,
Adam lr 1e-3, batch 32, 30 epochs.

  python -m camri.main --config configs/folder.py:path=/data/signs,important=stop,\
pretrained=resnet50.safetensors,model=resnet50 --workdir runs/signs_resnet50

fine-tunes a torchvision or timm ResNet from its ImageNet weights (a
.safetensors state dict): images 224 x 224, normalised as ImageNet's (the
model does it; config.input_normalization), the pretrained trunk at Adam lr
1e-4 and the new feature layer and head at 1e-3 (config.backbone_learning_rate,
config.learning_rate): the usual fine-tuning practice of moving the pretrained
weights less than the new layers, which start random. A linear probe trains
only the new layers: --config.freeze_backbone=True.

Argument string, comma-separated key=value:
  path=<the tree; required> (a path with a comma: --config.folder=PATH instead)
  important=<class folder name or index>: CAMRI on that class; without it,
    plain cross-entropy (loss=... still chooses any loss)
  loss=...   margin=<k, meaning k*pi/64>   scale=<s>
  size=<image size in pixels, default 64; 224 with pretrained=>
  channels=<3 (RGB, default) or 1 (greyscale; repeated to RGB for pretrained=)>
  model=small_cnn|reference_cnn|resnet18|resnet34|resnet50|resnet18_small_inputs|...
    (default small_cnn; resnet50 with pretrained=)
  pretrained=<a .safetensors file of ResNet-18, 34 or 50 weights in torchvision's
    layout> (a path with a comma: --config.init_checkpoint=PATH instead)
Augmentation: --config.augment='("flip", "crop")'.
"""

import os
import shlex

from camri import config_args


def _absolute(path):
  return os.path.abspath(os.path.expanduser(path))


def get_config(arg=None):
  config, args = config_args.dataset_config(
      arg, dataset="folder", important="", loss="",
      comma_hints={
          "path": lambda path: "leave path= out and give the tree as "
                               f"--config.folder={shlex.quote(_absolute(path))}",
          "pretrained": lambda path: (
              "leave pretrained= out and give the file as --config.init_checkpoint="
              f"{shlex.quote(_absolute(path))} --config.backbone_learning_rate=1e-4 "
              "(and model=, size=)")},
      path="", size="", channels=3, model="", pretrained="")
  if not args.loss:
    config.loss.name = "camri" if args.important else "cross_entropy"
  # Absolute, so that config.json names the tree whatever the working directory.
  config.folder = _absolute(args.path) if args.path else ""
  config.channels = config_args.number_arg("channels", args.channels, int)
  pretrained = bool(args.pretrained)
  config.image_size = config_args.number_arg("size", args.size or ("224" if pretrained else "64"),
                                            int)
  config.model = args.model or ("resnet50" if pretrained else "small_cnn")
  config.feature_dim = 64
  config.num_epochs = 30
  config.batch_size = 32
  config.eval_batch_size = 256
  config.learning_rate = 1e-3
  if pretrained:
    config.init_checkpoint = _absolute(args.pretrained)
    config.backbone_learning_rate = 1e-4
  return config
