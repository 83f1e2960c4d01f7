"""Tests of launch.hyper, launch.grid and launch.executors with a fake trainer (fake_main.py)."""

import argparse
import ast
import csv
import json
import os
import re
import shlex
import subprocess

import pytest

from launch import executors
from launch import grid
from launch import hyper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calls(workdir):
  with open(os.path.join(workdir, "calls.txt")) as f:
    return sum(1 for line in f if " start" in line)


def metric_epochs(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    return [int(r["epoch"]) for r in csv.DictReader(f)]


def small_grid_args(root, *extra):
  return ["--config", "configs/fake.py", "--sweep", "loss.name=cross_entropy,camri",
          "--sweep", "seed=0,1", "--root", str(root), "--module", "fake_main", *extra]


# Sweeps.

def test_product_is_every_combination_in_order():
  runs = hyper.product(hyper.sweep("config.loss.margin", [0.1, 0.2]), hyper.sweep("seed", [0, 1, 2]))
  assert runs == [{"loss.margin": m, "seed": s} for m in (0.1, 0.2) for s in (0, 1, 2)]


def test_zip_pairs_the_ith_runs():
  runs = hyper.zip(hyper.sweep("config.loss.margin", [0.1, 0.2]), hyper.sweep("config.loss.scale", [8, 16]))
  assert runs == [{"loss.margin": 0.1, "loss.scale": 8}, {"loss.margin": 0.2, "loss.scale": 16}]


def test_zip_of_unequal_lengths_is_an_error():
  with pytest.raises(ValueError, match="one length"):
    hyper.zip(hyper.sweep("a", [1, 2]), hyper.sweep("b", [1]))


def test_union_concatenates_without_repeats_and_without_foreign_axes():
  seeds = hyper.sweep("seed", [0, 1])
  ce = hyper.product(hyper.fixed("loss.name", "cross_entropy"), seeds)
  camri = hyper.product(hyper.fixed("loss.name", "camri"), hyper.sweep("loss.margin", [0.1, 0.2]), seeds)
  runs = hyper.union(ce, camri, ce)
  assert len(runs) == 2 + 4
  assert runs[:2] == [{"loss.name": "cross_entropy", "seed": 0}, {"loss.name": "cross_entropy", "seed": 1}]
  assert all("loss.margin" not in r for r in runs[:2]) and all("loss.margin" in r for r in runs[2:])


def test_product_setting_a_field_twice_is_an_error():
  with pytest.raises(ValueError, match="loss.margin"):
    hyper.product(hyper.fixed("loss.margin", 0.1), hyper.fixed("config.loss.margin", 0.2))


def test_bad_field_name_is_an_error():
  with pytest.raises(ValueError, match="dotted name"):
    hyper.sweep("loss margin", [1])


def test_a_list_of_axes_is_their_product():
  axes = [hyper.sweep("a", [1, 2]), hyper.sweep("b", [3])]
  assert hyper.as_sweep(axes) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


# Names and commands.

def test_run_name_is_sorted_readable_and_stable():
  overrides = {"seed": 1, "loss.name": "camri", "loss.margin": 0.19634954084936207}
  assert grid.run_name(overrides) == "loss.margin=0.19635,loss.name=camri,seed=1"
  assert grid.run_name(dict(reversed(list(overrides.items())))) == grid.run_name(overrides)
  assert grid.run_name({"loss.margin": (0.1, 0.25), "loss.important_classes": (3, 5)}) == (
      "loss.important_classes=3+5,loss.margin=0.1+0.25")
  assert grid.run_name({}) == "base"


def test_long_or_unsafe_names_are_hashed():
  long = {f"field{i}": 1000 + i for i in range(20)}
  name = grid.run_name(long)
  assert len(name) == grid.MAX_NAME_LENGTH and re.fullmatch(r".*-[0-9a-f]{10}", name)
  assert grid.run_name({**long, "field0": 5}) != name
  unsafe = grid.run_name({"data_dir": "/data/x y"})
  assert re.fullmatch(r"data_dir=_data_x_y-[0-9a-f]{10}", unsafe)
  assert grid.run_name({"data_dir": "/data/x_y"}) != unsafe


def test_expand_refuses_two_runs_with_one_name():
  with pytest.raises(ValueError, match="same|directory name"):
    grid.expand("c.py", hyper.sweep("loss.margin", [0.19635, 0.196350001]), "/tmp/r")


def test_cli_values_parse_back():
  assert grid.cli_value(0.19634954084936207) == "0.19634954084936207"
  assert ast.literal_eval(grid.cli_value((0.1, 0.25))) == (0.1, 0.25)
  assert ast.literal_eval(grid.cli_value((3,))) == (3,)
  assert ast.literal_eval(grid.cli_value(("cat", "dog"))) == ("cat", "dog")
  assert grid.cli_value(16) == "16" and grid.cli_value("worst1") == "worst1"


def test_expand_makes_one_command_per_run(tmp_path):
  runs = grid.expand("configs/digits.py:quick", hyper.product(hyper.fixed("loss.name", "camri"),
                                                              hyper.sweep("seed", [0, 1])),
                     tmp_path, python="python")
  workdir = str(tmp_path / "loss.name=camri,seed=1")
  assert runs[1].workdir == workdir
  assert runs[1].command == ("python", "-m", "camri.main", "--config", "configs/digits.py:quick",
                             "--workdir", workdir, "--config.loss.name=camri", "--config.seed=1")


def test_digits_sweep_file():
  config, sweep = grid.load_sweep_file(os.path.join(REPO, "launch/sweeps/digits.py"))
  names = [grid.run_name(o) for o in sweep]
  assert config == "configs/digits.py"
  assert names[:3] == [f"loss.name=cross_entropy,seed={s}" for s in range(3)]
  assert names[3:] == [f"loss.margin={m},loss.name=camri,seed={s}"
                       for m in ("0.19635", "0.392699") for s in range(3)]


def test_sweep_file_argument(tmp_path):
  path = tmp_path / "s.py"
  path.write_text("from launch import hyper\n"
                  "def get_sweep(arg):\n"
                  "  return 'configs/x.py', [hyper.sweep('seed', range(int(arg)))]\n")
  assert grid.load_sweep_file(f"{path}:3") == ("configs/x.py", [{"seed": 0}, {"seed": 1}, {"seed": 2}])


def test_parse_axis():
  assert grid.parse_axis("config.loss.margin=0.1,0.2") == [{"loss.margin": 0.1}, {"loss.margin": 0.2}]
  assert grid.parse_axis("loss.name=camri,arcface") == [{"loss.name": "camri"}, {"loss.name": "arcface"}]
  assert grid.parse_axis("loss.margin=[(0.1, 0.2), (0.3,)]") == [{"loss.margin": (0.1, 0.2)},
                                                                 {"loss.margin": (0.3,)}]
  with pytest.raises(ValueError, match="--sweep"):
    grid.parse_axis("seed")


# Local executor: finished runs are skipped, unfinished ones resumed.

def test_local_grid_skips_finished_and_resumes_unfinished(tmp_path, fake_env, capsys):
  assert grid.main(small_grid_args(tmp_path, "--executor", "local", "--parallel", "2")) == 0
  workdirs = sorted(str(p) for p in tmp_path.iterdir())
  assert [os.path.basename(w) for w in workdirs] == [
      "loss.name=camri,seed=0", "loss.name=camri,seed=1",
      "loss.name=cross_entropy,seed=0", "loss.name=cross_entropy,seed=1"]
  for w in workdirs:
    assert metric_epochs(w) == [1, 2, 3] and calls(w) == 1
    assert "--config.seed=" in open(os.path.join(w, executors.LOG_FILE)).read()
    assert json.load(open(os.path.join(w, grid.LAUNCH_FILE)))["config"] == "configs/fake.py"
  capsys.readouterr()

  assert grid.main(small_grid_args(tmp_path, "--executor", "local")) == 0
  assert "4 finished (skipped), 0 unfinished (resumed), 0 new" in capsys.readouterr().err
  assert [calls(w) for w in workdirs] == [1, 1, 1, 1]

  # One run cut to one epoch, one with only config.json: both run again with the same command.
  fewer_rows, only_config = workdirs[0], workdirs[1]
  with open(os.path.join(fewer_rows, "metrics.csv")) as f:
    lines = f.readlines()
  with open(os.path.join(fewer_rows, "metrics.csv"), "w") as f:
    f.writelines(lines[:2])
  os.remove(os.path.join(only_config, "metrics.csv"))
  assert grid.main(small_grid_args(tmp_path, "--executor", "local")) == 0
  assert "2 finished (skipped), 2 unfinished (resumed), 0 new" in capsys.readouterr().err
  assert [calls(w) for w in workdirs] == [2, 2, 1, 1]
  assert metric_epochs(fewer_rows) == [1, 2, 3] and metric_epochs(only_config) == [1, 2, 3]


def test_preempted_run_fails_then_resumes(tmp_path, fake_env, monkeypatch, capsys):
  args = ["--config", "c.py", "--sweep", "seed=0", "--root", str(tmp_path), "--module", "fake_main",
          "--executor", "local"]
  monkeypatch.setenv("FAKE_MAIN_STOP_AFTER", "2")
  assert grid.main(args) == 1
  assert "failed: seed=0" in capsys.readouterr().err
  assert metric_epochs(tmp_path / "seed=0") == [1, 2]
  monkeypatch.delenv("FAKE_MAIN_STOP_AFTER")
  assert grid.main(args) == 0
  assert metric_epochs(tmp_path / "seed=0") == [1, 2, 3] and calls(tmp_path / "seed=0") == 2


def test_populations_are_for_camri_main_only(tmp_path, fake_env, capsys):
  args = ["--config", "c.py", "--sweep", "seed=0,1", "--root", str(tmp_path), "--module", "fake_main",
          "--executor", "local"]
  with pytest.raises(SystemExit) as e:
    grid.main([*args, "--population", "2"])
  assert e.value.code == 2 and not os.listdir(tmp_path)
  assert capsys.readouterr().err == (
      "error: --population 2 trains camri.main's runs, not --module fake_main's: leave "
      "--population out or give 1\n")
  assert grid.main(args) == 0  # Without --population, another module's runs run alone.
  assert calls(tmp_path / "seed=0") == calls(tmp_path / "seed=1") == 1


def test_local_parallelism_is_bounded_and_devices_are_shared_out(tmp_path, fake_env, monkeypatch):
  monkeypatch.setenv("FAKE_MAIN_SLEEP", "0.1")
  args = ["--config", "c.py", "--sweep", "seed=0,1,2,3,4", "--root", str(tmp_path), "--module",
          "fake_main", "--executor", "local", "--parallel", "2", "--cuda-devices", "0,1"]
  assert grid.main(args) == 0
  intervals = []
  for w in tmp_path.iterdir():
    start, end = open(w / "calls.txt").read().splitlines()
    intervals.append((float(start.split()[0]), float(end.split()[0]), start.split()[2]))
    assert start.split()[3] == "runs_per_host=2"  # Each run's share of the host's memory.
  assert {device for *_, device in intervals} <= {"0", "1"}
  for t, _, _ in intervals:  # at every start, at most 2 runs are running, on distinct devices
    running = [d for s, e, d in intervals if s <= t < e]
    assert len(running) <= 2 and len(set(running)) == len(running)


@pytest.mark.parametrize("options, gpus, cores, expected", [
    ([], (), 8, (8, [])),  # No GPU: a run per core.
    (["--cpus", "3"], (), 8, (2, [])),  # --cpus cores per run.
    (["--cpus", "4"], (), 2, (1, [])),  # At least one.
    ([], ("0", "1", "2"), 8, (3, ["0", "1", "2"])),  # A run per GPU, each on its own.
    (["--cuda-devices", "1,3"], ("0", "1", "2", "3"), 8, (2, ["1", "3"])),
    (["--parallel", "4"], ("0", "1"), 8, (4, [])),  # As given: every run sees every GPU.
    (["--parallel", "4", "--cuda-devices", "0,1"], (), 8, (4, ["0", "1"])),
])
def test_local_runs_at_once_default_to_what_the_machine_holds(options, gpus, cores, expected):
  parser = argparse.ArgumentParser()
  grid.add_launch_args(parser)
  args = parser.parse_args(["--root", "r", "--executor", "local", *options])
  assert grid.local_slots(args, gpus=gpus, cores=cores) == expected


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
  assert executors.visible_gpus() == ("2", "5")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  assert executors.visible_gpus() == ()


def test_a_workdir_of_other_overrides_is_refused(tmp_path):
  (run,) = grid.expand("c.py", [{"seed": 0}], tmp_path)
  grid.write_launch_file(run)
  (other,) = grid.expand("c.py", [{"seed": 0}], tmp_path)
  object.__setattr__(other, "overrides", {"seed": 0.0000001})
  with pytest.raises(ValueError, match="holds a run"):
    grid.check_workdir(other)


# Dry runs.

def test_dry_run_prints_the_commands_and_touches_nothing(tmp_path, capsys):
  root = tmp_path / "runs"
  assert grid.main(small_grid_args(root, "--executor", "dry")) == 0
  printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
  expected = grid.expand("configs/fake.py", hyper.product(hyper.sweep("loss.name", ["cross_entropy", "camri"]),
                                                          hyper.sweep("seed", [0, 1])),
                         root, module="fake_main")
  assert printed == [list(r.command) for r in expected]
  assert not root.exists()


def parse_job_array(script):
  lines = script.splitlines()
  assert lines[0] == "#!/bin/bash"
  (array,) = [l for l in lines if l.startswith("#SBATCH --array=")]
  first, last = map(int, re.fullmatch(r"#SBATCH --array=(\d+)-(\d+)(%\d+)?", array).groups()[:2])
  cases = [re.fullmatch(r"  (\d+)\) (.*) ;;", l) for l in lines]
  commands = {int(m.group(1)): m.group(2) for m in cases if m}
  assert first == 0 and sorted(commands) == list(range(last + 1))
  return [commands[i] for i in range(last + 1)]


def test_slurm_dry_run_is_a_job_array_script_that_runs(tmp_path, fake_env, capsys):
  assert grid.main(small_grid_args(tmp_path, "--executor", "slurm", "--dry-run", "--gpus", "2",
                                   "--time-min", "90", "--partition", "gpu", "--parallel", "3")) == 0
  script = capsys.readouterr().out
  commands = parse_job_array(script)
  assert len(commands) == 4
  for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --time=90", "#SBATCH --partition=gpu",
               "#SBATCH --array=0-3%3"):
    assert line in script.splitlines()
  expected = grid.expand("configs/fake.py", hyper.product(hyper.sweep("loss.name", ["cross_entropy", "camri"]),
                                                          hyper.sweep("seed", [0, 1])),
                         tmp_path, module="fake_main")
  for command, run in zip(commands, expected):
    assert shlex.join(run.command) in command
  path = tmp_path / "job.sh"
  path.write_text(script)
  subprocess.run(["bash", "-n", str(path)], check=True)
  assert not any(tmp_path.glob("loss.*"))

  # Running array index 2 runs the third run; an index past the end fails.
  subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"}, check=True)
  assert metric_epochs(expected[2].workdir) == [1, 2, 3]
  assert subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "4"}).returncode == 1

  # The finished run leaves the array.
  assert grid.main(small_grid_args(tmp_path, "--executor", "slurm", "--dry-run")) == 0
  commands = parse_job_array(capsys.readouterr().out)
  assert len(commands) == 3 and not any(expected[2].workdir in c for c in commands)


