"""camri.report on hand-written run directories with known numbers."""

import collections
import csv
import io
import json
import math
import os
import sys

import numpy as np
import pytest

from camri import plots
from camri import posthoc
from camri import report
from camri import run_log
from camri import stats
from camri.results import selection

CLASS_NAMES = ["a", "b", "c"]
T_975 = {1: 12.706204736174698, 2: 4.302652729749464, 3: 3.182446305284263}  # Student t tables.


def write_run(root, name, method, seed, rows, classes=(0,), tag="", dataset="toy", num_epochs=2,
              precision=None, validation_fraction=None, folder=None, trunk_source=None, **loss):
  """A run dir like camri.main's.

  rows: (epoch, accuracy, (recall of class 0, 1, 2)), for the test split, or
  (epoch, accuracy, recalls, val_accuracy, val_recalls) with a validation split.
  precision: test precision of class 0, 1, 2 in every row (no such columns when None).
  folder: config.folder, the tree of an image-folder dataset.
  trunk_source: config.trunk_source of a decoupled head, e.g. {"loss": "cross_entropy"}.
  """
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  loss = {"name": method, "important_classes": list(classes), "margin": [0.0], "scale": 1.0, **loss}
  has_val = any(len(row) == 5 for row in rows)
  config = {"dataset": dataset, "num_epochs": num_epochs, "seed": seed, "tag": tag, "model": "cnn",
            "num_classes": 3, "class_names": CLASS_NAMES, "loss": loss,
            "validation_fraction": validation_fraction if validation_fraction is not None
            else 0.1 if has_val else 0.0}
  if folder:
    config["folder"] = folder
  if trunk_source:
    config["trunk_source"] = trunk_source
  run_log.write_config(workdir, config)
  mean = lambda recalls: sum(recalls[k] for k in classes) / len(classes)
  with open(os.path.join(workdir, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["epoch", "train_loss"]
                    + (["val_accuracy", "val_recall", "val_recall_0", "val_recall_1", "val_recall_2"]
                       if has_val else [])
                    + ["test_accuracy", "test_recall", "test_recall_0", "test_recall_1", "test_recall_2"]
                    + (["test_precision_0", "test_precision_1", "test_precision_2"] if precision else []))
    for epoch, accuracy, recalls, *val in rows:
      writer.writerow([epoch, 1.0] + ([val[0], mean(val[1]), *val[1]] if has_val else [])
                      + [accuracy, mean(recalls), *recalls] + list(precision or []))
  return workdir


def quiet(message):
  del message


@pytest.fixture
def runs(tmp_path):
  """Cross-entropy: accuracy 0.80, 0.82, 0.84 (mean 0.82) at the last epoch.

  worst1 (class 0), camri: margin 0.1 keeps accuracy (mean 0.83) with recall 0.6, 0.65, 0.7;
  margin 0.2 has the better recall 0.9 but accuracy 0.8067 < 0.82 -> excluded.
  median (class 1), camri: its only setting has accuracy 0.81 -> dash.
  worst1, arcface: two settings of equal recall 0.7; scale 32 has the higher accuracy.
  class2 (untagged, class 2), camri: two seeds, recall 0.5 and 0.6, accuracy 0.83 and 0.85.
  Epoch 1 numbers differ; one camri run is unfinished (epoch 1 only).
  """
  root = str(tmp_path)
  for seed, accuracy, recalls, first in [(0, 0.80, (0.5, 0.9, 0.4), 0.70), (1, 0.82, (0.6, 0.8, 0.5), 0.72),
                                         (2, 0.84, (0.7, 0.7, 0.6), 0.74)]:
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(1, first, (0.1, 0.1, 0.1)), (2, accuracy, recalls)])
  margin_runs = {0.1: [(0.82, 0.6), (0.83, 0.65), (0.84, 0.7)], 0.2: [(0.80, 0.9), (0.81, 0.9), (0.81, 0.9)]}
  for margin, numbers in margin_runs.items():
    for seed, (accuracy, recall) in enumerate(numbers):
      # Epoch 1: margin 0.2 is the one above cross-entropy's epoch-1 accuracy (0.72).
      first = (0.80, (0.3, 0.5, 0.5)) if margin == 0.2 else (0.60, (0.2, 0.5, 0.5))
      write_run(root, f"camri_w1_m{margin}_{seed}", "camri", seed,
                [(1, *first), (2, accuracy, (recall, 0.5, 0.5))], classes=(0,), tag="worst1",
                margin=[margin], scale=16.0)
  write_run(root, "camri_w1_unfinished", "camri", 3, [(1, 0.99, (0.99, 0.5, 0.5))], classes=(0,),
            tag="worst1", margin=[0.1], scale=16.0)
  for seed in range(3):
    write_run(root, f"camri_med_{seed}", "camri", seed, [(1, 0.5, (0.5, 0.5, 0.5)), (2, 0.81, (0.5, 0.95, 0.5))],
              classes=(1,), tag="median", margin=[0.1], scale=16.0)
  for scale, accuracy in [(16.0, 0.83), (32.0, 0.85)]:
    for seed in range(2):
      write_run(root, f"arc_s{scale}_{seed}", "arcface", seed, [(1, 0.5, (0.5,) * 3), (2, accuracy, (0.7, 0.5, 0.5))],
                classes=(0,), tag="worst1", margin=[0.2], scale=scale)
  for seed, (accuracy, recall) in enumerate([(0.83, 0.5), (0.85, 0.6)]):
    write_run(root, f"camri_c2_{seed}", "camri", seed, [(1, 0.5, (0.5,) * 3), (2, accuracy, (0.5, 0.5, recall))],
              classes=(2,), margin=[0.3], scale=8.0)
  return root


def by_key(rows):
  return {(r.role, r.method): r for r in rows}


def test_selection_means_and_sample_stds(runs):
  warnings = []
  rows = report.build_table(report.load_results(runs, "last", warn=warnings.append), warn=warnings.append)
  assert [(r.role, r.method) for r in rows] == [
      ("worst1", "cross_entropy"), ("worst1", "arcface"), ("worst1", "camri"),
      ("median", "cross_entropy"), ("median", "camri"),
      ("class2", "cross_entropy"), ("class2", "camri")]
  assert len(warnings) == 3
  assert "1 runs have no row" in warnings[0] and "unfinished" in warnings[0]
  assert warnings[1] == ("18 of 18 runs of dataset toy have no validation split (validation_fraction=0): "
                         "selecting on the test split, which is optimistic")
  assert warnings[2].startswith("3 of 3 cross_entropy runs of toy have no saved test predictions: "
                                "cross_entropy+bias rows are not shown")
  assert all(r.selected_on == "test" for r in rows)
  rows = by_key(rows)

  ce = rows["worst1", "cross_entropy"]
  assert ce.classes == (0,) and ce.class_names == ("a",)
  assert ce.recall.n == 3 and ce.recall.mean == pytest.approx(0.6) and ce.recall.std == pytest.approx(0.1)
  assert ce.accuracy.mean == pytest.approx(0.82) and ce.accuracy.std == pytest.approx(0.02)

  camri = rows["worst1", "camri"]  # margin 0.2 excluded by accuracy although its recall is higher.
  assert camri.setting == "margin=0.1, scale=16"
  assert (camri.settings_kept, camri.settings_total) == (1, 2)
  assert camri.recall.mean == pytest.approx(0.65) and camri.recall.std == pytest.approx(0.05)
  assert camri.accuracy.mean == pytest.approx(0.83) and camri.accuracy.std == pytest.approx(0.01)

  arcface = rows["worst1", "arcface"]  # equal recall: the higher accuracy wins.
  assert arcface.setting == "margin=0.2, scale=32"
  assert arcface.recall.mean == pytest.approx(0.7) and arcface.recall.std == 0.0
  assert arcface.accuracy.mean == pytest.approx(0.85)

  median_ce = rows["median", "cross_entropy"]
  assert median_ce.classes == (1,) and median_ce.recall.mean == pytest.approx(0.8)
  assert median_ce.recall.std == pytest.approx(0.1)
  median = rows["median", "camri"]  # Not kept, yet shown: the setting nearest to keeping accuracy.
  assert not median.kept and (median.settings_kept, median.settings_total) == (0, 1)
  assert median.setting == "margin=0.1, scale=16"
  assert median.recall.mean == pytest.approx(0.95) and median.accuracy.mean == pytest.approx(0.81)

  untagged = rows["class2", "camri"]
  assert untagged.classes == (2,) and untagged.setting == "margin=0.3, scale=8"
  assert untagged.recall.mean == pytest.approx(0.55) and untagged.recall.std == pytest.approx(math.sqrt(0.005))
  assert rows["class2", "cross_entropy"].recall.mean == pytest.approx(0.5)


