"""Digits with a 2-D feature (feature_dim=2): cross-entropy, NormFace and CAMRI, one seed.

For the 2-D feature plot (normalised features and class weight directions):

    python -m launch.grid launch/sweeps/digits_2d.py --root runs/digits_2d --executor local --parallel 2
    python -m camri.plots features2d runs/digits_2d/* --out features_2d.png

Argument string (optional): epochs=N (default 15), seed=S (default 0).
"""

from camri import config_args
from launch import hyper


def get_sweep(arg=None):
  args = config_args.parse_arg(arg, epochs=15, seed=0)
  common = hyper.product(hyper.fixed("config.feature_dim", 2),
                         hyper.fixed("config.num_epochs", int(args.epochs)),
                         hyper.fixed("config.seed", int(args.seed)))
  losses = hyper.sweep("config.loss.name", ["cross_entropy", "normface", "camri"])
  return "configs/digits.py", hyper.product(common, losses)
