"""What the absl entry points taking --config (camri.main, camri.bench) share: their help.

absl's --help, --helpshort and --helpfull exit with status 1, as a bad command
line does; here they print the usage on stdout and exit 0, and so does -h.
The usage is the entry point's docstring, its flags, and where the config
fields and the losses are described.
"""

import sys
import textwrap

from absl import app

from camri import config_lib

# Help flag -> whether it lists only the entry point's own flags.
_HELP_FLAGS = {"help": True, "helpshort": True, "h": True, "?": True, "helpfull": False}


def config_help() -> str:
  """Where the config fields are described, and the losses' names."""
  paragraphs = [
      "Configs: configs/<dataset>.py, with an optional argument string "
      "(--config configs/cifar10.py:important=dog,margin=5). Override any field with "
      "--config.<field>=<value>; the fields and their meaning are in README.md, section "
      "\"Configs\".",
      "Losses (--config.loss.name=...; formulas, sources and defaults in docs/losses.md): "
      f"{', '.join(config_lib.LOSS_DEFAULTS)}."]
  return "\n\n".join(textwrap.fill(p, 80) for p in paragraphs)


def exit_on_help(argv) -> None:
  """With a help flag in `argv` (before any `--`): the usage on stdout, then exit 0."""
  for arg in argv[1:]:
    if arg == "--":
      return
    name = arg.lstrip("-")
    if arg.startswith("-") and name in _HELP_FLAGS:
      app.usage(shorthelp=_HELP_FLAGS[name], writeto_stdout=True)
      print(f"\n{config_help()}")
      sys.exit(0)


def parse_flags(argv):
  """absl's flag parsing (`app.parse_flags_with_usage`), with help exiting 0."""
  exit_on_help(argv)
  return app.parse_flags_with_usage(argv)
