"""launch.protocol with the fake trainer (fake_main.py: 5 classes, validation recall order
2, 0, 3, 1, 4, test recall order 0, 3, 1, 4, 2)."""

import csv
import io
import json
import math
import os
import shlex

import pytest

from camri import report
from camri import run_log
from launch import protocol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_ce_run(workdir, test, val=None, num_epochs=2):
  """A finished cross-entropy run with these recalls per class (no validation split without `val`)."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"num_epochs": num_epochs, "num_classes": len(test)}, f)
  splits = {"val": val, "test": test} if val else {"test": test}
  with open(os.path.join(workdir, "metrics.csv"), "w") as f:
    f.write("epoch," + ",".join(f"{split}_accuracy," + ",".join(f"{split}_recall_{k}" for k in range(len(test)))
                                for split in splits) + "\n")
    # Not the last epoch: ignored.
    f.write("1," + ",".join("0.5," + ",".join("0.0" for _ in test) for _ in splits) + "\n")
    f.write(f"{num_epochs}," + ",".join("0.8," + ",".join(map(str, r)) for r in splits.values()) + "\n")


def test_pick_classes_sorts_by_mean_recall_then_index():
  # Means: 0.7, 0.5, 0.9, 0.5, 0.8, 0.6 -> order 1, 3 (tie: lower index first), 5, 0, 4, 2.
  classes = protocol.pick_classes([0.7, 0.5, 0.9, 0.5, 0.8, 0.6])
  assert classes == {"worst1": 1, "worst2": 3, "median": 0}  # index 6 // 2 = 3 of the order
  with pytest.raises(ValueError, match="at least 4 classes"):
    protocol.pick_classes([0.6, 0.4, 0.9])


def test_roles_are_measured_on_validation_where_test_disagrees(tmp_path):
  # Test recall ranks class 0 worst (0.45); validation ranks class 1 worst and class 0 best.
  write_ce_run(tmp_path / "a", test=[0.4, 0.8, 0.9, 0.7, 0.6], val=[0.9, 0.4, 0.7, 0.6, 0.8])
  write_ce_run(tmp_path / "b", test=[0.5, 0.8, 0.9, 0.7, 0.6], val=[0.9, 0.6, 0.7, 0.6, 0.8])
  warnings = []
  mean, split = protocol.mean_class_recall([tmp_path / "a", tmp_path / "b"], warn=warnings.append)
  assert (mean, split) == (pytest.approx([0.9, 0.5, 0.7, 0.6, 0.8]), "val") and not warnings
  assert protocol.pick_classes(mean) == {"worst1": 1, "worst2": 3, "median": 2}
  test_mean = [0.45, 0.8, 0.9, 0.7, 0.6]  # What the test split would have picked: class 0.
  assert protocol.pick_classes(test_mean) == {"worst1": 0, "worst2": 4, "median": 3}


def test_roles_fall_back_to_test_recall_without_a_validation_split_with_a_warning(tmp_path):
  write_ce_run(tmp_path / "a", test=[0.4, 0.8, 0.9, 0.7], val=[0.9, 0.4, 0.7, 0.6])
  write_ce_run(tmp_path / "b", test=[0.6, 0.8, 0.9, 0.7])  # validation_fraction=0
  warnings = []
  mean, split = protocol.mean_class_recall([tmp_path / "a", tmp_path / "b"], warn=warnings.append)
  assert (mean, split) == (pytest.approx([0.5, 0.8, 0.9, 0.7]), "test")
  assert warnings == ["1 of 2 cross-entropy runs have no validation split (validation_fraction=0): "
                      "the important classes are measured on test recall, which inflates every "
                      "method's gain on them (regression to the mean)"]


def test_a_class_without_validation_examples_cannot_be_ranked(tmp_path):
  write_ce_run(tmp_path / "a", test=[0.4, 0.8, 0.9, 0.7], val=[0.9, math.nan, 0.7, 0.6])
  with pytest.raises(ValueError, match=r"class 1 has no validation example in .*/a \(val_recall_1 is nan\)"):
    protocol.mean_class_recall([tmp_path / "a"])


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


def test_heads_sweep_has_every_method_and_a_cross_entropy_head_of_one_seed():
  runs = protocol.heads_sweep({"worst1": 0, "median": 4}, 3, margins=(0.1,), scales=(16.0,),
                              weights=(2.0,))
  assert len(runs) == 2 * (1 + 2 + 2)
  assert {r["seed"] for r in runs} == {3}
  assert {"loss.important_classes": 4, "tag": "median", "loss.name": "cross_entropy",
          "seed": 3} in runs
  assert {"loss.important_classes": 0, "tag": "worst1", "loss.name": "camri", "loss.margin": 0.1,
          "loss.scale": 16.0, "seed": 3} in runs


def args(root, *extra):
  return ["--dataset", "digits", "--config", "configs/digits.py", "--seeds", "2", "--grid", "smoke",
          "--root", str(root), "--module", "fake_main", *extra]


def test_local_protocol_runs_both_stages_then_nothing(tmp_path, fake_env, capsys):
  assert protocol.main(args(tmp_path, "--executor", "local", "--parallel", "2")) == 0
  root = tmp_path / "digits"
  picked = json.loads((root / protocol.CLASSES_FILE).read_text())
  # Validation recall 0.5 + 0.1 * ((2k + 1) % 5) / 5 + 0.001 * seed: mean over seeds 0 and 1.
  val_mean = [0.5 + 0.1 * ((2 * k + 1) % 5) / 5 + 0.0005 for k in range(5)]
  assert picked["roles"] == {"worst1": 2, "worst2": 0, "median": 3}  # Test would say 0, 3, 1.
  assert picked["class_names"] == {"worst1": "c2", "worst2": "c0", "median": "c3"}
  assert (picked["chosen_on"], picked["mean_recall"]) == ("val", pytest.approx(val_mean))
  assert (picked["dataset"], picked["seeds"]) == ("digits", 2)
  assert ("important classes (cross-entropy's mean validation recall): worst1 = 2 (c2), recall "
          "0.5005") in capsys.readouterr().err
  workdirs = [p for p in root.iterdir() if p.is_dir()]
  assert len(workdirs) == 2 + 3 * 4 * 2
  run = root / "loss.important_classes=0,loss.margin=0.19635,loss.name=camri,loss.scale=16,seed=1,tag=worst2"
  config = json.loads((run / "config.json").read_text())
  assert config["loss"]["important_classes"] == [0] and config["tag"] == "worst2" and config["seed"] == 1
  assert (root / "loss.important_classes=3,loss.important_weight=5,loss.name=wce,seed=0,tag=median").is_dir()

  assert protocol.main(args(tmp_path, "--executor", "local")) == 0
  err = capsys.readouterr().err
  assert "2 runs: 2 finished (skipped)" in err and "24 runs: 24 finished (skipped)" in err
  assert all(open(w / "calls.txt").read().count(" start") == 1 for w in workdirs)

  rows = list(csv.DictReader(io.StringIO(report.report(str(root), "last", "csv", warn=lambda m: None))))
  assert [(r["role"], r["method"]) for r in rows] == [
      (role, method) for role in ("worst1", "worst2", "median")
      for method in ("cross_entropy", "wce", "rwwce", "arcface", "camri")]
  ce_worst1 = rows[0]  # Reported on test: class 2's test recall, 0.5 + 0.1 * 4 / 5 + 0.0005.
  assert ce_worst1["classes"] == "2" and float(ce_worst1["recall_mean"]) == pytest.approx(0.5805)
  caption = report.report(str(root), "last", warn=lambda m: None).splitlines()[0]
  assert "Roles of fake: worst1, worst2 and median of cross-entropy's mean validation recall" in caption


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
  assert "--config.loss.important_classes=3 --config.loss.margin=0.19634954084936207 " \
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
                                     "cifar10 only, not gtsrb; use --classes measured or name the "
                                     "classes (a class named paper by its index)\n")


def test_local_paper_protocol_runs_both_stages_in_one_launch(tmp_path, fake_env, monkeypatch, capsys):
  monkeypatch.setenv("FAKE_MAIN_CLASSES", "10")
  assert protocol.main(["--dataset", "cifar10", "--classes", "paper", "--config", "configs/cifar10.py",
                        "--seeds", "1", "--grid", "smoke", "--root", str(tmp_path),
                        "--module", "fake_main", "--executor", "local", "--parallel", "4"]) == 0
  root = tmp_path / "cifar10"
  assert len([p for p in root.iterdir() if p.is_dir()]) == 1 + 3 * 4
  picked = json.loads((root / protocol.CLASSES_FILE).read_text())
  assert picked["roles"] == {"worst1": 3, "worst2": 5, "median": 0}
  assert picked["class_names"] == {"worst1": "cat", "worst2": "dog", "median": "airplane"}
  assert (picked["chosen_on"], picked["mean_recall"]) == (None, None)
  run = root / "loss.important_classes=0,loss.margin=0.19635,loss.name=camri,loss.scale=8,seed=0,tag=median"
  assert json.loads((run / "config.json").read_text())["loss"]["scale"] == 8.0
  err = capsys.readouterr().err
  assert "13 runs: 0 finished (skipped), 0 unfinished (resumed), 13 new" in err
  assert err.rstrip().endswith(f"report: python -m camri.report {root} --reference\n"
                               f"trade-off plots: python -m camri.plots tradeoff {root} --out {root}/plots")


# An image folder (--dataset folder): named classes, the base config, the root.

def folder_args(tree, root, *extra):
  return ["--dataset", "folder", "--config", f"configs/folder.py:path={tree},size=8", "--seeds", "2",
          "--grid", "smoke", "--root", str(root), "--module", "fake_main", *extra]


def test_named_classes_each_get_a_role_and_both_stages_launch_together(tmp_path, image_tree, capsys):
  tree = image_tree("signs")
  root = tmp_path / "runs"
  assert protocol.main(folder_args(tree, root, "--classes", "bee,3", "--executor", "dry",
                                   "--config.num_epochs=2")) == 0
  captured = capsys.readouterr()
  commands = [shlex.split(line) for line in captured.out.splitlines()]
  assert len(commands) == 2 + 2 * 4 * 2
  assert all(c[c.index("--workdir") + 1].startswith(f"{root}/signs/") for c in commands)
  assert all(c[c.index("--config") + 1] == f"configs/folder.py:path={tree},size=8" for c in commands)
  assert all("--config.num_epochs=2" in c for c in commands)
  runs = [_overrides(c) for c in commands]
  roles = {(r["tag"], r["loss.important_classes"]) for r in runs if "tag" in r}
  assert roles == {("bee", "1"), ("dog", "3")}
  assert {r["loss.name"] for r in runs if r.get("tag") == "dog"} == {"camri", "arcface", "wce", "rwwce"}
  assert "important classes (named): bee = 1, dog = 3" in captured.err
  assert f"report, once the runs have ended: python -m camri.report {root}/signs\n" in captured.err
  assert not root.exists()


@pytest.mark.parametrize("extra, expected", [
    (["--classes", "paper"], "--classes paper: the authors released settings for cifar10 only, not "
     "folder; use --classes measured or name the classes (a class named paper by its index)"),
    (["--classes", "bea"], "--classes bea: config.loss.important_classes='bea' is invalid: not a class "
     "of this dataset: use an index 0..3 or a name (ant, bee, cow, dog)"),
    (["--classes", "bee,1"], "--classes bee,1: config.loss.important_classes=('bee', '1') is invalid: "
     "important classes must be distinct"),
    (["--config.seed=3"], "--config.seed=3: the protocol sets seed itself (fields it sets: seed, tag, "
     "loss.name, loss.important_classes, loss.margin, loss.scale, loss.important_weight, "
     "loss.fn_weight, loss.fp_weight, trunk_from)"),
    (["--config.num_epoch=3"], "config has no field 'num_epoch' Did you mean \"num_epochs\" instead of "
     "\"num_epoch\"?"),
    (["--epochs", "3"], "unrecognized argument '--epochs': config fields are given as --config.FIELD=VALUE"),
], ids=["paper", "unknown-class", "one-class-twice", "protocol-field", "unknown-field", "not-a-field"])
def test_bad_folder_protocol_arguments_are_one_line(extra, expected, tmp_path, image_tree, capsys):
  tree = image_tree("signs")
  with pytest.raises(SystemExit) as exit_info:
    protocol.main(folder_args(tree, tmp_path / "runs", "--executor", "local", *extra))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"error: {expected}\n"
  assert not (tmp_path / "runs").exists()


def test_a_folder_needs_its_config_and_the_config_must_be_of_the_dataset(tmp_path, image_tree, capsys):
  tree = image_tree("signs", classes=("ant", "bee", "cow"))
  cases = [
      (["--dataset", "folder"], "--dataset folder takes its base config from --config, e.g. --config "
       "'configs/folder.py:path=/data/xray,size=64,channels=1'"),
      (["--dataset", "cifar10", "--classes", "paper", "--config", f"configs/folder.py:path={tree},size=8"],
       f"--config configs/folder.py:path={tree},size=8 is a config of dataset 'folder', not of "
       "--dataset cifar10: give --dataset folder or a config of cifar10 (configs/cifar10.py)"),
      (["--dataset", "folder", "--config", f"configs/folder.py:path={tmp_path}/nothing,size=8"],
       f"image folder {tmp_path}/nothing does not exist"),
      (["--dataset", "folder", "--config", f"configs/folder.py:path={tree},size=8"],
       "--classes measured: worst1, worst2 and median need at least 4 classes, folder has 3; name the "
       "important ones with --classes NAME,..."),
  ]
  for argv, expected in cases:
    with pytest.raises(SystemExit) as exit_info:
      protocol.main([*argv, "--root", str(tmp_path / "runs"), "--executor", "local"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
  assert not (tmp_path / "runs").exists()


def test_two_trees_of_one_folder_name_get_two_roots(tmp_path, image_tree):
  from configs import folder as folder_config  # pylint: disable=g-import-not-at-top
  first, second = str(image_tree("a/signs")), str(image_tree("b/signs"))
  runs = tmp_path / "runs"
  assert protocol.protocol_root(str(runs), folder_config.get_config(f"path={first}")) == f"{runs}/signs"
  os.makedirs(runs / "signs" / "run")
  with open(runs / "signs" / "run" / "config.json", "w") as f:
    json.dump({"dataset": "folder", "folder": first}, f)
  assert protocol.protocol_root(str(runs), folder_config.get_config(f"path={first}")) == f"{runs}/signs"
  assert protocol.protocol_root(str(runs), folder_config.get_config(f"path={second}")) == (
      f"{runs}/signs-{run_log.tree_id(second)}")


def test_config_fields_reach_every_run_and_changing_them_is_refused(tmp_path, fake_env, capsys):
  assert protocol.main(args(tmp_path, "--executor", "local", "--parallel", "2",
                            "--config.num_epochs=2")) == 0
  workdirs = [p for p in (tmp_path / "digits").iterdir() if p.is_dir()]
  assert len(workdirs) == 2 + 3 * 4 * 2
  assert all(json.loads((w / "config.json").read_text())["num_epochs"] == 2 for w in workdirs)
  assert all(json.loads((w / "launch.json").read_text())["base_args"] == ["--config.num_epochs=2"]
             for w in workdirs)
  capsys.readouterr()
  with pytest.raises(SystemExit):
    protocol.main(args(tmp_path, "--executor", "local", "--config.num_epochs=3"))
  assert "--config.num_epochs=2 with overrides" in capsys.readouterr().err


def test_runs_in_the_root_that_the_protocol_does_not_launch_are_named_before_it_starts(
    tmp_path, capsys):
  """A quickstart run trained into the protocol's root is named: the report would pool it."""
  root = tmp_path / "runs" / "cifar10"
  (root / "quickstart").mkdir(parents=True)
  (root / "quickstart" / "config.json").write_text("{}")
  command = ["--dataset", "cifar10", "--classes", "paper", "--seeds", "1",
             "--root", str(tmp_path / "runs"), "--executor", "dry"]
  assert protocol.main(command) == 0
  assert (f"warning: {root} holds 1 runs this protocol does not launch ({root / 'quickstart'}); "
          "the report would pool them with its runs (and name them): move them out, or give "
          "another --root") in capsys.readouterr().err.splitlines()
  (root / "quickstart" / "config.json").unlink()
  assert protocol.main(command) == 0
  assert "warning" not in capsys.readouterr().err
