"""Digits grid: cross-entropy and CAMRI with two margins, three seeds each (9 runs).

    python -m launch.grid launch/sweeps/digits.py --root runs/digits --executor local --parallel 2
"""

import math

from launch import hyper


def get_sweep(arg=None):
  del arg
  seeds = hyper.sweep("config.seed", [0, 1, 2])
  cross_entropy = hyper.product(hyper.fixed("config.loss.name", "cross_entropy"), seeds)
  camri = hyper.product(
      hyper.fixed("config.loss.name", "camri"),
      hyper.sweep("config.loss.margin", [4 * math.pi / 64, 8 * math.pi / 64]),
      seeds)
  return "configs/digits.py", hyper.union(cross_entropy, camri)
