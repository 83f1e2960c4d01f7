"""Ways to run a list of commands: local subprocesses, Slurm via submitit, an sbatch script.

Every run's output (stdout and stderr of its command) is appended to
`<workdir>/launch.log`, whichever way it runs.
"""

import concurrent.futures
import dataclasses
import datetime
import getpass
import os
import queue
import shlex
import subprocess

from camri import memory

LOG_FILE = "launch.log"


def run_command(command, workdir, cwd=None, env=None):
  """Runs `command` (a list of strings) in `cwd`, appending its output to the run's log.

  Returns:
    The command's exit status.
  """
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOG_FILE), "a") as log:
    log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
    log.flush()
    return subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def usable_cores() -> int:
  """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def visible_gpus() -> tuple[str, ...]:
  """Ids of the GPUs runs started here may use: CUDA_VISIBLE_DEVICES where set, else nvidia-smi's.

  Empty without GPUs (or without nvidia-smi).
  """
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return tuple(d.strip() for d in visible.split(",") if d.strip() and not d.strip().startswith("-"))
  try:
    result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return ()
  return tuple(result.stdout.split()) if result.returncode == 0 else ()


def run_local(runs, parallel=1, cuda_devices=(), cwd=None):
  """Runs at most `parallel` commands at a time; blocks until all have ended.

  Args:
    runs: `launch.grid.Run`s.
    parallel: number of concurrent subprocesses.
    cuda_devices: device ids (strings); the i-th of the `parallel` slots gets
      CUDA_VISIBLE_DEVICES=cuda_devices[i % len(cuda_devices)]. Empty: that
      variable is passed unchanged.
    cwd: working directory of the commands.

  Every command gets CAMRI_RUNS_PER_HOST=`parallel` (`camri.memory`): the runs
  sharing the machine's memory.

  Returns:
    {run name: exit status}.
  """
  if parallel < 1:
    raise ValueError(f"parallel must be >= 1, got {parallel}")
  slots = queue.Queue()
  for i in range(parallel):
    slots.put(cuda_devices[i % len(cuda_devices)] if cuda_devices else None)

  def work(run):
    device = slots.get()
    try:
      env = {**os.environ, memory.RUNS_PER_HOST: str(parallel)}
      if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
      print(f"start {run.name}", flush=True)
      status = run_command(run.command, run.workdir, cwd=cwd, env=env)
      print(f"{'done' if status == 0 else f'FAILED ({status})'} {run.name}", flush=True)
      return status
    finally:
      slots.put(device)

  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    statuses = list(pool.map(work, runs))
  return {run.name: status for run, status in zip(runs, statuses)}


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """Resources of each array task; None leaves Slurm's default."""
  job_name: str = "camri"
  gpus: int = 1
  cpus: int | None = None
  mem_gb: float | None = None
  time_min: int | None = None
  partition: str | None = None
  array_parallelism: int | None = None


def slurm_task(command, workdir, cwd):
  """The function each submitit array task calls: run the command, fail on non-zero exit."""
  status = run_command(command, workdir, cwd=cwd)
  if status != 0:
    raise RuntimeError(f"exit status {status}: {shlex.join(command)} (log: {os.path.join(workdir, LOG_FILE)})")
  return workdir


def submit_submitit(runs, folder, options, cluster="slurm", cwd=None):
  """Submits the runs as one job array through `submitit.AutoExecutor`.

  Args:
    runs: `launch.grid.Run`s.
    folder: submitit's folder for its pickles and logs.
    options: `SlurmOptions`.
    cluster: "slurm"; "local" or "debug" run the same path on this machine (tests).
    cwd: working directory of the commands (default: the current one).

  Returns:
    The submitit jobs, one per run.
  """
  import submitit  # pylint: disable=import-outside-toplevel

  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  params = dict(name=options.job_name, nodes=1, tasks_per_node=1, gpus_per_node=options.gpus,
                timeout_min=options.time_min, cpus_per_task=options.cpus, mem_gb=options.mem_gb,
                slurm_partition=options.partition, slurm_array_parallelism=options.array_parallelism)
  executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
  cwd = cwd or os.getcwd()
  return executor.map_array(slurm_task, [list(r.command) for r in runs],
                            [r.workdir for r in runs], [cwd] * len(runs))


def queued_slurm_jobs():
  """Ids of this user's jobs in squeue, array tasks one by one ("123_4"); empty without squeue."""
  try:
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()],
                            capture_output=True, text=True, check=False)
  except FileNotFoundError:
    return frozenset()
  return frozenset(result.stdout.split()) if result.returncode == 0 else frozenset()


def sbatch_script(runs, options, log_dir, cwd=None):
  """A bash script submitting the runs as one Slurm job array, index i running runs[i].

  Submit it with `mkdir -p LOG_DIR && sbatch SCRIPT`.
  """
  if not runs:
    raise ValueError("no runs to put in a job array")
  array = f"0-{len(runs) - 1}"
  if options.array_parallelism:
    array += f"%{options.array_parallelism}"
  lines = ["#!/bin/bash", f"#SBATCH --job-name={options.job_name}", f"#SBATCH --array={array}",
           "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1"]
  if options.gpus:
    lines.append(f"#SBATCH --gpus-per-node={options.gpus}")
  if options.cpus:
    lines.append(f"#SBATCH --cpus-per-task={options.cpus}")
  if options.mem_gb:
    lines.append(f"#SBATCH --mem={int(options.mem_gb * 1024)}M")
  if options.time_min:
    lines.append(f"#SBATCH --time={options.time_min}")
  if options.partition:
    lines.append(f"#SBATCH --partition={options.partition}")
  lines += [f"#SBATCH --output={os.path.join(log_dir, '%A_%a.out')}",
            f"# {len(runs)} runs; submit with: mkdir -p {shlex.quote(log_dir)} && sbatch THIS_FILE",
            "set -euo pipefail",
            f"cd {shlex.quote(cwd or os.getcwd())}",
            'case "${SLURM_ARRAY_TASK_ID}" in']
  for i, run in enumerate(runs):
    workdir = shlex.quote(run.workdir)
    log = shlex.quote(os.path.join(run.workdir, LOG_FILE))
    lines.append(f"  {i}) mkdir -p {workdir} && {shlex.join(run.command)} >> {log} 2>&1 ;;")
  lines += ['  *) echo "no run for array index ${SLURM_ARRAY_TASK_ID}" >&2; exit 1 ;;', "esac"]
  return "\n".join(lines) + "\n"