# Slurm through submitit, on submitit's local and debug clusters.

@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_job_array_runs_the_commands(tmp_path, fake_env, cluster, capsys):
  args = small_grid_args(tmp_path, "--executor", "slurm", "--cluster", cluster, "--gpus", "0",
                         "--time-min", "5", "--wait")
  assert grid.main(args) == 0
  assert "submitted job array" in capsys.readouterr().err
  runs = [p for p in tmp_path.iterdir() if p.name.startswith("loss.")]
  assert len(runs) == 4
  for w in runs:
    assert metric_epochs(w) == [1, 2, 3] and calls(w) == 1
  assert grid.main(args) == 0
  assert "4 finished (skipped)" in capsys.readouterr().err


def test_submitit_reports_a_failed_task(tmp_path, fake_env, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_MAIN_STOP_AFTER", "1")
  args = ["--config", "c.py", "--sweep", "seed=0", "--root", str(tmp_path), "--module", "fake_main",
          "--executor", "slurm", "--cluster", "debug", "--gpus", "0", "--wait"]
  assert grid.main(args) == 1
  assert "failed: seed=0" in capsys.readouterr().err


def test_runs_whose_slurm_job_is_still_queued_are_not_submitted_again(tmp_path, monkeypatch, capsys):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  squeue = bin_dir / "squeue"
  squeue.write_text("#!/bin/sh\nprintf '77_0\\n77_1\\n'\n")  # array 77: tasks 0 and 1 still queued
  squeue.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  root = tmp_path / "runs"
  runs = grid.expand("c.py", hyper.sweep("seed", [0, 1, 2]), root)
  grid.write_launch_file(runs[0], slurm_job_id="77_0")
  grid.write_launch_file(runs[1], slurm_job_id="76_1")  # an ended job: submitted again
  args = ["--config", "c.py", "--sweep", "seed=0,1,2", "--root", str(root), "--executor", "slurm",
          "--dry-run"]
  assert grid.main(args) == 0
  captured = capsys.readouterr()
  assert "1 queued or running on Slurm (skipped), 1 unfinished (resumed), 1 new" in captured.err
  commands = parse_job_array(captured.out)
  assert len(commands) == 2 and runs[1].workdir in commands[0] and runs[2].workdir in commands[1]
