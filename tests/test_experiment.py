"""The digits grid end to end with the real `camri.main`: grid, re-run, report, angles, plots.

The README's example runs launch/sweeps/digits.py in full (9 runs, 8 epochs);
here its `seeds=1,epochs=1` variant (3 runs of one epoch) keeps the test cheap.
"""

import contextlib
import glob
import io
import os

import numpy as np
import pytest

from camri import features
from camri import plots
from camri import report
from camri import run_log
from camri.results import figures
from launch import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = "launch/sweeps/digits.py:seeds=1,epochs=1"


def _grid(root):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = grid.main([SWEEP, "--root", str(root), "--executor", "local", "--parallel", "2"])
  return status, out.getvalue(), err.getvalue()


def test_digits_grid_end_to_end(tfds_dir, tmp_path, monkeypatch, capsys):
  # One test, not several sharing a module fixture: pytest-xdist would run such
  # a fixture once per worker, i.e. train the grid twice.
  root = tmp_path / "runs"
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)  # The subprocesses read the session's digits.
  monkeypatch.setenv("PYTHONPATH", REPO)
  workdirs = check_one_command_runs_the_grid_and_a_second_starts_nothing(root)
  check_the_report_prints_the_table(root, capsys)
  camri_run, ce_run = workdirs[0], workdirs[2]  # Angular head, linear head.
  loaded = {w: features.load_test_features(w, data_dir=tfds_dir) for w in (camri_run, ce_run)}
  for workdir, run in loaded.items():
    check_metrics_angle_statistics_match_the_checkpointed_features(workdir, run)
  check_grid_and_angle_plots(root, loaded, camri_run, tfds_dir, tmp_path / "plots")


def check_one_command_runs_the_grid_and_a_second_starts_nothing(root):
  status, out, err = _grid(root)
  assert status == 0, err
  assert "3 runs: 0 finished (skipped), 0 unfinished (resumed), 3 new" in err
  # By default the two CAMRI runs, which differ only in their margin, train as one
  # population (`populations.DEFAULT_SIZE`); cross-entropy's program is another, its run
  # alone in the other parallel slot.
  assert "3 runs, 2 populations of at most 16 (1 of one run), in 2 processes" in err
  assert out.count("start ") == 2 and out.count("done ") == 2
  workdirs = run_log.find_runs(root)
  assert [os.path.basename(w) for w in workdirs] == [
      "loss.margin=0.19635,loss.name=camri,num_epochs=1,seed=0",
      "loss.margin=0.392699,loss.name=camri,num_epochs=1,seed=0",
      "loss.name=cross_entropy,num_epochs=1,seed=0"]
  [population] = glob.glob(os.path.join(root, "_populations", "population-*"))
  for workdir, (log, done) in zip(workdirs, [(population, "done: 2 runs, epoch 1")] * 2 + [
      (workdirs[2], "done: epoch 1")]):
    assert run_log.is_finished(workdir)
    with open(os.path.join(log, "launch.log")) as f:
      assert done in f.read()

  status, out, err = _grid(root)
  assert status == 0
  assert "3 runs: 3 finished (skipped), 0 unfinished (resumed), 0 new" in err
  assert "start" not in out
  for log, module in ((population, "camri.population"), (workdirs[2], "camri.main")):
    with open(os.path.join(log, "launch.log")) as f:  # One command line: no second start.
      assert sum(line.startswith("# ") and module in line for line in f) == 1
  return workdirs


def check_the_report_prints_the_table(root, capsys):
  capsys.readouterr()
  assert report.main([str(root)]) == 0
  out = capsys.readouterr().out
  lines = [line for line in out.splitlines() if line.startswith("| digits")]
  assert len(lines) == 3
  assert lines[0].startswith("| digits | class8 | 8 (8) | cross_entropy | - | 1 | - |")
  # From the saved predictions, b chosen on the validation split.
  assert lines[1].startswith("| digits | class8 | 8 (8) | cross_entropy+bias | b on val: ")
  # After one epoch CAMRI may or may not keep cross-entropy's accuracy: 1/2, 2/2 or 0/2.
  assert "| camri |" in lines[2] and "/2 |" in lines[2]


def check_metrics_angle_statistics_match_the_checkpointed_features(workdir, run):
  (row,) = run_log.read_metrics(workdir)
  assert run.features.shape == (360, 64) and run.labels.shape == (360,)
  np.testing.assert_allclose(np.linalg.norm(run.class_weights, axis=0), 1.0, rtol=1e-5)
  unit = run.features / np.linalg.norm(run.features, axis=1, keepdims=True)
  np.testing.assert_allclose(unit @ run.class_weights, run.cosine, atol=1e-5)
  if run.config["loss"]["name"] == "camri":  # (Cross-entropy predicts from its biased logits.)
    assert np.mean(np.argmax(run.cosine, 1) == run.labels) == pytest.approx(row["test_accuracy"])
  for k in range(10):
    angles = run.angles[run.labels == k]
    assert row[f"test_angle_mean_{k}"] == pytest.approx(angles.mean(), abs=1e-3)
    assert row[f"test_angle_var_{k}"] == pytest.approx(angles.var(), rel=1e-3, abs=1e-2)


def check_grid_and_angle_plots(root, loaded, camri_run, tfds_dir, out_dir):
  paths = plots.plot_grid(str(root), str(out_dir), warn=lambda message: None)
  assert sorted(os.path.basename(p) for p in paths) == [
      "angle_stats_digits_class8.png", "class_recall_digits_class8.png",
      "curves_digits_class8.png", "margin_digits_class8.png", "tradeoff_digits_class8.png"]
  paths.append(figures.plot_angle_histograms(
      {os.path.basename(w): (f.angles, f.labels) for w, f in loaded.items()},
      str(out_dir / "histograms.png"), important=(8,)))
  # The CLI's path: restore, then plot.
  assert plots.main(["angles", camri_run, "--out", str(out_dir / "angles.png"), "--data-dir", tfds_dir]) == 0
  paths.append(str(out_dir / "angles.png"))
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(p) > 10_000
