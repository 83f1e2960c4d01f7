r"""AwA2 (Animals with Attributes 2, 50 classes) with a ResNet.

Each photo is cropped to its centre square and resized to `size` x `size`
(224 by default); a ResNet18 (ImageNet stem) whose feature layer is
Dense(512) + BN, Adam lr 1e-3, batch 64, 100 epochs, inputs in [0, 1], no
augmentation; CAMRI on "antelope" (class 0) with m = 4*pi/64, s = 16. The
paper does not state these training settings; they are this project's. The
train/test split is the builder's seeded stratified 80/20 split
(camri/data/awa2.py). The archive goes to <data_dir>/downloads/manual/.

Argument string (optional), comma-separated key=value:
  loss=...   important=<name or index>, e.g. dolphin, grizzly+bear, 49
  margin=<k, meaning k*pi/64>   scale=<s>
  model=resnet18|resnet34|resnet50|resnet18_small_inputs|resnet34_small_inputs|
    resnet50_small_inputs (the _small_inputs stem, 3x3 stride 1 without max pool,
    suits ~32 pixels)
  size=<image size in pixels>
  e.g. --config configs/awa2.py:model=resnet50,size=160,important=dolphin
Start from pretrained weights: a torchvision or timm ResNet's .safetensors file
(normalised as ImageNet's inside the model; camri/models/torch_weights.py), or
an orbax checkpoint of the backbone's params or of {"params", "batch_stats"}
(camri/models/resnet.py):
  --config.init_checkpoint=/path/to/resnet50.safetensors
Augmentation: --config.augment='("flip", "crop")'.
"""

from camri import config_args


def get_config(arg=None):
  config, args = config_args.dataset_config(
      arg, dataset="awa2", important="antelope",
      model="resnet18", size=224)
  config.image_size = config_args.number_arg("size", args.size, int)
  config.model = args.model
  config.feature_dim = 512
  config.num_epochs = 100
  config.batch_size = 64
  config.eval_batch_size = 256
  config.learning_rate = 1e-3
  return config