def test_epoch_policy_changes_the_numbers_and_the_choice(runs):
  rows = by_key(report.build_table(report.load_results(runs, 1, warn=lambda m: None), warn=lambda m: None))
  ce = rows["worst1", "cross_entropy"]
  assert ce.accuracy.mean == pytest.approx(0.72) and ce.recall.mean == pytest.approx(0.1)
  camri = rows["worst1", "camri"]  # at epoch 1 only margin 0.2 keeps accuracy; the unfinished run counts.
  assert camri.setting == "margin=0.2, scale=16" and camri.recall.mean == pytest.approx(0.3)
  assert (camri.settings_kept, camri.settings_total) == (1, 2)
  arcface = rows["worst1", "arcface"]  # Neither setting keeps accuracy: the more accurate one is shown.
  assert not arcface.kept and arcface.setting == "margin=0.2, scale=16"


def test_best_epoch_policy_takes_each_runs_best_accuracy_row(tmp_path):
  root = str(tmp_path)
  write_run(root, "ce", "cross_entropy", 0, [(1, 0.7, (0.2, 0.5, 0.5)), (2, 0.9, (0.4, 0.5, 0.5)),
                                             (3, 0.8, (0.6, 0.5, 0.5))], num_epochs=3)
  write_run(root, "short", "cross_entropy", 1, [(1, 0.99, (0.9, 0.5, 0.5))], num_epochs=3)
  write_run(root, "camri", "camri", 0, [(1, 0.95, (0.3, 0.5, 0.5)), (2, 0.95, (0.8, 0.5, 0.5)),
                                        (3, 0.6, (0.99, 0.5, 0.5))], num_epochs=3, tag="worst1")
  rows = by_key(report.build_table(report.load_results(root, "best", warn=lambda m: None)))
  assert rows["worst1", "cross_entropy"].accuracy.mean == pytest.approx(0.9)
  assert rows["worst1", "cross_entropy"].recall.mean == pytest.approx(0.4)
  assert rows["worst1", "cross_entropy"].recall.n == 1  # the unfinished run is left out
  assert rows["worst1", "camri"].recall.mean == pytest.approx(0.3)  # earliest of tied accuracies
  assert math.isnan(rows["worst1", "camri"].recall.std)


def test_markdown(runs):
  text = report.report(runs, "last", "markdown", warn=lambda m: None)
  assert "last epoch (epoch == num_epochs" in text and "sample std (ddof=1)" in text
  lines = text.splitlines()
  assert "Dataset toy has no validation split (validation_fraction=0): selected on the test split" in text
  assert lines[2] == ("| dataset | role | class | method | setting | seeds | kept | recall | precision | "
                      "accuracy | recall gain | accuracy gain | recall gain vs +bias |")
  # Gains over seeds 0, 1, 2 by hand: recall 0.1, 0.05, 0 (sd 0.05), accuracy 0.02, 0.01, 0 (sd 0.01);
  # half widths t(0.975, 2) * sd / sqrt(3) = 0.1242 and 0.0248.
  assert ("| toy | worst1 | 0 (a) | camri | margin=0.1, scale=16 | 3 | 1/2 | 0.6500 ± 0.0500 | - | "
          "0.8300 ± 0.0100 | +0.0500 [-0.0742, +0.1742]† | +0.0100 [-0.0148, +0.0348] | - |") in lines
  assert ("| toy | median | 1 (b) | camri | margin=0.1, scale=16 (not kept) | 3 | 0/1 | 0.9500 ± 0.0000 | - | "
          "0.8100 ± 0.0000 | +0.1500 [-0.0984, +0.3984]† | -0.0100 [-0.0597, +0.0397] | - |") in lines
  assert ("| toy | worst1 | 0 (a) | cross_entropy | - | 3 | - | 0.6000 ± 0.1000 | - | 0.8200 ± 0.0200 | "
          "- | - | - |") in lines


def test_csv(runs):
  text = report.report(runs, 1, "csv", warn=lambda m: None)
  rows = list(csv.DictReader(io.StringIO(text)))
  assert all(r["epoch"] == "1" for r in rows)
  rows = {(r["role"], r["method"]): r for r in rows}
  camri = rows["worst1", "camri"]
  assert float(camri["recall_mean"]) == pytest.approx(0.3) and float(camri["recall_std"]) == pytest.approx(0.0)
  assert float(camri["accuracy_mean"]) == pytest.approx(0.8)
  assert camri["setting"] == "margin=0.2, scale=16" and camri["seeds"] == "3"
  arcface = rows["worst1", "arcface"]
  assert arcface["recall_mean"] == "0.5" and arcface["settings_kept"] == "0"
  assert all(r["selected_on"] == "test" for r in rows.values())


def test_latex(runs):
  text = report.report(runs, "last", "latex", warn=lambda m: None)
  lines = text.splitlines()
  assert lines[0] == r"\begin{table}" and lines[-1] == r"\end{table}"
  assert r"\caption{" in text and "last epoch" in text and r"$\pm$" in text
  assert (r"toy & worst1 & 0 (a) & cross\_entropy & - & 3 & -- & $0.6000 \pm 0.1000$ & -- & "
          r"$0.8200 \pm 0.0200$ & -- & -- & -- \\") in lines
  assert (r"toy & median & 1 (b) & camri & margin=0.1, scale=16 (not kept) & 3 & 0/1 & $0.9500 \pm 0.0000$ & "
          r"-- & $0.8100 \pm 0.0000$ & $+0.1500 [-0.0984, +0.3984]^\dagger$ & $-0.0100 [-0.0597, +0.0397]$ & -- \\") in lines
  columns = lines[3][len(r"\begin{tabular}{"):-1]
  assert all(line.count(" & ") == len(columns) - 1 for line in lines if line.endswith(r" \\"))


def test_reference_is_package_data():
  table = report.load_reference()
  assert len(table) == 45
  assert table["cifar10", "worst1", "camri"] == (0.7919, 0.8821)
  assert table["cifar10", "worst2", "wce"] == (None, None)
  assert table["awa2", "median", "cross_entropy"] == (0.5599, 0.6514)


