r"""Runs a grid of `camri.main` runs: one workdir per point of a sweep.

    python -m launch.grid SWEEP_FILE[:arg] --root RUNS_DIR --executor local|slurm|dry \
        [--parallel N] [--gpus N] [--time-min M] [--partition P] [--cpus N] [--dry-run]
    python -m launch.grid --config configs/digits.py --sweep loss.margin=0.1,0.2 \
        --sweep seed=0,1,2 --root RUNS_DIR --executor local

A sweep file defines `get_sweep(arg=None)` returning `(config_path, sweep)`
(see `launch.hyper`); `--config` with repeated `--sweep FIELD=V1,V2,...` (or
`FIELD=[python literal list]`) is the product of those axes.

Each run's workdir is `RUNS_DIR/<name>`, the name made from its overrides
sorted by field (`loss.margin=0.19635,loss.name=camri,seed=1`; floats to 6
significant digits; a name over 128 characters or with characters outside
[A-Za-z0-9._=,+-] ends in a hash of the overrides). The launcher writes
`launch.json` (config, overrides, command) into each workdir and refuses a
workdir whose launch.json holds other overrides. A run whose workdir a live
`camri.main` holds (its lock, `camri.workdir_lock`) is reported as running
elsewhere and not started.

Re-running a grid skips finished runs: metrics.csv has a row with epoch ==
num_epochs of the run's config.json. Any other run (new, or with only
config.json or fewer rows) is run with its same command; `camri.main` resumes
it from its checkpoints. On Slurm, a run whose job (recorded in launch.json) is
still in squeue is skipped as well.

Executors: `local` runs --parallel subprocesses at a time (default: as many
as the machine holds, one per GPU or, without GPUs, one per CPU core or per
--cpus cores; see `local_slots`) and waits;
`slurm` submits one job array through submitit (--cluster local|debug run the
same path on this machine); `dry` prints the commands. With --dry-run,
`slurm` prints an sbatch job-array script instead of submitting. A run's
output goes to <workdir>/launch.log.
"""

import argparse
import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import sys

from camri import run_log
from camri import workdir_lock
from launch import executors
from launch import hyper
from launch import populations

LAUNCH_FILE = "launch.json"
DEFAULT_MODULE = "camri.main"
MAX_NAME_LENGTH = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  workdir: str
  config: str
  overrides: dict
  command: tuple
  base_args: tuple = ()  # `--config.<field>=<value>` of every run of the grid, before its overrides.


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def _name_value(value):
  if isinstance(value, float):
    return format(value, ".6g")
  if isinstance(value, (list, tuple)):
    return "+".join(_name_value(v) for v in value)
  return str(value)


def run_name(overrides):
  """A stable, filesystem-safe, readable directory name for a run's overrides."""
  if not overrides:
    return "base"
  text = ",".join(f"{k}={_name_value(v)}" for k, v in sorted(overrides.items()))
  name = _UNSAFE.sub("_", text)
  if name != text or len(name) > MAX_NAME_LENGTH:
    canonical = json.dumps(_jsonable(overrides), sort_keys=True)
    digest = hashlib.sha1(canonical.encode()).hexdigest()[:10]
    name = f"{name[:MAX_NAME_LENGTH - 11]}-{digest}"
  return name


def cli_value(value):
  """The text of `--config.field=<text>` that ml_collections parses back to `value`."""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(repr(v) for v in value) + ",)" if value else "()"
  return str(value)


def make_command(config, workdir, overrides, module=DEFAULT_MODULE, python=sys.executable, base_args=()):
  return (python, "-m", module, "--config", config, "--workdir", workdir, *base_args,
          *(f"--config.{k}={cli_value(v)}" for k, v in sorted(overrides.items())))


def expand(config, sweep, root, module=DEFAULT_MODULE, python=sys.executable, base_args=()):
  """The runs of a sweep: one `Run` per override dict, workdir root/<name>.

  `base_args`, `--config.<field>=<value>` strings, go to every run's command
  (not its name) before its own overrides.
  """
  root = os.path.abspath(root)
  runs, names = [], {}
  for overrides in hyper.as_sweep(sweep):
    name = run_name(overrides)
    if name in names:
      if names[name] == overrides:
        continue
      raise ValueError(f"two runs get the directory name {name!r}: {names[name]} and {overrides}")
    names[name] = overrides
    workdir = os.path.join(root, name)
    runs.append(Run(name, workdir, config, dict(overrides),
                    make_command(config, workdir, overrides, module, python, base_args),
                    tuple(base_args)))
  return runs


def status(run):
  """'finished', 'unfinished' (its workdir exists) or 'new'."""
  if run_log.is_finished(run.workdir):
    return "finished"
  return "unfinished" if os.path.isdir(run.workdir) else "new"


