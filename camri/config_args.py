"""Config files' argument strings, big_vision style ('a=1,b=x'): `parse_arg` and
`dataset_config`, which every configs/<dataset>.py builds on (re-exported by `config_lib`)."""

import itertools
import math

import ml_collections

from camri.config_lib import ConfigError
from camri.config_lib import base_config


def parse_arg(arg: str | None, comma_hints=None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style argument string 'a=1,b=x' over `defaults` (values stay strings).

  Unknown keys are an error that lists the known ones. `comma_hints`: {key:
  value -> how else to give it} for keys whose value may hold a comma (a
  path, a class name), which the argument string cannot carry: the error
  says so and gives the hint.
  """
  comma_hints = comma_hints or {}
  args = ml_collections.ConfigDict({k: str(v) for k, v in defaults.items()})
  items = [item for item in (arg or "").split(",") if item]
  last = None
  for i, item in enumerate(items):
    key, sep, value = item.partition("=")
    if not sep and last in comma_hints:  # A comma inside the value of `last`.
      rest = itertools.takewhile(lambda it: "=" not in it, items[i:])
      full = ",".join([args[last], *rest])
      raise ConfigError(f"config argument {last}={full!r} is invalid: commas separate the "
                        f"arguments, so a value cannot hold one; {comma_hints[last](full)}")
    if not sep or key not in defaults:
      raise ConfigError(f"config argument {item!r} is invalid: use key=value with key in "
                        f"{sorted(defaults)}")
    args[key] = value
    last = key
  return args


def number_arg(key: str, value: str, kind=float):
  """`kind(value)` of an argument-string value, or a one-line ConfigError."""
  try:
    return kind(value)
  except ValueError:
    raise ConfigError(f"config argument {key}={value!r} is invalid: must be "
                      f"{'an integer' if kind is int else 'a number'}") from None


def dataset_config(arg: str | None, *, dataset: str, important: str, loss: str = "camri",
                   comma_hints=None,
                   **defaults) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """`base_config()` for `dataset` with the loss set from an argument string.

  Every dataset config takes the keys
    loss=<name>   important=<class name or index; empty: none>
    margin=<k, meaning k*pi/64>   scale=<s>
  (the authors write margins as k*pi/64) and the dataset's own `defaults`.
  Without margin= or scale=, the loss's own defaults apply (`LOSS_DEFAULTS`).
  Several important classes: --config.loss.important_classes='(3,5)'.
  `comma_hints`: the dataset's keys whose values may hold a comma (see
  `parse_arg`); a class name with a comma is named by its index.

  Returns:
    (config, args): the config with dataset and loss set from the arguments
    (margin in radians), and all parsed arguments, as strings.
  """
  comma_hints = {"important": lambda _: ("name the class by its index instead "
                                         "(important=<index>, from 0 in the sorted class names)"),
                 **(comma_hints or {})}
  args = parse_arg(arg, comma_hints, loss=loss, important=important, margin="", scale="",
                   **defaults)
  config = base_config()
  config.dataset = dataset
  config.loss.name = args.loss
  config.loss.important_classes = (args.important,) if args.important else ()
  if args.margin:
    config.loss.margin = (number_arg("margin", args.margin) * math.pi / 64,)
  if args.scale:
    config.loss.scale = number_arg("scale", args.scale)
  return config, args
