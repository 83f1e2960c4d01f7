"""Digits grid: cross-entropy and CAMRI with two margins, three seeds each (9 runs).

    python -m launch.grid launch/sweeps/digits.py --root runs/digits --executor local --parallel 2

Argument string (optional): seeds=N (default 3: seeds 0 .. N-1), epochs=N
(default 0: the config's num_epochs, 8), e.g. `launch/sweeps/digits.py:seeds=1,epochs=1`
for a quick check. The important class is configs/digits.py's, 8.
"""

import math

from camri import config_args
from launch import hyper


def get_sweep(arg=None):
  args = config_args.parse_arg(arg, seeds=3, epochs=0)
  seeds = hyper.sweep("config.seed", range(int(args.seeds)))
  cross_entropy = hyper.product(hyper.fixed("config.loss.name", "cross_entropy"), seeds)
  camri = hyper.product(
      hyper.fixed("config.loss.name", "camri"),
      hyper.sweep("config.loss.margin", [4 * math.pi / 64, 8 * math.pi / 64]),
      seeds)
  runs = hyper.union(cross_entropy, camri)
  if int(args.epochs):
    runs = hyper.product(hyper.fixed("config.num_epochs", int(args.epochs)), runs)
  return "configs/digits.py", runs