def read_launch_file(workdir):
  """The workdir's launch.json as a dict ({} when absent)."""
  path = os.path.join(workdir, LAUNCH_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def check_workdir(run):
  """Raises when the run's workdir was launched with other overrides or another config."""
  previous = read_launch_file(run.workdir)
  if previous and (previous.get("overrides") != _jsonable(run.overrides)
                   or previous.get("config") != run.config
                   or previous.get("base_args", []) != list(run.base_args)):
    base = lambda args: f" {' '.join(args)}" if args else ""
    raise ValueError(f"workdir {run.workdir} holds a run of config {previous.get('config')!r}"
                     f"{base(previous.get('base_args', []))} with overrides "
                     f"{previous.get('overrides')}, not {run.config!r}{base(run.base_args)} with "
                     f"{run.overrides}")


def write_launch_file(run, **extra):
  """Records the run's config, overrides and command (and e.g. its Slurm job id) in its workdir."""
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, LAUNCH_FILE), "w") as f:
    json.dump({"config": run.config, "base_args": list(run.base_args),
               "overrides": _jsonable(run.overrides), "command": list(run.command), **extra}, f,
              indent=2)


def pending(runs, queued=frozenset(), out=None):
  """The runs to start: not finished, not a Slurm job in `queued` (ids of queued jobs), and
  not running elsewhere (a live process holds the workdir's lock, `camri.workdir_lock`).

  Prints how many are skipped, queued, running elsewhere, resumed and new.
  """
  out = out or sys.stderr
  counts = {"finished": 0, "queued": 0, "elsewhere": 0, "unfinished": 0, "new": 0}
  todo = []
  for run in runs:
    check_workdir(run)
    state = status(run)
    if state == "unfinished" and read_launch_file(run.workdir).get("slurm_job_id") in queued:
      state = "queued"
    if state == "unfinished" and (holder := workdir_lock.busy(run.workdir)) is not None:
      state = "elsewhere"
      print(f"running elsewhere: {run.name} ({holder.describe()})", file=out)
    counts[state] += 1
    if state in ("unfinished", "new"):
      todo.append(run)
  queued_text = f"{counts['queued']} queued or running on Slurm (skipped), " if counts["queued"] else ""
  elsewhere_text = (f"{counts['elsewhere']} running elsewhere (skipped), "
                    if counts["elsewhere"] else "")
  print(f"{len(runs)} runs: {counts['finished']} finished (skipped), {queued_text}"
        f"{elsewhere_text}{counts['unfinished']} unfinished (resumed), {counts['new']} new",
        file=out)
  return todo