def test_reference_columns_side_by_side(tmp_path):
  root = str(tmp_path)
  for seed in range(2):
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(1, 0.5, (0.5,) * 3), (2, 0.88, (0.7, 0.8, 0.9))],
              dataset="cifar10")
    write_run(root, f"camri{seed}", "camri", seed, [(1, 0.5, (0.5,) * 3), (2, 0.89, (0.8, 0.8, 0.9))],
              dataset="cifar10", tag="worst1", margin=[0.2], scale=16.0)
    write_run(root, f"wce{seed}", "wce", seed, [(1, 0.5, (0.5,) * 3), (2, 0.87, (0.9, 0.8, 0.9))],
              dataset="cifar10", tag="worst1", weight=4.0)
  text = report.report(root, "last", "markdown", with_reference=True, warn=lambda m: None)
  assert "| paper recall | paper accuracy |" in text
  assert ("| cifar10 | worst1 | 0 (a) | camri | margin=0.2, scale=16 | 2 | 1/1 | 0.8000 ± 0.0000 | - | "
          "0.8900 ± 0.0000 | +0.1000 [+0.1000, +0.1000] | +0.0100 [+0.0100, +0.0100] | - | 0.7919 | 0.8821 |") in text
  assert ("| cifar10 | worst1 | 0 (a) | wce | weight=4 (not kept) | 2 | 0/1 | 0.9000 ± 0.0000 | - | "
          "0.8700 ± 0.0000 | +0.2000 [+0.2000, +0.2000] | -0.0100 [-0.0100, -0.0100] | - | 0.8023 | 0.8797 |") in text
  assert "does not cover" not in text
  rows = {r["method"]: r for r in csv.DictReader(io.StringIO(
      report.report(root, "last", "csv", with_reference=True, warn=lambda m: None)))}
  assert rows["cross_entropy"]["paper_recall"] == "0.7383" and rows["cross_entropy"]["settings_kept"] == ""
  assert rows["cross_entropy"]["recall_mean"] == "0.7"  # rounded to 12 decimals


def test_one_role_with_two_class_sets_is_an_error(tmp_path):
  root = str(tmp_path)
  write_run(root, "r0", "camri", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)], classes=(0,), tag="worst1")
  write_run(root, "r1", "camri", 1, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)], classes=(2,), tag="worst1")
  with pytest.raises(ValueError, match="role 'worst1'"):
    report.build_table(report.load_results(root, "last"))


def test_cli_writes_the_file(runs, tmp_path, capsys):
  out = tmp_path / "table.tex"
  assert report.main([runs, "--epoch", "last", "--format", "latex", "--out", str(out)]) == 0
  assert out.read_text().startswith(r"\begin{table}")
  with pytest.raises(SystemExit):
    report.main([runs, "--epoch", "first"])
  assert "--epoch must be last, best, a positive epoch number or last:K" in capsys.readouterr().err


def test_setting_shows_the_fields_that_vary_or_differ_from_cross_entropy(tmp_path):
  root = str(tmp_path)
  write_run(root, "ce", "cross_entropy", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)])
  for weight, recall in [(2.0, 0.6), (4.0, 0.7)]:
    write_run(root, f"wce{weight}", "wce", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (recall, 0.5, 0.5))],
              tag="worst1", weight=weight)
  write_run(root, "rwwce", "rwwce", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.6, 0.5, 0.5))],
            tag="worst1", fn_weight=3.0)
  rows = by_key(report.build_table(report.load_results(root, "last")))
  assert rows["worst1", "wce"].setting == "weight=4"  # margin and scale equal cross-entropy's
  assert rows["worst1", "rwwce"].setting == "fn_weight=3"


def test_runs_differing_beyond_the_loss_are_pooled_with_a_warning(tmp_path):
  root = str(tmp_path)
  write_run(root, "a", "cross_entropy", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)])
  write_run(root, "b", "cross_entropy", 1, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3), (3, 0.8, (0.5,) * 3)],
            num_epochs=3)
  warnings = []
  report.load_results(root, "last", warn=warnings.append)
  assert warnings == ["runs of dataset toy differ in num_epochs; they are pooled"]


def test_a_config_without_a_needed_field_is_named(tmp_path):
  write_run(str(tmp_path), "r", "camri", 0, [(1, 0.5, (0.5,) * 3)], num_epochs=1)
  path = tmp_path / "r" / "config.json"
  config = json.loads(path.read_text())
  del config["dataset"]
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="config.json has no field dataset"):
    report.load_results(str(tmp_path), "last")


def _error_line(argv, capsys, main=report.main):
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  return captured.err


def test_a_report_with_no_rows_exits_2_with_one_line(tmp_path, capsys):
  assert _error_line([str(tmp_path)], capsys) == (
      f"error: no run directories (with config.json) under {tmp_path}\n")
  write_run(str(tmp_path), "ce", "cross_entropy", 0, [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)])
  assert _error_line([str(tmp_path), "--epoch", "last:5"], capsys) == (
      f"error: none of the 1 runs under {tmp_path} has a row for the mean of the last 5 epochs of "
      "each finished run: nothing to report (see --epoch)\n")


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_class_without_examples_is_refused_not_selected_on_nan(split, tmp_path, capsys):
  root = str(tmp_path)
  nan = math.nan
  for seed in range(2):
    # Class 0 has no example on `split`: its recall there is nan in every run.
    test, val = ((nan, 0.5, 0.5), (0.5, 0.5, 0.5)) if split == "test" else ((0.5, 0.5, 0.5), (nan, 0.5, 0.5))
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(2, 0.8, test, 0.8, val)])
    for margin in (0.1, 0.2):
      write_run(root, f"camri{margin}_{seed}", "camri", seed, [(2, 0.8, test, 0.8, val)], tag="worst1",
                margin=[margin])
  name = {"val": "validation", "test": "test"}[split]
  assert _error_line([root], capsys) == (
      f"error: toy, role worst1: class 0 (a) has no {name} example in {root}/ce0 ({split}_recall_0 "
      f"is nan), so no method can be selected or compared on it; give the class {name} examples\n")
  assert _error_line(["tradeoff", root, "--out", str(tmp_path / "plots")], capsys,
                     main=plots.main).startswith("error: toy, role worst1: class 0 (a) has no")
  assert not (tmp_path / "plots").exists()


def test_a_folder_dataset_is_named_after_its_tree_and_two_trees_are_told_apart(tmp_path):
  rows = [(1, 0.5, (0.5,) * 3), (2, 0.8, (0.5,) * 3)]
  trees = {"a": "/data/a/signs", "b": "/data/b/signs", "x": "/data/xray"}
  for key, folder in trees.items():
    write_run(str(tmp_path / key), "ce", "cross_entropy", 0, rows, dataset="folder", folder=folder)
  warnings = []
  results = report.load_results(str(tmp_path), "last", warn=warnings.append)
  signs = {r.folder: r.dataset for r in results}
  assert signs == {"/data/a/signs": f"folder:signs@{run_log.tree_id('/data/a/signs')}",
                   "/data/b/signs": f"folder:signs@{run_log.tree_id('/data/b/signs')}",
                   "/data/xray": "folder:xray"}
  assert len(set(signs.values())) == 3 and not warnings  # One seed of each tree, none dropped.
  only_a = report.load_results(str(tmp_path / "a"), "last")
  assert [r.dataset for r in only_a] == ["folder:signs"]
  assert "| folder:signs | - | - | cross_entropy |" in report.report(str(tmp_path / "a"), warn=quiet)


def _roles_file(root, **saved):
  with open(os.path.join(root, run_log.ROLES_FILE), "w") as f:
    json.dump(saved, f)


