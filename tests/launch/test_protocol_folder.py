"""launch.protocol --dataset folder end to end with the real trainer, report and plots (issue 17).

A tree of 4 classes of tiny RGB images, read as greyscale (channels=1);
`--classes cow --grid smoke --seeds 2`: 2 cross-entropy runs and 2 x 4 runs of
stage 2, one epoch each, 2 at a time; every run alone, then in populations with
2 x 5 heads on the cross-entropy runs' frozen trunks (`--heads`, issue 26).
"""

import csv
import io
import json
import math
import os

import jax
import numpy as np

from camri import export
from camri import inference
from camri import plots
from camri import predict
from camri import report
from camri import run_log
from launch import protocol
from tests import round_off
from tests import run_main
from tests.data import test_folder_runs as folder_runs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ["cross_entropy", "cross_entropy+bias", "wce", "rwwce", "arcface", "camri"]
HEAD = " (head on cross_entropy)"
WITH_HEADS = ["cross_entropy", "cross_entropy+bias", "cross_entropy" + HEAD, "wce", "wce" + HEAD,
              "rwwce", "rwwce" + HEAD, "arcface", "arcface" + HEAD, "camri", "camri" + HEAD]


def _protocol(tree, tmp_path, name, *extra):
  return protocol.main([
      "--dataset", "folder", "--config", f"configs/folder.py:path={tree},size=8,channels=1",
      "--classes", "cow", "--grid", "smoke", "--seeds", "2", "--root", str(tmp_path / name),
      "--executor", "local", "--parallel", "2", "--config.num_epochs=1",
      "--config.batch_size=8", "--config.progress_bar=False",
      f"--config.data_dir={tmp_path / 'tfds'}", *extra])


def test_folder_protocol_report_and_plots_end_to_end(tmp_path, image_tree, compile_cache, monkeypatch,
                                                     capsys):
  tree = image_tree("signs")
  for key, value in run_main.env(compile_cache).items():  # camri.main of this checkout, cached compiles
    monkeypatch.setenv(key, value)
  monkeypatch.chdir(REPO)
  assert _protocol(tree, tmp_path, "alone", "--population", "1") == 0
  root = tmp_path / "alone" / "signs"
  err = capsys.readouterr().err
  assert err.rstrip().endswith(f"report: python -m camri.report {root}\n"
                               f"trade-off plots: python -m camri.plots tradeoff {root} --out {root}/plots")
  picked = json.loads((root / protocol.CLASSES_FILE).read_text())
  assert (picked["dataset"], picked["roles"], picked["chosen_on"]) == ("folder:signs", {"cow": 2}, None)

  rows = list(csv.DictReader(io.StringIO(report.report(str(root), fmt="csv", warn=print))))
  assert [(r["dataset"], r["role"], r["classes"], r["method"]) for r in rows] == [
      ("folder:signs", "cow", "2", method) for method in METHODS]
  assert all(r["seeds"] == "2" for r in rows)
  ce_runs = [w for w in run_log.find_runs(root) if "cross_entropy" in w]
  ce_recall = [run_log.read_metrics(w)[-1]["test_recall_2"] for w in ce_runs]
  assert float(rows[0]["recall_mean"]) == math.fsum(ce_recall) / 2
  _check_gains_over_bias(rows)
  assert report.main([str(root)]) == 0
  assert "Roles of folder:signs: the classes named on the command line" in capsys.readouterr().out
  out = tmp_path / "plots"
  assert plots.main(["grid", str(root), "--out", str(out)]) == 0
  assert {"curves_folder-signs_cow.png", "class_recall_folder-signs_cow.png",
          "tradeoff_folder-signs_cow.png"} <= set(os.listdir(out))

  # The same protocol in populations, with heads (issue 26): `--population 10` trains the
  # same 10 runs as 5 populations of 2 (one per loss) dealt to the 2 parallel processes,
  # one of them cut in two so that each process trains 5 runs (`populations.deal`),
  # and the report has the same rows. The values agree within float32 round-off carried
  # through programs of another shape: tests/test_population.py shows in float64 that a
  # member computes its run alone, so a test prediction may differ only at a near tie, one
  # image per run at most. `--heads` adds 2 x 5 heads on the cross-entropy runs' frozen
  # trunks, each its own program (its trunk's features).
  assert _protocol(tree, tmp_path, "pop", "--population", "10", "--heads") == 0
  pop = tmp_path / "pop" / "signs"
  processes = pop / "_populations"
  specs = [json.loads((processes / name / "population.json").read_text())
           for name in os.listdir(processes) if name.startswith("population-")]
  assert sorted(len(p) for spec in specs for p in spec["populations"]) == [1, 1, 2, 2, 2, 2]
  assert sorted(sum(map(len, spec["populations"])) for spec in specs) == [5, 5]
  warnings = []
  packed = list(csv.DictReader(io.StringIO(report.report(str(pop), fmt="csv",
                                                         warn=warnings.append))))
  assert not [w for w in warnings if "not launched" in w], warnings
  assert [(r["dataset"], r["role"], r["classes"], r["method"]) for r in packed] == [
      ("folder:signs", "cow", "2", method) for method in WITH_HEADS]
  _check_gains_over_bias(packed)
  _check_heads(pop, [w for w in run_log.find_runs(pop)
                     if "cross_entropy" in w and os.path.dirname(w) == str(pop)], tree, tmp_path)
  assert report.main([str(pop)]) == 0
  assert ("'(head on cross_entropy)': decoupled runs, which trained only new layers"
          in capsys.readouterr().out)
  assert plots.main(["tradeoff", str(pop), "--out", str(tmp_path / "t")]) == 0
  assert os.listdir(tmp_path / "t") == ["tradeoff_folder-signs_cow.png"]

  labels = run_log.read_predictions(ce_runs[0], "test")["labels"]
  key = lambda r: (r["dataset"], r["role"], r["classes"], r["method"], r["seeds"],
                   r["setting"] if r["method"] != "cross_entropy+bias" else "")
  packed = [r for r in packed if HEAD not in r["method"]]
  assert [key(r) for r in packed] == [key(r) for r in rows]
  for a, p in zip(rows, packed):
    assert abs(float(a["accuracy_mean"]) - float(p["accuracy_mean"])) <= 1 / len(labels), a
    assert abs(float(a["recall_mean"]) - float(p["recall_mean"])) <= 1 / sum(labels == 2), a


