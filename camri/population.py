r"""Trains a population: `python -m camri.population POPULATION.json`.

POPULATION.json is {"members": [ARGS, ...]}: each ARGS is the command line one
run would be given alone, `camri.main`'s (`["--config", "configs/digits.py",
"--workdir", "runs/a", "--config.seed=1"]`); or {"populations": [[ARGS, ...],
...]}, several populations trained one after the other in this one process
(one start, one TensorFlow import). "compilation_cache": DIR (optional) is
JAX's persistent compilation cache, unless JAX_COMPILATION_CACHE_DIR is set:
the processes of a study share it, so that populations of one program
compile it once. `launch.grid --population K` writes it. The runs must differ only in `config_fields.member_fields`: the seed,
the tag, the learning rate, the important classes and the loss's numbers
that it takes as arrays (CAMRI's and ArcFace's margins and scale, WCE's and
RWWCE's weights); everything else is one program's. They train together
(camri/members.py), each a normal run in its own workdir: its config.json is
the one it would have alone plus "population", the record of this population.
Running the same command again resumes every member; a member can also be
resumed alone with its own `camri.main` command (its launch.json has it).

Exit status: as camri.main's, for the population as a whole (2: a member's
config or workdir is refused, before anything is written); a member that
failed (NaN, a failed write) stops alone, with its one line in its
workdir's failed.json, and the population exits with the first failed
member's status once the others have finished.
"""

import contextlib
import json
import os
import sys
from typing import NamedTuple

from absl import app
from absl import flags
from ml_collections import config_flags

from camri import cli
from camri import config_fields
from camri import entry as main_lib
from camri.config_lib import ConfigError

def parse_member(args: list[str]):
  """(config, workdir) of a member's `camri.main` arguments, parsed as camri.main parses them."""
  values = flags.FlagValues()
  argv = ["camri.main", *args]
  config_flag = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                                lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  try:
    values(argv)
    config_flag.value.get("dataset")  # A config file that failed to load raises here.
  except (flags.Error, AttributeError, KeyError) as e:
    raise ConfigError(cli.config_error(e, args) or str(e)) from e
  except IOError as e:
    raise ConfigError(cli.config_file_error(e)) from e
  if not values.workdir:
    raise ConfigError(f"a member's arguments lack --workdir: {args}")
  return config_flag.value, values.workdir


class Spec(NamedTuple):
  populations: list[list[list[str]]]  # Each population's members' argument lists.
  compilation_cache: str | None


def read_spec(path: str) -> Spec:
  """The populations of a POPULATION.json and its compilation cache."""
  try:
    with open(path) as f:
      spec = json.load(f)
    populations = spec["populations"] if "populations" in spec else [spec["members"]]
    cache = spec.get("compilation_cache")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ConfigError(f"population file {path} is unreadable ({e}): write it as "
                      '{"members": [[camri.main args...], ...]}') from e
  if not populations or not all(p and all(isinstance(m, list) for m in p)
                                for p in populations):
    raise ConfigError(f"population file {path} lists no members")
  return Spec(populations, cache)


def program(config) -> dict:
  """The config as a dict without its member fields: what a population's runs share."""
  record = json.loads(config.to_json_best_effort())
  for field in config_fields.member_fields(config.loss.name):
    *parents, leaf = field.split(".")
    node = record
    for part in parents:
      node = node[part]
    node.pop(leaf, None)
  return record


def check_one_program(configs, workdirs):
  """Raises ConfigError unless the configs differ only in their member fields."""
  first = program(configs[0])
  for config, workdir in zip(configs[1:], workdirs[1:]):
    other = program(config)
    if other != first:
      field = next(k for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k))
      raise ConfigError(
          f"--workdir {workdir} cannot join the population of {workdirs[0]}: their configs "
          f"differ in {field!r} ({first.get(field)!r} vs {other.get(field)!r}), and members "
          f"may differ only in {', '.join(config_fields.member_fields(configs[0].loss.name))}")


def _train(spec_path: str, spec: Spec):
  """(configs, workdirs, each member's metrics.csv rows, the StopRequest), of every population
  trained (one after the other, until a stop request)."""
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri.preemption import StopRequest  # pylint: disable=g-import-not-at-top
  stop = StopRequest()
  trained = ([], [], [])
  try:
    populations = [[parse_member(args) for args in p] for p in spec.populations]
    workdirs = [os.path.abspath(workdir) for p in populations for _, workdir in p]
    if len(set(workdirs)) != len(workdirs):
      raise ConfigError(f"population file {spec_path} names a --workdir twice")
    stop.install()
    for number, members in enumerate(populations):
      if stop:
        break
      record = lambda i: {"file": os.path.abspath(spec_path), "population": number,  # pylint: disable=cell-var-from-loop
                          "size": len(members), "member": i}  # pylint: disable=cell-var-from-loop
      with contextlib.ExitStack() as held:
        for _, workdir in members:
          held.enter_context(main_lib.holding_workdir(workdir))
        from camri.data import folder  # pylint: disable=g-import-not-at-top  (loads TensorFlow)
        with folder.one_scan_per_tree():
          configs = [prepare.prepare_run(config, workdir, population=record(i))
                     for i, (config, workdir) in enumerate(members)]
        workdirs = [workdir for _, workdir in members]
        check_one_program(configs, workdirs)
        from camri import train  # pylint: disable=g-import-not-at-top
        rows = train.train_runs(configs, workdirs, stop, population=True)
      for done, new in zip(trained, (configs, workdirs, rows)):
        done.extend(new)
    return (*trained, stop)
  except Exception as e:  # pylint: disable=broad-except
    status, message = main_lib.exit_status(e)
    if status is None:
      raise
    main_lib.fail(message, status)
  finally:
    stop.uninstall()


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one POPULATION.json")
  import jax  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri import run_log  # pylint: disable=g-import-not-at-top
  prepare.setup_runtime()
  if not main_lib.show_traceback():
    main_lib.quiet_failed_saves()
  if jax.process_count() > 1:
    main_lib.fail("a population trains in one process (on all its devices): launch the runs "
                  "alone for several hosts", 2)
  try:
    spec = read_spec(argv[1])
  except ConfigError as e:
    main_lib.fail(e, 2)
  prepare.use_compilation_cache(spec.compilation_cache)
  configs, workdirs, rows, stop = _train(argv[1], spec)
  finished = [bool(r) and r[-1]["epoch"] == c.num_epochs for c, r in zip(configs, rows)]
  finished += [False] * (sum(map(len, spec.populations)) - len(rows))  # Not started.
  failures = [(w, run_log.read_failure(w)) for w in workdirs]
  failures = [(w, f) for w, f in failures if f is not None]
  for workdir, failure in failures:
    print(f"error: {workdir}: {failure['error']}", file=sys.stderr)
  if stop and not all(finished):
    print(f"stopped by {stop.signal}. Resume with the same command:\n  "
          f"{os.path.basename(sys.executable)} -m camri.population {argv[1]}", file=sys.stderr)
    sys.exit(143 if stop.signal == "SIGTERM" else 130)
  if failures:
    sys.exit(failures[0][1]["status"])
  accuracies = [r[-1]["test_accuracy"] for r in rows if r]
  print(f"done: {len(rows)} runs, epoch {configs[0].num_epochs}, test_accuracy "
        f"{min(accuracies):.4f} to {max(accuracies):.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: (cli.exit_on_help(argv), flags.FLAGS(argv))[1])