def test_the_caption_says_which_split_chose_the_roles(tmp_path):
  for name, saved in [("val", dict(roles={"worst1": 0}, chosen_on="val", mean_recall=[0.5, 0.6, 0.7])),
                      ("old", dict(worst1=0, mean_recall=[0.5, 0.6, 0.7])),  # before chosen_on: test
                      ("named", dict(roles={"a": 0}, chosen_on=None, rule="the classes named"))]:
    root = str(tmp_path / name)
    write_run(root, "ce", "cross_entropy", 0, [(2, 0.8, (0.5,) * 3, 0.8, (0.5,) * 3)], dataset=name)
    _roles_file(root, **saved)
  text = report.report(str(tmp_path), warn=quiet).splitlines()[0]
  assert ("Roles of val: worst1, worst2 and median of cross-entropy's mean validation recall per "
          "class, test recall playing no part.") in text
  assert ("Roles of old: worst1, worst2 and median of cross-entropy's mean test recall per class: "
          "chosen on the test split, optimistic for every gain on them.") in text
  assert "Roles of named: the classes named." in text
  assert "Roles of" not in report.report(str(tmp_path / "val" / "ce"), warn=quiet)


# The Student t interval (camri.stats).

def test_t_quantiles_match_the_tables():
  assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=5e-4)
  assert stats.t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
  assert stats.t_quantile(0.975, 9) == pytest.approx(2.262, abs=5e-4)


def test_t_interval_by_hand():
  interval = stats.t_interval([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1
  half = T_975[2] * 0.1 / math.sqrt(3)
  assert (interval.n, interval.mean) == (3, pytest.approx(0.2))
  assert (interval.low, interval.high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
  assert interval.contains(0.0) and not interval.contains(0.5)
  single = stats.t_interval([0.3])
  assert single.mean == 0.3 and math.isnan(single.low) and not single.contains(0.3)


def test_gain_intervals_are_clipped_to_what_a_difference_of_rates_can_be(tmp_path):
  root = str(tmp_path)
  # Recall differences 0.1 and 0.4: mean 0.25, sd 0.3 / sqrt(2), half-width 12.706 * 0.15 = 1.906.
  for seed, (ce, camri) in enumerate([(0.5, 0.6), (0.5, 0.9)]):
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(2, 0.8, (ce, 0.5, 0.5), 0.8, (ce, 0.5, 0.5))])
    write_run(root, f"camri{seed}", "camri", seed, [(2, 0.8, (camri, 0.5, 0.5), 0.8, (camri, 0.5, 0.5))],
              tag="worst1", margin=[0.1])
  camri = _csv_rows(root)["worst1", "camri"]
  assert float(camri["recall_gain_mean"]) == pytest.approx(0.25)
  assert (float(camri["recall_gain_ci_low"]), float(camri["recall_gain_ci_high"])) == (-1.0, 1.0)
  assert "| +0.2500 [-1.0000, +1.0000]† |" in report.report(root, warn=quiet)
  unclipped = stats.t_interval([0.1, 0.4])
  assert unclipped.low == pytest.approx(0.25 - T_975[1] * 0.15)


# Selection on validation.

def _csv_rows(root, **kwargs):
  text = report.report(root, kwargs.pop("policy", "last"), "csv", warn=quiet, **kwargs)
  return {(r["role"], r["method"]): r for r in csv.DictReader(io.StringIO(text))}


@pytest.fixture
def val_vs_test(tmp_path):
  """Validation and test disagree on which camri setting keeps accuracy.

  cross_entropy: validation accuracy 0.80, 0.82 (mean 0.81), test 0.80.
  margin 0.1: validation 0.82 (kept), recall 0.7; test 0.79 (not kept), recall 0.6.
  margin 0.2: validation 0.80 (not kept), recall 0.9; test 0.81 (kept), recall 0.8.
  """
  root = str(tmp_path)
  for seed, val_accuracy in enumerate([0.80, 0.82]):
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(2, 0.80, (0.5, 0.9, 0.9), val_accuracy, (0.5, 0.9, 0.9))])
  for margin, test, val in [(0.1, (0.79, 0.6), (0.82, 0.7)), (0.2, (0.81, 0.8), (0.80, 0.9))]:
    for seed in range(2):
      write_run(root, f"camri_m{margin}_{seed}", "camri", seed,
                [(2, test[0], (test[1], 0.9, 0.9), val[0], (val[1], 0.9, 0.9))], tag="worst1",
                margin=[margin], scale=16.0)
  return root


def test_selection_on_validation_differs_from_selection_on_test(val_vs_test):
  on_val = _csv_rows(val_vs_test)["worst1", "camri"]
  assert on_val["setting"] == "margin=0.1, scale=16" and on_val["selected_on"] == "val"
  assert float(on_val["recall_mean"]) == pytest.approx(0.6)  # reported on test
  assert float(on_val["accuracy_mean"]) == pytest.approx(0.79) and on_val["settings_kept"] == "1"
  on_test = _csv_rows(val_vs_test, select_on="test")["worst1", "camri"]
  assert on_test["setting"] == "margin=0.2, scale=16" and on_test["selected_on"] == "test"
  assert float(on_test["recall_mean"]) == pytest.approx(0.8) and on_test["settings_kept"] == "1"
  assert "selected on the validation split, reported on the test split" in report.report(val_vs_test, warn=quiet)
  text = report.report(val_vs_test, select_on="test", warn=quiet)
  assert "selected on the test split, as the paper did: optimistic" in text


def test_accuracy_tolerance_changes_which_settings_are_kept(val_vs_test):
  # margin 0.2's validation accuracy 0.80 is 0.01 below cross-entropy's 0.81.
  assert _csv_rows(val_vs_test, tolerance=0.009)["worst1", "camri"]["settings_kept"] == "1"
  loose = _csv_rows(val_vs_test, tolerance=0.01)["worst1", "camri"]
  assert loose["settings_kept"] == "2" and loose["setting"] == "margin=0.2, scale=16"
  assert "at least cross-entropy's minus 0.01, both on the validation split" in report.report(
      val_vs_test, tolerance=0.01, warn=quiet)
  out = os.path.join(val_vs_test, "table.csv")
  assert report.main([val_vs_test, "--accuracy-tolerance", "0.01", "--format", "csv", "--out", out]) == 0
  with open(out) as f:
    assert {r["method"]: r["setting"] for r in csv.DictReader(f)}["camri"] == "margin=0.2, scale=16"


def test_best_epoch_is_chosen_on_the_selection_split(tmp_path):
  root = str(tmp_path)
  # Validation accuracy peaks at epoch 2, test accuracy at epoch 1.
  write_run(root, "ce", "cross_entropy", 0, [(1, 0.9, (0.1, 0.5, 0.5), 0.7, (0.5,) * 3),
                                             (2, 0.7, (0.2, 0.5, 0.5), 0.9, (0.5,) * 3),
                                             (3, 0.8, (0.3, 0.5, 0.5), 0.8, (0.5,) * 3)], num_epochs=3)
  write_run(root, "camri", "camri", 0, [(3, 0.5, (0.5,) * 3, 0.5, (0.5,) * 3)], num_epochs=3, tag="worst1")
  (result,) = [r for r in report.load_results(root, "best") if r.method == "cross_entropy"]
  assert (result.accuracy, result.class_recall[0], result.val.accuracy) == (0.7, 0.2, 0.9)
  (result,) = [r for r in report.load_results(root, "best", select_on="test") if r.method == "cross_entropy"]
  assert (result.accuracy, result.class_recall[0]) == (0.9, 0.1)
  assert "epoch of best validation accuracy" in report.report(root, "best", warn=quiet)


# Paired statistics.

