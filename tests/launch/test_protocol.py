"""launch.protocol with the fake trainer (fake_main.py: 5 classes, recall order 0, 3, 1, 4, 2)."""

import csv
import io
import json
import math
import os
import shlex

import pytest

from camri import report
from launch import protocol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_ce_run(workdir, recalls, num_epochs=2):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"num_epochs": num_epochs, "num_classes": len(recalls)}, f)
  with open(os.path.join(workdir, "metrics.csv"), "w") as f:
    f.write("epoch,test_accuracy," + ",".join(f"test_recall_{k}" for k in range(len(recalls))) + "\n")
    f.write("1,0.5," + ",".join("0.0" for _ in recalls) + "\n")  # not the last epoch: ignored
    f.write(f"{num_epochs},0.8," + ",".join(map(str, recalls)) + "\n")


def test_pick_classes_sorts_by_mean_recall_then_index(tmp_path):
  # Means: 0.7, 0.5, 0.9, 0.5, 0.8, 0.6 -> order 1, 3 (tie: lower index first), 5, 0, 4, 2.
  write_ce_run(tmp_path / "a", [0.6, 0.4, 0.9, 0.6, 0.8, 0.6])
  write_ce_run(tmp_path / "b", [0.8, 0.6, 0.9, 0.4, 0.8, 0.6])
  classes, mean = protocol.pick_classes([tmp_path / "a", tmp_path / "b"])
  assert mean == pytest.approx([0.7, 0.5, 0.9, 0.5, 0.8, 0.6])
  assert classes == {"worst1": 1, "worst2": 3, "median": 0}  # index 6 // 2 = 3 of the order


def test_pick_classes_needs_four_classes(tmp_path):
  write_ce_run(tmp_path / "a", [0.6, 0.4, 0.9])
  with pytest.raises(ValueError, match="at least 4 classes"):
    protocol.pick_classes([tmp_path / "a"])


def test_stage2_sweep_has_every_method_role_and_seed():
  runs = protocol.stage2_sweep({"worst1": 0, "median": 4}, seeds=2, margins=(0.1, 0.2), scales=(16.0,),
                               weights=(2.0, 5.0))
  assert len(runs) == 2 * (2 * 2 * 1 + 2 * 2) * 2
  assert {"loss.important_classes": 4, "tag": "median", "loss.name": "arcface", "loss.margin": 0.2,
          "loss.scale": 16.0, "seed": 1} in runs
  assert {"loss.important_classes": 0, "tag": "worst1", "loss.name": "rwwce", "loss.fn_weight": 5.0,
          "loss.fp_weight": 1.0, "seed": 0} in runs
  assert {"loss.important_classes": 4, "tag": "median", "loss.name": "wce", "loss.important_weight": 2.0,
          "seed": 1} in runs
  assert not any("loss.margin" in r for r in runs if r["loss.name"] in ("wce", "rwwce"))


def args(root, *extra):
  return ["--dataset", "digits", "--config", "configs/fake.py", "--seeds", "2", "--grid", "smoke",
          "--root", str(root), "--module", "fake_main", *extra]


def test_local_protocol_runs_both_stages_then_nothing(tmp_path, fake_env, capsys):
  assert protocol.main(args(tmp_path, "--executor", "local", "--parallel", "2")) == 0
  root = tmp_path / "digits"
  picked = json.loads((root / protocol.CLASSES_FILE).read_text())
  assert (picked["worst1"], picked["worst2"], picked["median"]) == (0, 3, 1)
  assert picked["class_names"] == {"worst1": "c0", "worst2": "c3", "median": "c1"}
  assert "worst1 = 0 (c0), recall 0.5005" in capsys.readouterr().err
  workdirs = [p for p in root.iterdir() if p.is_dir()]
  assert len(workdirs) == 2 + 3 * 4 * 2
  run = root / "loss.important_classes=3,loss.margin=0.19635,loss.name=camri,loss.scale=16,seed=1,tag=worst2"
  config = json.loads((run / "config.json").read_text())
  assert config["loss"]["important_classes"] == [3] and config["tag"] == "worst2" and config["seed"] == 1
  assert (root / "loss.important_classes=1,loss.important_weight=5,loss.name=wce,seed=0,tag=median").is_dir()

  assert protocol.main(args(tmp_path, "--executor", "local")) == 0
  err = capsys.readouterr().err
  assert "2 runs: 2 finished (skipped)" in err and "24 runs: 24 finished (skipped)" in err
  assert all(open(w / "calls.txt").read().count(" start") == 1 for w in workdirs)

  rows = list(csv.DictReader(io.StringIO(report.report(str(root), "last", "csv", warn=lambda m: None))))
  assert [(r["role"], r["method"]) for r in rows] == [
      (role, method) for role in ("worst1", "worst2", "median")
      for method in ("cross_entropy", "wce", "rwwce", "arcface", "camri")]
  ce_worst1 = rows[0]
  assert ce_worst1["classes"] == "0" and float(ce_worst1["recall_mean"]) == pytest.approx(0.5005)