def _check_gains_over_bias(rows):
  """Every method row, heads too, is paired with cross_entropy+bias on both seeds.

  With the same two seeds on both sides the mean paired difference is the difference of the
  means: equal but for float64 round-off (1e-16) and the csv's rounding to 12 decimals of
  the three numbers (5e-13 each).
  """
  bias = next(r for r in rows if r["method"] == "cross_entropy+bias")
  assert bias["pairs_over_bias"] == "" and bias["pairs"] == "2"
  for r in rows[2:]:
    assert (r["pairs_over_bias"], r["interval_over_bias"]) == ("2", "seeds+test"), r["method"]
    for field in ("recall", "accuracy"):
      difference = float(r[f"{field}_mean"]) - float(bias[f"{field}_mean"])
      assert abs(float(r[f"{field}_gain_over_bias_mean"]) - difference) <= 2e-12, (r["method"], field)


def _check_heads(root, ce_runs, tree, tmp_path):
  """Each seed's heads took its cross-entropy run's trunk; predict and export read a head run."""
  heads = run_log.find_runs(root / protocol.HEADS_DIR)
  assert len(heads) == 2 * 5
  for workdir in heads:
    record = run_log.read_config(workdir)
    source = record["trunk_source"]
    assert source["run"] == os.path.dirname(workdir).replace(
        os.path.join(protocol.HEADS_DIR, ""), "")
    assert (source["loss"], record["freeze_backbone"]) == ("cross_entropy", True)
    assert source["run"] in ce_runs and source["step"] == 4  # 32 images, batch 8, 1 epoch.
  camri_head = next(w for w in heads if "loss.name=camri" in w)
  run = inference.load_run(camri_head)  # The whole model: trunk, feature layer, head.
  [row] = run_log.read_metrics(camri_head)
  paths = sorted(str(p) for p in (tree / "test").rglob("*.png"))
  out = tmp_path / "head_predictions.csv"
  assert predict.main(["--workdir", camri_head, *paths, "--out", str(out)]) == 0
  with open(out, newline="") as f:
    table = list(csv.DictReader(f))
  scores = np.array([[float(r[f"score_{c}"]) for c in run.class_names] for r in table])
  labels = [run.class_names.index(os.path.basename(os.path.dirname(p))) for p in paths]
  predicted = [run.class_names.index(r["predicted"]) for r in table]
  round_off.assert_same_predictions(predicted, scores, labels, accuracy=row["test_accuracy"])
  artifact = tmp_path / "head.jax"
  assert export.main(["--workdir", camri_head, "--out", str(artifact)]) == 0
  model = jax.export.deserialize(artifact.read_bytes())
  images = np.stack([folder_runs._prepared_as_uint8(run, p) for p in paths])  # pylint: disable=protected-access
  round_off.assert_scores_agree(np.asarray(model.call(images)), scores)