def test_paired_gains_and_intervals_by_hand(tmp_path):
  root = str(tmp_path)
  ce = {0: (0.80, 0.5), 1: (0.81, 0.6), 2: (0.82, 0.7)}  # seed: (accuracy, recall of class 0)
  for seed, (accuracy, recall) in ce.items():
    write_run(root, f"ce{seed}", "cross_entropy", seed, [(2, accuracy, (recall, 0.5, 0.5), accuracy, (recall, 0.5, 0.5))])
  # camri: seed 3 has no cross-entropy run to pair with; recall differences 0.1, 0.05, 0.15.
  for seed, (accuracy, recall) in {0: (0.81, 0.6), 1: (0.81, 0.65), 2: (0.83, 0.85), 3: (0.81, 0.99)}.items():
    write_run(root, f"camri{seed}", "camri", seed, [(2, accuracy, (recall, 0.5, 0.5), accuracy, (recall, 0.5, 0.5))],
              tag="worst1", margin=[0.1])
  for seed, recall in {0: 0.60, 1: 0.71, 2: 0.82}.items():  # Differences 0.10, 0.11, 0.12.
    write_run(root, f"arc{seed}", "arcface", seed, [(2, 0.81, (recall, 0.5, 0.5), 0.81, (recall, 0.5, 0.5))],
              tag="worst1", margin=[0.2])
  rows = _csv_rows(root)
  camri, arcface = rows["worst1", "camri"], rows["worst1", "arcface"]
  assert camri["seeds"] == "4" and camri["pairs"] == "3"
  half = T_975[2] * 0.05 / math.sqrt(3)  # sd of 0.1, 0.05, 0.15
  assert float(camri["recall_gain_mean"]) == pytest.approx(0.1)
  assert float(camri["recall_gain_ci_low"]) == pytest.approx(0.1 - half)
  assert float(camri["recall_gain_ci_high"]) == pytest.approx(0.1 + half)
  # Accuracy differences 0.01, 0, 0.01: mean 1/150, sd sqrt(((1/300)^2 * 2 + (2/300)^2) / 2) = 0.01 / sqrt(3).
  half = T_975[2] * (0.01 / math.sqrt(3)) / math.sqrt(3)
  assert float(camri["accuracy_gain_mean"]) == pytest.approx(1 / 150)
  assert float(camri["accuracy_gain_ci_low"]) == pytest.approx(1 / 150 - half)
  assert float(camri["accuracy_gain_ci_high"]) == pytest.approx(1 / 150 + half)
  half = T_975[2] * 0.01 / math.sqrt(3)
  assert float(arcface["recall_gain_ci_low"]) == pytest.approx(0.11 - half)
  assert float(arcface["recall_gain_ci_high"]) == pytest.approx(0.11 + half)
  assert float(arcface["accuracy_gain_mean"]) == pytest.approx(0.0, abs=1e-12)
  assert rows["worst1", "cross_entropy"]["recall_gain_mean"] == ""
  lines = report.report(root, warn=quiet).splitlines()
  assert any("| camri |" in line and "| +0.1000 [-0.0242, +0.2242]† |" in line for line in lines)
  assert any("| arcface |" in line and "| +0.1100 [+0.0852, +0.1348] |" in line for line in lines)


# The post-hoc bias baseline. Class 0 is important; scores in eighths are exact in float32.
# Validation: gaps max_{k != 0} s_k - s_0 of 4 examples of class 0 (-2/8, 2/8, 4/8) and of others
# (1/8, 3/8, 4/8, 5/8). Accuracy and recall of class 0 at each b:
#   b=0: 4/7, 1/3   1/8: 3/7, 1/3   2/8: 4/7, 2/3 (a tie s_0 + b = s_1 goes to class 0)
#   3/8: 3/7, 2/3   4/8: 3/7, 1     5/8: 3/7, 1 (the example of class 2 was already wrong)
VAL_SCORES = np.array([[4, 2, 1], [2, 4, 1], [1, 5, 2], [3, 4, 0], [2, 5, 1], [1, 0, 5], [1, 6, 0]], np.float32) / 8
VAL_LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
# Test gaps: 1/8 and 3/8 (class 0), 2/8 and 5/8 (class 1), 3/8 (class 2). At b = 0: accuracy 3/5,
# recall 0, class 0 never predicted. At b = 2/8: examples 0 and 2 go to class 0 (2 a tie):
# accuracy 3/5, recall 1/2, precision 1/2. At b = 4/8 also examples 1 and 3: accuracy 3/5,
# recall 1, precision 2/4.
TEST_SCORES = np.array([[3, 4, 0], [1, 4, 0], [2, 4, 1], [0, 1, 3], [0, 5, 1]], np.float32) / 8
TEST_LABELS = np.array([0, 0, 1, 2, 1])


def _predictions(scores, labels):
  return {"ids": np.array([f"x{i}" for i in range(len(labels))]), "labels": labels.astype(np.int64),
          "scores": scores, "step": np.int64(10)}


def test_choose_bias_by_hand_ties_included():
  assert selection.choose_bias(VAL_SCORES, VAL_LABELS, 0) == 0.25  # recall 2/3 at the accuracy of b = 0
  # Accuracy may drop by 1/7: recall 1 at b = 4/8 and 5/8, same accuracy: the smaller b.
  assert selection.choose_bias(VAL_SCORES, VAL_LABELS, 0, tolerance=0.15) == 0.5
  assert selection.choose_bias(VAL_SCORES, VAL_LABELS, 0, tolerance=0.14) == 0.25  # 1/7 = 0.1429


def test_choose_bias_equals_a_search_over_every_breakpoint():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=(300, 4)) * 4).astype(np.float32) / 4  # many ties
  labels = rng.integers(0, 4, 300)
  for important in range(4):
    for tolerance in (0.0, 0.01, 0.05):
      candidates = np.concatenate([[0.0], posthoc.breakpoints(scores, important)])
      values = [posthoc.accuracy_and_recall(scores, labels, important, b) for b in candidates]
      floor = values[0][0] - tolerance - 1e-9
      best = max((recall, accuracy, -b) for (accuracy, recall), b in zip(values, candidates) if accuracy >= floor)
      assert selection.choose_bias(scores, labels, important, tolerance) == -best[2]


def _bias_runs(root, with_val=True):
  """One cross-entropy run with the predictions above (metrics.csv agrees at b = 0) and one camri run."""
  val = (4 / 7, (1 / 3, 1.0, 0.5)) if with_val else ()
  other_val = (0.5, (0.5,) * 3) if with_val else ()
  # Epoch 1's numbers differ from the predictions, which are epoch 2's.
  workdir = write_run(root, "ce", "cross_entropy", 0, [(1, 0.3, (0.9, 0.1, 0.1), *other_val),
                                                       (2, 0.6, (0.0, 1.0, 1.0), *val)],
                      precision=(math.nan, 2 / 3, 1.0))
  if with_val:
    run_log.write_predictions(workdir, "val", _predictions(VAL_SCORES, VAL_LABELS))
  run_log.write_predictions(workdir, "test", _predictions(TEST_SCORES, TEST_LABELS))
  workdir = write_run(root, "camri", "camri", 0, [(1, 0.3, (0.5,) * 3, *other_val),
                                                  (2, 0.6, (0.5, 0.5, 1.0), *val)],
                      tag="worst1", precision=(0.5, 1.0, 1.0))
  if with_val:
    run_log.write_predictions(workdir, "val", _predictions(VAL_SCORES, VAL_LABELS))
  run_log.write_predictions(workdir, "test", _predictions(TEST_SCORES, TEST_LABELS))
  return root


