"""Sweeps over config fields: lists of override dicts, combined by product, zip and union.

A sweep is a list of runs; a run is a dict mapping a config field to its value,
e.g. `{"loss.margin": 0.19635, "seed": 1}`. Fields are dotted paths inside the
config, written with or without the leading "config." of the command line
(`--config.loss.margin=...`). The combinators follow xmanager's `hyper` module:

    product(sweep("config.loss.margin", [0.1, 0.2]), sweep("config.seed", [0, 1]))
        -> 4 runs, every margin with every seed
    zip(sweep("config.loss.margin", [0.1, 0.2]), sweep("config.loss.scale", [8, 16]))
        -> 2 runs, (0.1, 8) and (0.2, 16)
    union(product(fixed("config.loss.name", "cross_entropy"), seeds),
          product(fixed("config.loss.name", "camri"), margins, seeds))
        -> the runs of both, one after the other (no margin axis on CE)

A sweep file is a Python file defining `get_sweep(arg=None)` that returns
`(config_path, sweep)`: the base config of `camri.main` (e.g.
"configs/digits.py" or "configs/cifar10.py:quick") and either one sweep or a
list of sweeps, the axes, taken as their product. See launch/sweeps/digits.py.
"""

import builtins
import itertools
import re

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def field_name(key):
  """'config.loss.margin' or 'loss.margin' -> 'loss.margin'."""
  if not isinstance(key, str) or not _FIELD.fullmatch(key):
    raise ValueError(f"sweep field must be a dotted name like 'config.loss.margin', got {key!r}")
  return key.removeprefix("config.")


def sweep(key, values):
  """One axis: a run for each value of the config field `key`."""
  if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
    raise ValueError(f"sweep values of {key!r} must be a list, got {values!r}")
  name = field_name(key)
  return [{name: v} for v in values]


def fixed(key, value):
  """One run setting `key` to `value`: an axis of length one."""
  return sweep(key, [value])


def _merge(runs):
  merged = {}
  for run in runs:
    for key, value in run.items():
      if key in merged and merged[key] != value:
        raise ValueError(f"sweep sets field {key!r} twice in one run: {merged[key]!r} and {value!r}")
      merged[key] = value
  return merged


def product(*sweeps):
  """Cartesian product: every combination of one run from each sweep."""
  return [_merge(runs) for runs in itertools.product(*sweeps)]


def zip(*sweeps):  # pylint: disable=redefined-builtin
  """Elementwise: the i-th run of every sweep merged; all sweeps have one length."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"zip needs sweeps of one length, got lengths {sorted(lengths)}")
  return [_merge(runs) for runs in builtins.zip(*sweeps)]


def union(*sweeps):
  """Concatenation: the runs of each sweep in turn, repeated runs kept once."""
  runs = []
  for run in itertools.chain(*sweeps):
    if run not in runs:
      runs.append(dict(run))
  return runs


def as_sweep(value):
  """A sweep (list of dicts) as it is, or a list of axes (list of sweeps) as their product."""
  value = list(value)
  if all(isinstance(v, dict) for v in value):
    return [{field_name(k): x for k, x in run.items()} for run in value]
  if all(isinstance(v, (list, tuple)) for v in value):
    return product(*[as_sweep(axis) for axis in value])
  raise ValueError("a sweep is a list of override dicts or a list of such lists (axes)")