def load_sweep_file(spec):
  """Calls get_sweep(arg) of the file in 'path/to/sweep.py[:arg]'; returns (config, sweep)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"sweep file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_camri_sweep", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"sweep file {path!r} defines no get_sweep(arg)")
  result = module.get_sweep(arg) if arg else module.get_sweep()
  if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str)):
    raise ValueError(f"get_sweep of {path!r} must return (config_path, sweep), got {result!r}")
  return result[0], hyper.as_sweep(result[1])


def _parse_value(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_axis(text):
  """'loss.margin=0.1,0.2' or 'loss.margin=[(0.1,), (0.2,)]' -> one sweep axis."""
  key, sep, values = text.partition("=")
  if not sep or not values:
    raise ValueError(f"--sweep must be FIELD=V1,V2,... or FIELD=[...], got {text!r}")
  if values.lstrip().startswith("["):
    parsed = _parse_value(values)
    if not isinstance(parsed, list):
      raise ValueError(f"--sweep {key}: {values!r} is not a Python list")
  else:
    parsed = [_parse_value(v) for v in values.split(",")]
  return hyper.sweep(key, parsed)


def add_launch_args(parser):
  """The options shared by launch.grid and launch.protocol: where and how runs execute."""
  parser.add_argument("--root", required=True, help="directory holding one workdir per run")
  parser.add_argument("--executor", choices=("local", "slurm", "dry"), default="dry")
  parser.add_argument("--dry-run", action="store_true",
                      help="print instead of running: commands (local, dry) or an sbatch script (slurm)")
  parser.add_argument("--module", default=DEFAULT_MODULE,
                      help="python module run as `python -m MODULE --config C --workdir W --config.k=v`")
  parser.add_argument("--parallel", type=int, default=None,
                      help="local: concurrent runs (default: as many as the machine holds: one per "
                      "GPU, each on its own, or without GPUs the CPU cores // --cpus); slurm: array "
                      "tasks running at once (default: no limit)")
  parser.add_argument("--cuda-devices", default="",
                      help="local: comma-separated GPU ids given to the parallel slots in turn "
                      "(default with no --parallel: the machine's GPUs, CUDA_VISIBLE_DEVICES or "
                      "nvidia-smi's)")
  parser.add_argument("--gpus", type=int, default=1, help="slurm: GPUs per run")
  parser.add_argument("--cpus", type=int, default=None,
                      help="CPUs per run: slurm's request; local: sizes the default --parallel "
                      "(default 1: a run per core)")
  parser.add_argument("--mem-gb", type=float, default=None, help="slurm: memory per run")
  parser.add_argument("--time-min", type=int, default=None, help="slurm: time limit per run, minutes")
  parser.add_argument("--partition", default=None, help="slurm: partition")
  parser.add_argument("--job-name", default="camri", help="slurm: job name")
  parser.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                      help="slurm: submitit cluster; local/debug run the submitit path here")
  parser.add_argument("--wait", action="store_true", help="slurm: wait for the jobs to end")
  parser.add_argument("--population", type=int, default=None, metavar="K",
                      help="train runs that can share a program in populations of at most K "
                      "(`python -m camri.population`, one process each; see README, \"Many runs "
                      f"at once\"); 1: every run alone (default: {populations.DEFAULT_SIZE} with "
                      "camri.main, 1 with another --module)")


def slurm_options(args):
  return executors.SlurmOptions(
      job_name=args.job_name, gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb,
      time_min=args.time_min, partition=args.partition,
      array_parallelism=args.parallel)


def local_slots(args, gpus=None, cores=None):
  """(runs at a time, GPU ids given to the slots in turn) of the local executor.

  --parallel and --cuda-devices as given. Without --parallel, as many runs as
  the machine holds: one per GPU (--cuda-devices, else `executors.visible_gpus`),
  each slot on its own GPU; without GPUs, the usable CPU cores // --cpus
  (default 1), at least 1. XLA and tf.data use every core they see, so runs
  on one CPU share its cores; --cpus N runs fewer at once.

  Args:
    args: the parsed launch options.
    gpus, cores: the machine's GPU ids and usable cores (None: detected).
  """
  devices = [d for d in args.cuda_devices.split(",") if d]
  if args.parallel:
    return args.parallel, devices
  devices = devices or list(executors.visible_gpus() if gpus is None else gpus)
  if devices:
    return len(devices), devices
  cores = executors.usable_cores() if cores is None else cores
  return max(1, cores // (args.cpus or 1)), []


def population_size(args) -> int:
  """--population, or its default: populations train `camri.main`'s runs, not another module's."""
  if args.population is None:
    return populations.DEFAULT_SIZE if args.module == DEFAULT_MODULE else 1
  if args.population > 1 and args.module != DEFAULT_MODULE:
    raise ValueError(f"--population {args.population} trains camri.main's runs, not "
                     f"--module {args.module}'s: leave --population out or give 1")
  return args.population


def launch(runs, args, out=None, log=None):
  """Runs, submits or prints (to `out`) the runs that are not finished; progress to `log`.

  With the slurm executor on a real cluster, runs whose recorded job is still in
  squeue are skipped too, so re-running a grid while its jobs run submits nothing twice.

  Returns:
    The names of the runs that failed (local, or slurm with --wait).
  """
  out, log = out or sys.stdout, log or sys.stderr
  size = population_size(args)
  on_slurm = args.executor == "slurm" and args.cluster == "slurm"
  todo = pending(runs, queued=executors.queued_slurm_jobs() if on_slurm else frozenset(), out=log)
  if not todo:
    return []
  root = os.path.abspath(args.root)
  if args.executor == "dry" or args.dry_run:
    if args.executor == "slurm":
      out.write(executors.sbatch_script(todo, slurm_options(args), os.path.join(root, "_slurm")))
    else:
      for run in todo:
        print(shlex.join(run.command), file=out)
    return []
  for run in todo:
    write_launch_file(run)
  members = todo
  local = args.executor == "local"
  parallel, devices = local_slots(args) if local else (None, [])
  if size > 1:
    todo = populations.pack(todo, size, log=log, processes=parallel)
  if local:
    print(f"{parallel} at a time" + (f" on GPUs {','.join(devices)}" if devices else ""), file=log)
    statuses = executors.run_local(todo, parallel=parallel, cuda_devices=devices)
    failed = [run for run in todo if statuses[run.name] != 0]
    for run in failed:
      print(f"failed: {run.name} (log: {os.path.join(run.workdir, executors.LOG_FILE)})", file=log)
    if todo is not members:
      return [run.name for run in members if not run_log.is_finished(run.workdir)]
    return [run.name for run in failed]
  jobs = executors.submit_submitit(todo, os.path.join(root, "_submitit"), slurm_options(args),
                                   cluster=args.cluster)
  if on_slurm:
    for run, job in zip(todo, jobs):
      write_launch_file(run, slurm_job_id=job.job_id)
  print(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)", file=log)
  if not args.wait:
    return []
  failed = []
  for run, job in zip(todo, jobs):
    try:
      job.result()
    except Exception as e:  # pylint: disable=broad-except  # submitit re-raises the task's error
      failed.append(run.name)
      print(f"failed: {run.name}: {e}", file=log)
  return failed


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m launch.grid", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep_file", nargs="?", help="path/to/sweep.py[:arg] defining get_sweep(arg)")
  parser.add_argument("--config", help="base config (without a sweep file)")
  parser.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                      help="an axis (without a sweep file); several axes make their product")
  add_launch_args(parser)
  args = parser.parse_args(argv)
  try:
    if args.sweep_file:
      if args.config or args.sweep:
        raise ValueError("give either a sweep file or --config/--sweep, not both")
      config, sweep = load_sweep_file(args.sweep_file)
    else:
      if not args.config:
        raise ValueError("give a sweep file or --config (with --sweep axes)")
      config, sweep = args.config, hyper.product(*[parse_axis(a) for a in args.sweep])
    runs = expand(config, sweep, args.root, module=args.module)
    failed = launch(runs, args)
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