def test_stage2_waits_for_stage1(tmp_path, fake_env, capsys):
  assert protocol.main(args(tmp_path, "--executor", "dry")) == 0
  captured = capsys.readouterr()
  commands = [shlex.split(line) for line in captured.out.splitlines()]
  assert len(commands) == 2 and all("--config.loss.name=cross_entropy" in c for c in commands)
  assert "stage 2 waits for stage 1: 2 of 2" in captured.err

  for command in commands:  # stage 1 ends (as jobs would), then the same command gives stage 2
    assert os.system(shlex.join(command) + " > /dev/null") == 0
  assert protocol.main(args(tmp_path, "--executor", "slurm", "--dry-run")) == 0
  script = capsys.readouterr().out
  assert "#SBATCH --array=0-23" in script
  assert "--config.loss.important_classes=1 --config.loss.margin=0.19634954084936207 " \
         "--config.loss.name=arcface --config.loss.scale=16.0 --config.seed=0 --config.tag=median" in script


def test_protocol_through_submitit(tmp_path, fake_env):
  assert protocol.main(args(tmp_path, "--executor", "slurm", "--cluster", "debug", "--gpus", "0",
                            "--wait")) == 0
  assert sum(1 for p in (tmp_path / "digits").iterdir() if p.name.startswith("loss.")) == 26


# --classes paper: the authors' classes and CAMRI settings.

def _overrides(command):
  return dict(arg[len("--config."):].split("=", 1) for arg in command if arg.startswith("--config."))


def test_paper_classes_dry_run_prints_cat_dog_airplane_with_the_authors_settings(tmp_path, capsys):
  root = tmp_path / "runs"
  assert protocol.main(["--dataset", "cifar10", "--classes", "paper", "--seeds", "2",
                        "--root", str(root), "--executor", "dry"]) == 0
  captured = capsys.readouterr()
  commands = [shlex.split(line) for line in captured.out.splitlines()]
  assert all(c[c.index("--config") + 1] == "configs/cifar10.py" for c in commands)
  runs = [_overrides(c) for c in commands]
  camri = {(r["loss.important_classes"], float(r["loss.margin"]), float(r["loss.scale"]), r["tag"],
            r["seed"]) for r in runs if r["loss.name"] == "camri"}
  assert camri == {(k, margin, scale, role, seed) for k, margin, scale, role in [
      ("3", 4 * math.pi / 64, 16.0, "worst1"),  # cat
      ("5", 5 * math.pi / 64, 16.0, "worst2"),  # dog
      ("0", 4 * math.pi / 64, 8.0, "median"),  # airplane
  ] for seed in ("0", "1")}
  # Stage 1 is printed with stage 2, and the baselines keep their grids (--grid paper).
  methods = [r["loss.name"] for r in runs]
  assert methods.count("cross_entropy") == 2 and len(camri) == 6
  grid = protocol.GRIDS["paper"]
  assert methods.count("arcface") == 3 * len(grid["margins"]) * len(grid["scales"]) * 2
  assert methods.count("wce") == methods.count("rwwce") == 3 * len(grid["weights"]) * 2
  assert ("important classes (the authors'): worst1 = 3 (cat), CAMRI m = 4pi/64, s = 16; "
          "worst2 = 5 (dog), CAMRI m = 5pi/64, s = 16; median = 0 (airplane), CAMRI m = 4pi/64, "
          "s = 8") in captured.err
  assert (f"report, once the runs have ended: python -m camri.report {root}/cifar10 --reference"
          in captured.err)
  assert not root.exists()


def test_paper_classes_of_another_dataset_are_a_one_line_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    protocol.main(["--dataset", "gtsrb", "--classes", "paper", "--root", str(tmp_path)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == ("error: --classes paper: the authors released settings for "
                                     "cifar10 only, not gtsrb; use --classes measured\n")


def test_local_paper_protocol_runs_both_stages_in_one_launch(tmp_path, fake_env, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_MAIN_CLASSES", "10")
  assert protocol.main(["--dataset", "cifar10", "--classes", "paper", "--config", "configs/fake.py",
                        "--seeds", "1", "--grid", "smoke", "--root", str(tmp_path),
                        "--module", "fake_main", "--executor", "local", "--parallel", "4"]) == 0
  root = tmp_path / "cifar10"
  assert len([p for p in root.iterdir() if p.is_dir()]) == 1 + 3 * 4
  picked = json.loads((root / protocol.CLASSES_FILE).read_text())
  assert (picked["worst1"], picked["worst2"], picked["median"]) == (3, 5, 0)
  assert picked["class_names"] == {"worst1": "cat", "worst2": "dog", "median": "airplane"}
  run = root / "loss.important_classes=0,loss.margin=0.19635,loss.name=camri,loss.scale=8,seed=0,tag=median"
  assert json.loads((run / "config.json").read_text())["loss"]["scale"] == 8.0
  err = capsys.readouterr().err
  assert "13 runs: 0 finished (skipped), 0 unfinished (resumed), 13 new" in err
  assert err.rstrip().endswith(f"report: python -m camri.report {root} --reference")
