"""What the absl entry points taking --config (camri.main, camri.bench) share: their help.

absl's --help, --helpshort and --helpfull exit with status 1, as a bad command
line does; here they print the usage on stdout and exit 0, and so does -h.
The usage is the entry point's docstring, its flags, and where the config
fields and the losses are described.
"""

import sys
import textwrap

from absl import app
from absl import flags
from ml_collections import config_flags

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


def config_error(error: Exception, argv) -> str | None:
  """The one line for a --config that failed to parse, or None when `error` is not about it.

  A config file's ValueError (a bad argument string; ConfigError is one) and an
  override of a field the config lacks would otherwise print a traceback:
  ml_collections re-raises them with the traceback in the message, so the
  original is looked up on the exception's context chain.
  """
  chain = [error]
  while chain[-1].__context__ is not None:
    chain.append(chain[-1].__context__)
  original = chain[-1]
  if isinstance(original, config_lib.ConfigError):
    return str(original)
  if isinstance(original, KeyError) and any(a.startswith("--config.") for a in argv):
    # The outermost KeyError carries ml_collections' "Did you mean" hint.
    key_error = next(c for c in chain if isinstance(c, KeyError))
    return f"config has no field {str(key_error.args[0]).replace(chr(10), ' ')}"
  if isinstance(original, ValueError) and "Error whilst parsing config file" in str(error):
    return f"{str(error).splitlines()[0].rstrip(':')}: {type(original).__name__}: {original}"
  return None


def config_file_error(error: IOError) -> str:
  """The one line for a config file that could not be read."""
  return f"--config: {str(error).strip().splitlines()[-1].strip()}"


def load_config(spec: str, overrides=()):
  """The config of `--config spec` and `--config.<field>=<value>` overrides, as camri.main reads it.

  Args:
    spec: 'path/to/config.py[:argument string]'.
    overrides: '--config.<field>=<value>' strings.

  Raises:
    ConfigError: one line saying what is wrong.
  """
  argv = ["camri", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    config = values.config
    config.get("dataset")  # A config file that failed to load raises here.
  except (flags.Error, AttributeError, KeyError) as e:
    raise config_lib.ConfigError(config_error(e, argv) or str(e)) from e
  except IOError as e:
    raise config_lib.ConfigError(config_file_error(e)) from e
  return config


def parse_flags(argv):
  """absl's flag parsing (`app.parse_flags_with_usage`), with help exiting 0."""
  exit_on_help(argv)
  return app.parse_flags_with_usage(argv)