def test_cross_entropy_bias_row_by_hand(tmp_path):
  rows = _csv_rows(_bias_runs(str(tmp_path)))
  assert list(rows) == [("worst1", "cross_entropy"), ("worst1", "cross_entropy+bias"), ("worst1", "camri")]
  assert rows["worst1", "cross_entropy"]["precision_mean"] == ""  # never predicts class 0
  bias = rows["worst1", "cross_entropy+bias"]
  assert bias["setting"] == "b on val: 0.25" and bias["selected_on"] == "val" and bias["seeds"] == "1"
  assert float(bias["recall_mean"]) == pytest.approx(0.5) and float(bias["accuracy_mean"]) == pytest.approx(0.6)
  assert float(bias["precision_mean"]) == pytest.approx(0.5)
  assert float(bias["recall_gain_mean"]) == pytest.approx(0.5) and bias["recall_gain_ci_low"] == ""
  assert float(bias["accuracy_gain_mean"]) == pytest.approx(0.0, abs=1e-12)
  loose = _csv_rows(str(tmp_path), tolerance=0.15)["worst1", "cross_entropy+bias"]
  assert loose["setting"] == "b on val: 0.5" and float(loose["recall_mean"]) == 1.0
  assert float(loose["accuracy_mean"]) == pytest.approx(0.6) and float(loose["precision_mean"]) == 0.5
  text = report.report(str(tmp_path), warn=quiet)
  assert "| toy | worst1 | 0 (a) | cross_entropy+bias | b on val: 0.25 | 1 | - | 0.5000 | 0.5000 | 0.6000 |" in text
  # At epoch 1 cross-entropy's row changes; the bias row, from the last epoch's predictions, does not,
  # nor do its gains, over the same predictions at b = 0.
  rows = _csv_rows(str(tmp_path), policy=1)
  assert float(rows["worst1", "cross_entropy"]["recall_mean"]) == pytest.approx(0.9)
  assert rows["worst1", "cross_entropy+bias"] == {**bias, "epoch": "1"}


def test_bias_without_validation_predictions_is_chosen_on_test(tmp_path):
  rows = _csv_rows(_bias_runs(str(tmp_path), with_val=False))
  bias = rows["worst1", "cross_entropy+bias"]
  # On test: b = 1/8 gives accuracy 4/5, recall 1/2; b = 3/8 accuracy 3/5 (= at b = 0), recall 1.
  assert bias["setting"] == "b on test: 0.375" and bias["selected_on"] == "test"
  assert float(bias["recall_mean"]) == 1.0 and float(bias["accuracy_mean"]) == pytest.approx(0.6)


def test_post_hoc_bias_adds_a_row_for_every_method(tmp_path):
  rows = _csv_rows(_bias_runs(str(tmp_path)), post_hoc_bias=True)
  assert list(rows)[-2:] == [("worst1", "camri"), ("worst1", "camri+bias")]
  camri_bias = rows["worst1", "camri+bias"]
  assert camri_bias["setting"] == "b on val: 0.25" and camri_bias["settings_kept"] == "1"
  assert float(camri_bias["recall_gain_mean"]) == pytest.approx(0.5)  # over cross_entropy's 0


# Epochs and seeds.

def test_last_k_averages_the_last_k_rows(tmp_path):
  root = str(tmp_path)
  rows = [(1, 0.1, (0.1, 0.5, 0.5)), (2, 0.2, (0.2, 0.5, 0.5)), (3, 0.3, (0.4, 0.5, 0.5)), (4, 0.5, (0.8, 0.5, 0.5))]
  workdir = write_run(root, "ce", "cross_entropy", 0, rows, num_epochs=4, precision=(0.6, 1.0, 1.0))
  write_run(root, "short", "cross_entropy", 1, rows[:3], num_epochs=4)  # unfinished: left out
  with open(os.path.join(workdir, "metrics.csv")) as f:
    text = f.read().rstrip("\n").split("\n")
  text[-1] = text[-1].rsplit(",", 3)[0] + ",nan,1.0,1.0"  # class 0 never predicted at epoch 4
  with open(os.path.join(workdir, "metrics.csv"), "w") as f:
    f.write("\n".join(text) + "\n")
  assert report.parse_epoch_policy("last:2") == "last:2"
  with pytest.raises(ValueError, match="last:K"):
    report.parse_epoch_policy("last:0")
  warnings = []
  (result,) = report.load_results(root, "last:2", warn=warnings.append)
  assert result.accuracy == pytest.approx(0.4) and result.class_recall[0] == pytest.approx(0.6)
  assert result.test.class_precision[0] == pytest.approx(0.6)  # epoch 4's nan left out
  assert "1 runs have no row for the mean of the last 2 epochs" in warnings[0] and "short" in warnings[0]
  (result,) = report.load_results(root, "last:3", warn=quiet)
  assert result.accuracy == pytest.approx(1 / 3) and result.class_recall[0] == pytest.approx(1.4 / 3)
  with pytest.raises(ValueError, match="none of the 2 runs"):
    report.load_results(root, "last:5", warn=quiet)
  assert "mean of the last 2 epochs" in report.report(root, "last:2", warn=quiet)


def test_two_runs_of_one_setting_and_seed_count_once_with_a_warning(tmp_path):
  root = str(tmp_path)
  first = write_run(root, "ce0", "cross_entropy", 0, [(2, 0.8, (0.5,) * 3)])
  second = write_run(root, "quickstart/run", "cross_entropy", 0, [(2, 0.9, (0.5,) * 3)])
  write_run(root, "ce1", "cross_entropy", 1, [(2, 0.7, (0.5,) * 3)])
  warnings = []
  results = report.load_results(root, "last", warn=warnings.append)
  assert sorted(r.accuracy for r in results) == [0.7, 0.8]
  assert warnings == [f"runs {first} and {second} are one setting of cross_entropy on toy with one seed (0); "
                      f"counting only {first}"]


def test_reference_on_a_dataset_the_paper_does_not_cover(runs):
  text = report.report(runs, "last", "markdown", with_reference=True, warn=quiet)
  assert "The paper's Table 1 does not cover toy." in text
  assert "paper recall" not in text and "| toy | worst1 | 0 (a) | camri |" in text
  warnings = []
  report.report(runs, "last", "csv", with_reference=True, warn=warnings.append)
  assert "the paper's Table 1 does not cover toy" in warnings


# Reading runs.

_OPENED = []  # While a list is in it, the audit hook appends every opened path to it.


def _record_opens(event, args):
  if event == "open" and _OPENED and isinstance(args[0], (str, bytes, os.PathLike)):
    _OPENED[0].append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)


def test_the_report_on_200_runs_reads_each_file_once(tmp_path):
  root = str(tmp_path)
  for seed in range(40):
    workdir = write_run(root, f"ce{seed}", "cross_entropy", seed,
                        [(1, 0.5, (0.5,) * 3, 0.5, (0.5,) * 3), (2, 0.6, (0.0, 1.0, 1.0), 4 / 7, (1 / 3, 1.0, 0.5))])
    run_log.write_predictions(workdir, "val", _predictions(VAL_SCORES, VAL_LABELS))
    run_log.write_predictions(workdir, "test", _predictions(TEST_SCORES, TEST_LABELS))
    for margin in (0.1, 0.2, 0.3, 0.4):
      workdir = write_run(root, f"camri{margin}_{seed}", "camri", seed,
                          [(1, 0.5, (0.5,) * 3, 0.5, (0.5,) * 3), (2, 0.6, (0.5, 0.5, 1.0), 0.6, (0.5,) * 3)],
                          tag="worst1", margin=[margin])
      run_log.write_predictions(workdir, "test", _predictions(TEST_SCORES, TEST_LABELS))
  _roles_file(root, roles={"worst1": 0}, chosen_on="val", mean_recall=[0.5, 0.6, 0.7])
  opened = []
  _OPENED.append(opened)
  try:
    text = report.report(root, "best", warn=quiet, post_hoc_bias=True)
  finally:
    _OPENED.clear()
  assert "| camri+bias |" in text and "Roles of toy" in text
  inside = [os.path.relpath(p, root) for p in opened if os.path.abspath(p).startswith(root + os.sep)]
  counts = collections.Counter(inside)
  assert max(counts.values()) == 1, counts.most_common(3)
  # config and metrics; cross-entropy's two predictions; the reported camri setting's test predictions;
  # the roles file.
  assert len(inside) == 200 * 2 + 40 * 2 + 40 + 1


