"""camri.report on hand-written run directories with known numbers."""

import csv
import io
import json
import math
import os

import pytest

from camri import report

CLASS_NAMES = ["a", "b", "c"]


def write_run(root, name, method, seed, rows, classes=(0,), tag="", dataset="toy", num_epochs=2, **loss):
  """A run dir like camri.main's; rows: (epoch, accuracy, (recall of class 0, 1, 2))."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  loss = {"name": method, "important_classes": list(classes), "margin": [0.0], "scale": 1.0, **loss}
  config = {"dataset": dataset, "num_epochs": num_epochs, "seed": seed, "tag": tag, "model": "cnn",
            "num_classes": 3, "class_names": CLASS_NAMES, "loss": loss}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(workdir, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["epoch", "train_loss", "test_accuracy", "test_recall",
                     "test_recall_0", "test_recall_1", "test_recall_2"])
    for epoch, accuracy, recalls in rows:
      writer.writerow([epoch, 1.0, accuracy, sum(recalls[k] for k in classes) / len(classes), *recalls])


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
  assert len(warnings) == 1 and "1 runs have no row" in warnings[0] and "unfinished" in warnings[0]
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
  median = rows["median", "camri"]
  assert median.recall is None and median.accuracy is None and (median.settings_kept, median.settings_total) == (0, 1)

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
  assert rows["worst1", "arcface"].recall is None


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
  assert lines[2] == "| dataset | role | class | method | setting | seeds | kept | recall | accuracy |"
  assert "| toy | worst1 | 0 (a) | camri | margin=0.1, scale=16 | 3 | 1/2 | 0.6500 ± 0.0500 | 0.8300 ± 0.0100 |" in lines
  assert "| toy | median | 1 (b) | camri | - | 0 | 0/1 | - | - |" in lines
  assert "| toy | worst1 | 0 (a) | cross_entropy | - | 3 | - | 0.6000 ± 0.1000 | 0.8200 ± 0.0200 |" in lines


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
  assert arcface["recall_mean"] == "" and arcface["accuracy_mean"] == "" and arcface["settings_kept"] == "0"


def test_latex(runs):
  text = report.report(runs, "last", "latex", warn=lambda m: None)
  lines = text.splitlines()
  assert lines[0] == r"\begin{table}" and lines[-1] == r"\end{table}"
  assert r"\caption{" in text and "last epoch" in text and r"$\pm$" in text
  assert (r"toy & worst1 & 0 (a) & cross\_entropy & - & 3 & -- & $0.6000 \pm 0.1000$ & "
          r"$0.8200 \pm 0.0200$ \\") in lines
  assert r"toy & median & 1 (b) & camri & - & 0 & 0/1 & -- & -- \\" in lines
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
  assert "| cifar10 | worst1 | 0 (a) | camri | margin=0.2, scale=16 | 2 | 1/1 | 0.8000 ± 0.0000 | 0.8900 ± 0.0000 | 0.7919 | 0.8821 |" in text
  assert "| cifar10 | worst1 | 0 (a) | wce | - | 0 | 0/1 | - | - | 0.8023 | 0.8797 |" in text
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
  assert "--epoch must be last, best or a positive epoch number" in capsys.readouterr().err


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


def test_no_runs_warns(tmp_path):
  warnings = []
  assert report.load_results(str(tmp_path), "last", warn=warnings.append) == []
  assert warnings == [f"no run directories (with config.json) under {tmp_path}"]