def test_settings_and_biases_keep_accuracy_by_one_rule(monkeypatch):
  # One slack for rounding serves both choices: widened to 0.15, it keeps a setting 0.14 below
  # cross-entropy's accuracy and a bias 1/7 below the accuracy at b = 0, as a tolerance would.
  monkeypatch.setattr(selection, "ROUNDING", 0.15)
  summaries = [selection.SettingSummary(("m", m), (), stats.summarize([recall]), stats.summarize([accuracy]))
               for m, recall, accuracy in [(0.1, 0.5, 0.80), (0.2, 0.9, 0.66)]]
  best, kept = selection.choose_setting(summaries, bound=0.80)
  assert best.setting == ("m", 0.2) and kept == 2
  assert selection.choose_bias(VAL_SCORES, VAL_LABELS, 0) == 0.5
  monkeypatch.setattr(selection, "ROUNDING", 1e-9)
  assert selection.choose_setting(summaries, bound=0.80) == (summaries[0], 1)
  assert selection.choose_bias(VAL_SCORES, VAL_LABELS, 0) == 0.25


def test_the_floor_rule_ties_to_accuracy_then_to_the_first():
  items = [("a", 0.5, 0.8), ("b", 0.7, 0.8), ("c", 0.7, 0.9), ("d", 0.7, 0.9), ("e", 0.99, 0.7)]
  best = selection.best_kept(items, floor=0.8, rates=lambda item: (item[2], item[1]))
  assert best == ("c", 0.7, 0.9)
  assert selection.best_kept(items, floor=0.95, rates=lambda item: (item[2], item[1])) is None


def test_runs_a_protocol_did_not_launch_are_named(tmp_path):
  # The README's quickstart trains a camri run in runs/signs; the protocol then puts its own
  # runs (seeds 0 and 1, role worst1 = class 0) in runs/signs/<run>. A later run of seed 5
  # and a run of another role land there too.
  rows = [(2, 0.8, (0.5,) * 3, 0.8, (0.5,) * 3)]
  quickstart = write_run(str(tmp_path), "signs", "camri", 0, rows, margin=[0.3])
  root = os.path.join(str(tmp_path), "signs")
  for seed in range(2):
    write_run(root, f"ce{seed}", "cross_entropy", seed, rows)
    write_run(root, f"camri{seed}", "camri", seed, rows, tag="worst1", margin=[0.1])
  later = write_run(root, "ce5", "cross_entropy", 5, rows)
  other = write_run(root, "other", "camri", 0, rows, classes=(1,), tag="worst1", margin=[0.1])
  _roles_file(root, roles={"worst1": 0}, chosen_on="val", mean_recall=[0.5, 0.6, 0.7], seeds=2)
  warnings = []
  with pytest.raises(ValueError, match="role 'worst1'"):  # Class 1 in role worst1.
    report.report(root, warn=warnings.append)
  assert warnings[-1] == (f"3 runs under {root} were not launched by launch.protocol (a role, class or "
                          f"seed not in its {run_log.ROLES_FILE}, or not a run directory of it) and "
                          f"are pooled with its runs: {quickstart}, {later}, {other}")
  os.remove(os.path.join(other, "config.json"))
  warnings = []
  assert "| class0 |" in report.report(root, warn=warnings.append)
  assert sum(w.endswith(f"are pooled with its runs: {quickstart}, {later}") for w in warnings) == 1


def _scored_run(root, name, method, seed, test, val=None, **kwargs):
  """A run of one epoch whose metrics are those of its saved predictions, (scores, labels) per split."""
  def rates(scores, labels):
    predicted = scores.argmax(1)
    return (float(np.mean(predicted == labels)),
            tuple(float(np.mean(predicted[labels == k] == k)) for k in range(3)))
  row = (*rates(*test), *(rates(*val) if val is not None else rates(*test)))
  workdir = write_run(root, name, method, seed, [(2, *row)],
                      tag="" if method == "cross_entropy" else "worst1", **kwargs)
  for split, arrays in (("test", test), ("val", val)):
    if arrays is not None:
      run_log.write_predictions(workdir, split, _predictions(*arrays))
  return workdir


def _twelve_images(root, ce_right, camri_right):
  """Two seeds on a test set of 12 images, 4 of class 0; each run's metrics agree with its predictions.

  ce_right and camri_right: how many of class 0's 4 images each run gets right (the others all right).
  """
  labels = np.array([0] * 4 + [1] * 4 + [2] * 4)
  for seed in range(2):
    for name, method, right in (("ce", "cross_entropy", ce_right), ("camri", "camri", camri_right)):
      scores = np.eye(3, dtype=np.float32)[labels]
      scores[right:4] = np.eye(3, dtype=np.float32)[1]  # Class 0's misses go to class 1.
      _scored_run(root, f"{name}{seed}", method, seed, (scores, labels))
  return root


def test_two_seeds_with_equal_gains_do_not_look_certain(tmp_path):
  # Both seeds: camri gets 3 of class 0's 4 test images right, cross-entropy 2: +0.25 twice.
  root = _twelve_images(str(tmp_path), ce_right=2, camri_right=3)
  camri = _csv_rows(root)["worst1", "camri"]
  assert float(camri["recall_gain_mean"]) == pytest.approx(0.25) and camri["pairs"] == "2"
  # The seeds agree, the test set does not: resampling its 12 images moves the gain.
  low, high = float(camri["recall_gain_ci_low"]), float(camri["recall_gain_ci_high"])
  assert low < 0 < high and camri["interval"] == "seeds+test"
  lines = report.report(root, warn=quiet).splitlines()
  assert any("| camri |" in line and "+0.2500 [" in line and "]† |" in line for line in lines)
  assert "a bootstrap over the test examples finds" in lines[0]


def test_test_set_variance_is_the_binomial_variance_of_a_mean_difference():
  # One pair, 100 examples, the runs differ on 30: the mean difference of accuracy over resamples
  # of the examples has variance p (1 - p) / N = 0.3 * 0.7 / 100.
  hits_a = np.zeros((1, 1, 100), bool)
  hits_a[0, 0, :30] = True
  hits_b = np.zeros_like(hits_a)
  totals = np.ones((1, 100), bool)
  v = stats.test_set_variance(hits_a, hits_b, totals)
  assert v == pytest.approx(0.0021)
  assert stats.test_set_variance(hits_a, hits_a, totals) == 0.0  # Equal runs: no difference to move.
  # It is what resampling the examples finds: 20000 bootstrap means of the difference.
  rng = np.random.default_rng(0)
  means = hits_a[0, 0][rng.integers(0, 100, (20000, 100))].mean(1)
  assert np.var(means) == pytest.approx(v, rel=0.05)
  # Recall of two classes, 4 and 2 examples: per class var / N, averaged over G^2 = 4.
  labels = np.array([0, 0, 0, 0, 1, 1])
  totals = np.stack([labels == 0, labels == 1])
  a = np.array([[[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]]], bool)  # Seed 0: differs on 2 of class 0, 1 of 1.
  b = np.zeros_like(a)
  assert stats.test_set_variance(a, b, totals) == pytest.approx((0.25 / 4 + 0.25 / 2) / 4)
  # Two seeds of equal differences: the t-interval alone has zero width; the test set widens it.
  interval = stats.two_source_interval([0.3, 0.3], v, bounds=stats.RATE_DIFFERENCE)
  half = T_975[1] * math.sqrt(v)
  assert (interval.low, interval.high) == (pytest.approx(0.3 - half), pytest.approx(min(0.3 + half, 1.0)))
  assert interval.with_test_set and not stats.t_interval([0.3, 0.3]).with_test_set


# Gains over cross_entropy+bias.

def _biased_reference(scores, labels, b):
  """(predicted, accuracy, recall of class 0) with b added to class 0's score (ties to class 0: argmax's first)."""
  predicted = np.argmax(scores.astype(np.float64) + np.array([b, 0.0, 0.0]), axis=1)
  return predicted, np.mean(predicted == labels), np.mean(predicted[labels == 0] == 0)


def _chosen_bias_reference(scores, labels):
  """The b of highest recall among 0 and every example's gap whose accuracy is at least b = 0's."""
  scores64 = scores.astype(np.float64)
  gaps = scores64[:, 1:].max(1) - scores64[:, 0]
  candidates = [0.0] + sorted(set(gaps[gaps > 0]))
  rates = [_biased_reference(scores, labels, b)[1:] for b in candidates]
  best = max((recall, accuracy, -b) for (accuracy, recall), b in zip(rates, candidates)
             if accuracy >= rates[0][0] - 1e-9)
  return -best[2]


def _gain_reference(a, b, labels, field, t):
  """Mean, low, high of the paired gain of hits a over hits b ((n, N) bool), as stats' docstring defines it."""
  group = labels == 0 if field == "recall" else np.ones_like(labels, bool)
  rates = lambda hits: hits[:, group].mean(1)
  diffs = rates(a) - rates(b)
  if len(diffs) < 2:
    return diffs[0], math.nan, math.nan
  v = np.var((a.astype(float) - b)[:, group].mean(0)) / group.sum()
  half = t * math.sqrt(np.var(diffs, ddof=1) / len(diffs) + v)
  return diffs.mean(), max(diffs.mean() - half, -1.0), min(diffs.mean() + half, 1.0)


def test_every_method_row_is_paired_with_cross_entropy_plus_bias_by_seed(tmp_path):
  """The gains over cross_entropy+bias against NumPy on random scores: cross-entropy seeds 0-2
  (class 0's score lowered, so a bias pays), camri seeds 0-3 (3 has no cross-entropy run: no
  pair), a camri head of seed 0 only (one pair: no interval).

  Every number is a mean, variance or square root of at most 40 terms in [-1, 1], and the table
  and this reference compute them in float64 in another order: they agree to a few ulps of 1,
  well within 1e-12 (the csv rounds to 12 decimals).
  """
  root, rng = str(tmp_path), np.random.default_rng(1)
  labels = {"test": rng.integers(0, 3, 40), "val": rng.integers(0, 3, 30)}
  def scores(split, shift):
    s = rng.normal(size=(len(labels[split]), 3)) + 1.5 * np.eye(3)[labels[split]] - shift * np.eye(3)[0]
    return s.astype(np.float32), labels[split]
  runs = {}
  for method, seeds, shift, extra in [("cross_entropy", range(3), 1.0, {}), ("camri", range(4), 0.3, {}),
                                      ("head", [0], 0.5, {"trunk_source": {"loss": "cross_entropy"}})]:
    for seed in seeds:
      runs[method, seed] = test, val = scores("test", shift), scores("val", shift)
      _scored_run(root, f"{method}{seed}", "camri" if method == "head" else method, seed, test, val,
                  margin=[0.1], **extra)
  rows = {r.method: r for r in report.build_table(report.load_results(root, "last", warn=quiet),
                                                  warn=quiet, post_hoc_bias=True)}
  y = labels["test"]
  def hits(method, seeds, biased):
    out = []
    for seed in seeds:
      test, val = runs[method, seed]
      b = _chosen_bias_reference(*val) if biased else 0.0
      out.append(_biased_reference(test[0], y, b)[0] == y)
    return np.array(out)
  ce_bias = hits("cross_entropy", range(3), biased=True)
  expected = {"camri": (hits("camri", range(3), False), ce_bias, 3),
              "camri+bias": (hits("camri", range(3), True), ce_bias, 3),
              "camri (head on cross_entropy)": (hits("head", [0], False), ce_bias[:1], 1)}
  for method, (a, b, n) in expected.items():
    for field in ("recall", "accuracy"):
      gain = getattr(rows[method], f"{field}_gain_over_bias")
      mean, low, high = _gain_reference(a, b, y, field, T_975[2])
      assert gain.n == n and gain.with_test_set == (n > 1), method
      assert gain.mean == pytest.approx(mean, abs=1e-12), (method, field)
      assert np.allclose([gain.low, gain.high], [low, high], rtol=0, atol=1e-12, equal_nan=True)
  assert rows["camri"].recall_gain_over_bias.low > -1 and rows["camri"].recall_gain_over_bias.high < 1
  for baseline in ("cross_entropy", "cross_entropy+bias"):
    assert rows[baseline].recall_gain_over_bias is None and rows[baseline].accuracy_gain_over_bias is None

  csv_rows = {r["method"]: r for r in csv.DictReader(io.StringIO(
      report.report(root, "last", "csv", warn=quiet, post_hoc_bias=True)))}
  camri, head = csv_rows["camri"], csv_rows["camri (head on cross_entropy)"]
  assert (camri["pairs_over_bias"], camri["interval_over_bias"], camri["seeds"]) == ("3", "seeds+test", "4")
  for column in ("recall_gain_over_bias_mean", "recall_gain_over_bias_ci_low", "accuracy_gain_over_bias_ci_high"):
    field, end = column.split("_gain_over_bias_")
    value = getattr(rows["camri"], f"{field}_gain_over_bias")
    assert float(camri[column]) == pytest.approx(getattr(value, {"mean": "mean", "ci_low": "low",
                                                                  "ci_high": "high"}[end]), abs=1e-12)
  assert (head["pairs_over_bias"], head["recall_gain_over_bias_ci_low"], head["interval_over_bias"]) == ("1", "", "")
  assert csv_rows["cross_entropy+bias"]["pairs_over_bias"] == "" and csv_rows["cross_entropy+bias"]["pairs"] == "3"

  text = report.report(root, "last", warn=quiet)
  gain = rows["camri"].recall_gain_over_bias
  cell = f"{gain.mean:+.4f} [{gain.low:+.4f}, {gain.high:+.4f}]" + ("†" if gain.low <= 0 <= gain.high else "")
  assert any(line.startswith("| toy | worst1 | 0 (a) | camri |") and line.endswith(f"| {cell} |")
             for line in text.splitlines())
  head_cell = f"| {rows['camri (head on cross_entropy)'].recall_gain_over_bias.mean:+.4f} |"
  assert any("| camri (head on cross_entropy) |" in line and line.endswith(head_cell) for line in text.splitlines())
  assert "Recall gain vs +bias: the same paired gain and interval over the same seed's cross_entropy+bias" in text
  assert "'(head on cross_entropy)': decoupled runs" in report.report(root, warn=quiet, post_hoc_bias=True)
