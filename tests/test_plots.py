"""camri.plots: every plot writes a PNG from small synthetic inputs; loss contours' values."""

import math
import os

import numpy as np
import pytest

from camri import losses
from camri import plots
from camri import run_log
from camri import stats
from camri.results import figures
from camri.results import series

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG
  assert os.path.getsize(path) > 5_000


def metrics_rows(epochs, offset):
  return [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e + offset,
           "test_accuracy": 0.5 + 0.1 * e, "test_recall": 0.4 + 0.1 * e + offset} for e in epochs]


def test_training_curves(tmp_path):
  groups = {"cross_entropy": [metrics_rows([1, 2, 3], 0.0), metrics_rows([1, 2, 3], 0.02)],
            "camri": [metrics_rows([1, 2], 0.05)]}  # One shorter run: its epoch 3 is not drawn.
  epochs, mean, std, runs = series.epoch_curve(groups["cross_entropy"], "test_loss")
  assert epochs == [1, 2, 3] and runs == 2
  np.testing.assert_allclose(mean, [1.21, 0.61, 0.41])
  np.testing.assert_allclose(std, [0.02 / math.sqrt(2)] * 3)  # ddof=1
  epochs, mean, std, runs = series.epoch_curve([metrics_rows([1, 2, 3], 0.0), metrics_rows([1, 2], 0.02)],
                                               "test_recall")
  np.testing.assert_allclose(mean, [0.51, 0.61, 0.7])  # Epoch 3: the one run that reached it.
  assert np.isnan(std[2])
  assert series.epoch_curve(groups["camri"], "val_accuracy") is None
  curves = {label: {c: series.epoch_curve(runs, c) for c in series.TRAINING_COLUMNS}
            for label, runs in groups.items()}
  assert_png(figures.plot_training_curves(curves, str(tmp_path / "curves.png"), title="t"))


def test_class_recall_and_angle_stats(tmp_path):
  rng = np.random.default_rng(0)
  recall = {"cross_entropy": rng.uniform(0.7, 1.0, (3, 4)), "camri": rng.uniform(0.7, 1.0, (3, 4))}
  assert_png(figures.plot_class_recall(recall, str(tmp_path / "recall.png"), ["a", "b", "c", "d"], (1,)))
  angles = {label: (rng.uniform(20, 60, (3, 4)), rng.uniform(10, 90, (3, 4))) for label in recall}
  assert_png(figures.plot_angle_stats(angles, str(tmp_path / "angles.png"), important=(2,)))


def test_margin_sweep(tmp_path):
  series = {"camri (scale=16)": [(4 * math.pi / 64, [0.9, 0.92], [0.8, 0.81]),
                                 (8 * math.pi / 64, [0.95, 0.93], [0.79, 0.8])],
            "arcface (scale=16)": [(4 * math.pi / 64, [0.88], [0.8])]}
  assert_png(figures.plot_margin_sweep(series, str(tmp_path / "margin.png"),
                                     baseline=("cross_entropy", [0.85, 0.87], [0.8, 0.82])))


def test_angle_histograms_and_features_2d(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(3), 20)
  groups = {"ce": (rng.uniform(10, 70, 60), labels), "camri": (rng.uniform(5, 40, 60), labels)}
  assert_png(figures.plot_angle_histograms(groups, str(tmp_path / "hist.png"), ("x", "y", "z"), (0,)))
  weights = figures.contour_weights()
  features = weights[:, labels].T * 3.0 + rng.normal(0, 0.5, (60, 2))
  panels = {"ce": (features, labels, weights), "camri": (features * 2, labels, weights)}
  assert_png(figures.plot_features_2d(panels, str(tmp_path / "f2d.png"), important=(0,)))
  with pytest.raises(ValueError, match="feature_dim 2"):
    figures.plot_features_2d({"3d": (np.ones((2, 3)), np.zeros(2, int), np.ones((3, 3)))},
                           str(tmp_path / "bad.png"))


def test_loss_contours_png(tmp_path):
  assert_png(figures.plot_loss_contours(str(tmp_path / "contours.png"), resolution=21))


def test_loss_surface_values_at_points():
  weights = figures.contour_weights()  # W0 at 90 degrees, W1 at 210, W2 at 330; unit norms.
  points = np.array([[0.0, 2.0], [2.0, 0.0], [-1.0, -1.0]], np.float32)
  margin, scale = 0.3, 8.0
  # Cross-entropy over z @ W, by hand: logits of (0, 2) are (2, -1, -1).
  ce = figures.loss_surface("cross_entropy", points, weights, 0, margin, scale)
  assert ce[0] == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(-1))), rel=1e-5)
  # The margin losses against camri.losses and NumPy.
  labels = np.zeros(3, np.int32)
  normface = figures.loss_surface("normface", points, weights, 0, margin, scale)
  np.testing.assert_allclose(normface, losses.normface_loss(points, weights, labels, scale), rtol=1e-6)
  arcface = figures.loss_surface("arcface", points, weights, 1, margin, scale)
  np.testing.assert_allclose(arcface, losses.arcface_loss(points, weights, labels + 1, margin, scale),
                             rtol=1e-6)
  camri_important = figures.loss_surface("camri", points, weights, 0, margin, scale, important=0)
  camri_other = figures.loss_surface("camri", points, weights, 1, margin, scale, important=0)
  # CAMRI is ArcFace for the important class's samples and NormFace for the others'.
  np.testing.assert_allclose(camri_important,
                             figures.loss_surface("arcface", points, weights, 0, margin, scale), rtol=1e-6)
  np.testing.assert_allclose(camri_other,
                             figures.loss_surface("normface", points, weights, 1, margin, scale), rtol=1e-6)
  # Point (2, 0) is at 0 degrees: 90 degrees from W0, 150 from W1 and 30 from W2.
  cos = np.cos(np.radians([90.0 + 180 * margin / math.pi, 150.0, 30.0]))
  expected = -(scale * cos[0]) + np.log(np.sum(np.exp(scale * cos)))
  assert camri_important[1] == pytest.approx(expected, rel=1e-5)
  with pytest.raises(ValueError, match="loss must be one of"):
    figures.loss_surface("cosface", points, weights, 0, margin, scale)


def test_grid_without_runs_is_an_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    plots.main(["grid", str(tmp_path), "--out", str(tmp_path / "plots")])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"error: no run directories (with config.json) under {tmp_path}\n"


def test_tradeoff_png(tmp_path):
  points = [("cross_entropy", "cross_entropy (b = 0)", stats.summarize([0.80, 0.82]), stats.summarize([0.5, 0.6]),
             "baseline"),
            ("cross_entropy+bias", "cross_entropy+bias", stats.summarize([0.80, 0.81]),
             stats.summarize([0.7, 0.75]), "bias"),
            ("camri", "camri", stats.summarize([0.81, 0.82]), stats.summarize([0.7, 0.8]), "setting"),
            ("camri", "camri (m=0.2)", stats.summarize([0.83]), stats.summarize([0.9]), "chosen")]
  curve = (np.linspace(0.82, 0.5, 20), np.linspace(0.55, 1.0, 20))
  assert_png(figures.plot_tradeoff(points, str(tmp_path / "tradeoff.png"), curve, title="t"))


def test_tradeoff_bars_are_clipped_to_rates_and_the_axes_frame_the_data(tmp_path, monkeypatch):
  # Two seeds: t(0.975, 1) = 12.7 stretches the intervals far past [0, 1].
  camri_accuracy = stats.summarize([0.78, 0.86])
  half = stats.t_quantile(0.975, 1) * camri_accuracy.std / math.sqrt(2)
  assert figures._bar(camri_accuracy) == (pytest.approx(0.82 - half), 1.0)  # pylint: disable=protected-access
  assert figures._bar(stats.summarize([0.7])) == (0.7, 0.7)  # pylint: disable=protected-access
  points = [("cross_entropy", "cross_entropy (b = 0)", stats.summarize([0.80, 0.84]),
             stats.summarize([0.5, 0.7]), "baseline"),
            ("camri", "camri", camri_accuracy, stats.summarize([0.8, 0.95]), "chosen")]
  frames = []

  def save(fig, path):
    frames.append((fig.axes[0].get_xlim(), fig.axes[0].get_ylim()))
    figures.plt.close(fig)
    return path
  monkeypatch.setattr(figures, "_save", save)
  figures.plot_tradeoff(points, str(tmp_path / "t.png"))
  ((left, right), (bottom, top)), = frames
  low = 0.82 - half  # The lowest clipped bar; the highest is 1.
  assert (left, right) == (pytest.approx(low - 0.15 * (1 - low)), 1.01)
  assert (bottom, top) == (-0.01, 1.01)  # Recall bars reach 0 and 1.


def test_file_names_hold_no_colon_or_space():
  assert series.file_name("tradeoff", "folder:signs", "stop sign") == "tradeoff_folder-signs_stop-sign.png"
  assert series.file_name("curves", "cifar10", "worst1") == "curves_cifar10_worst1.png"


def test_bias_sweep_is_the_mean_over_runs_on_one_grid():
  # Class 0: run a's example of class 0 needs b >= 0.5, run b's b >= 0.25 (eighths: exact).
  a = {"scores": np.array([[0.25, 0.75], [0.0, 1.0]], np.float32), "labels": np.array([0, 1])}
  b = {"scores": np.array([[0.5, 0.75], [0.875, 0.0]], np.float32), "labels": np.array([0, 0])}
  biases, accuracy, recall = series.bias_sweep([a, b], 0, num=3)
  np.testing.assert_allclose(biases, [0.0, 0.25, 0.375, 0.5])
  np.testing.assert_allclose(recall, [0.25, 0.5, 0.5, 1.0])  # run b: 1/2 then 1; run a: 0 then 1
  np.testing.assert_allclose(accuracy, [0.5, 0.75, 0.75, 1.0])


CLASSES = ["a", "b", "c"]
NULL_LOSS = {"margin": None, "scale": None, "important_weight": None, "fn_weight": None, "fp_weight": None}


def write_run(root, name, method, seed, accuracy, recall, important=(0,), **loss):
  """A protocol-shaped run: 3 epochs, validation and test columns; `recall` of class 0."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  run_log.write_config(workdir, {
      "dataset": "toy", "num_epochs": 3, "seed": seed, "tag": "worst1" if important else "",
      "num_classes": 3, "class_names": CLASSES, "validation_fraction": 0.1,
      "loss": {"name": method, "important_classes": list(important), **NULL_LOSS, **loss}})
  columns = ["epoch", "train_loss"] + [f"{split}_{name}" for split in ("val", "test") for name in
                                        ("loss", "accuracy", "recall", "recall_0", "recall_1", "recall_2")]
  with open(os.path.join(workdir, "metrics.csv"), "w") as f:
    f.write(",".join(columns) + "\n")
    for epoch in (1, 2, 3):
      split = [1.0 / epoch, accuracy, recall, recall, 0.9, 0.9]
      f.write(",".join(map(str, [epoch, 1.0 / epoch, *split, *split])) + "\n")
  return workdir


def write_predictions(workdir, seed):
  rng = np.random.default_rng(seed)
  for split in ("val", "test"):
    labels = rng.integers(0, 3, 60)
    scores = rng.normal(size=(60, 3)).astype(np.float32) + 1.5 * np.eye(3, dtype=np.float32)[labels]
    run_log.write_predictions(workdir, split, {"ids": np.arange(60).astype(str), "labels": labels,
                                               "scores": scores, "step": np.int64(3)})


def test_grid_draws_every_method_of_a_protocol_grid(tmp_path, monkeypatch):
  root = str(tmp_path / "runs")
  for seed in range(2):
    write_predictions(write_run(root, f"ce{seed}", "cross_entropy", seed, 0.80, 0.5, important=()), seed)
    for k in (4, 8):  # margin 8pi/64 loses accuracy
      write_run(root, f"camri{k}_{seed}", "camri", seed, 0.81 if k == 4 else 0.70, 0.6 + 0.01 * k,
                margin=[k * math.pi / 64], scale=16.0)
    write_run(root, f"arcface{seed}", "arcface", seed, 0.75, 0.55, margin=[0.5], scale=64.0)  # not kept
    write_run(root, f"wce{seed}", "wce", seed, 0.80, 0.7, important_weight=5.0)
    write_run(root, f"rwwce{seed}", "rwwce", seed, 0.79, 0.8, fn_weight=5.0, fp_weight=1.0)
  drawn = {}

  def recording(name):
    original = getattr(figures, name)

    def plot(groups_or_points, path, *args, **kwargs):
      drawn[name] = groups_or_points
      return original(groups_or_points, path, *args, **kwargs)
    monkeypatch.setattr(figures, name, plot)

  for name in ("plot_class_recall", "plot_training_curves", "plot_margin_sweep", "plot_tradeoff"):
    recording(name)
  out = tmp_path / "plots"
  assert plots.main(["grid", root, "--out", str(out)]) == 0
  methods = ("cross_entropy", "wce", "rwwce", "arcface", "camri")
  for name in ("plot_class_recall", "plot_training_curves"):
    labels = list(drawn[name])
    assert [label.split(" ")[0] for label in labels] == list(methods)
    assert "arcface (margin=0.5, scale=64), not kept" in labels
  assert {m for m, *_ in drawn["plot_tradeoff"]} == set(methods) | {"cross_entropy+bias"}
  assert sum(kind == "chosen" for *_, kind in drawn["plot_tradeoff"]) == 4
  assert [label.split(" ")[0] for label in drawn["plot_margin_sweep"]] == ["arcface", "camri"]
  for name in ("curves", "class_recall", "margin", "tradeoff"):
    assert_png(out / f"{name}_toy_worst1.png")
  assert plots.main(["tradeoff", root, "--out", str(tmp_path / "t")]) == 0
  assert os.listdir(tmp_path / "t") == ["tradeoff_toy_worst1.png"]


def test_tradeoff_without_saved_predictions_has_no_curve_and_says_so(tmp_path):
  root = str(tmp_path / "runs")
  for seed in range(2):
    write_run(root, f"ce{seed}", "cross_entropy", seed, 0.80, 0.5, important=())
    write_run(root, f"camri{seed}", "camri", seed, 0.81, 0.6, margin=[0.2], scale=16.0)
  warnings = []
  results, rows = plots._load(root, "last", warnings.append)  # pylint: disable=protected-access
  (path,) = plots.plot_tradeoffs(results, rows, str(tmp_path / "out"), warn=warnings.append)
  assert_png(path)
  assert warnings[-1] == "no cross_entropy run of toy saved test predictions: the trade-off plot of worst1 has no bias curve"


def write_epochs(root, name, method, seed, epochs, with_val=True, **loss):
  """A 3-class run of len(epochs) epochs: epochs[e] = (val accuracy, test accuracy, angle mean).

  Every class's recall is 0.5 + the test accuracy / 10; angle variances are the means squared.
  """
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  run_log.write_config(workdir, {
      "dataset": "toy", "num_epochs": len(epochs), "seed": seed, "tag": "" if method == "cross_entropy" else "worst1",
      "num_classes": 3, "class_names": CLASSES, "validation_fraction": 0.1 if with_val else 0.0,
      "loss": {"name": method, "important_classes": [0], **NULL_LOSS, **loss}})
  splits = ("val", "test") if with_val else ("test",)
  columns = ["epoch", "train_loss"] + [f"{s}_{c}" for s in splits for c in ("accuracy", "recall_0", "recall_1", "recall_2")]
  columns += [f"test_angle_{c}_{k}" for c in ("mean", "var") for k in range(3)]
  with open(os.path.join(workdir, "metrics.csv"), "w") as f:
    f.write(",".join(columns) + "\n")
    for epoch, (val, test, angle) in enumerate(epochs, 1):
      values = [epoch, 1.0 / epoch] + ([val] + [0.5 + val / 10] * 3 if with_val else [])
      values += [test] + [0.5 + test / 10] * 3 + [angle] * 3 + [angle ** 2] * 3
      f.write(",".join(map(str, values)) + "\n")
  return workdir


def test_angle_statistics_come_from_the_epoch_of_the_runs_table_row(tmp_path, monkeypatch):
  # --epoch best: ce0 and camri0 have validation, whose accuracy peaks at epoch 2, while test
  # accuracy peaks at epoch 1; ce1 has no validation split, so the dataset selects on test.
  root = str(tmp_path / "runs")
  write_epochs(root, "ce0", "cross_entropy", 0, [(0.5, 0.9, 10.0), (0.9, 0.5, 20.0), (0.6, 0.6, 30.0)])
  write_epochs(root, "ce1", "cross_entropy", 1, [(0, 0.5, 40.0), (0, 0.9, 50.0), (0, 0.6, 60.0)], with_val=False)
  write_epochs(root, "camri0", "camri", 0, [(0.5, 0.9, 11.0), (0.9, 0.5, 21.0), (0.6, 0.6, 31.0)],
               margin=[0.1], scale=16.0)
  drawn = {}
  original = figures.plot_angle_stats

  def plot_angle_stats(groups, path, *args, **kwargs):
    drawn.update(groups)
    return original(groups, path, *args, **kwargs)
  monkeypatch.setattr(figures, "plot_angle_stats", plot_angle_stats)
  warnings = []
  plots.plot_grid(root, str(tmp_path / "out"), "best", warn=warnings.append)
  results, _ = plots._load(root, "best", warnings.append)  # pylint: disable=protected-access
  epoch = {os.path.basename(r.workdir): r.row["epoch"] for r in results}
  assert epoch == {"ce0": 2, "ce1": 2, "camri0": 2}  # Each run's own split: validation, test for ce1.
  means, variances = drawn["cross_entropy"]
  np.testing.assert_allclose(means, [[20.0] * 3, [50.0] * 3])  # The table's epochs: 2 and 2.
  np.testing.assert_allclose(variances, [[400.0] * 3, [2500.0] * 3])
  (camri_label,) = [label for label in drawn if label.startswith("camri")]
  np.testing.assert_allclose(drawn[camri_label][0], [[21.0] * 3])


def _curve_runs(root):
  """Two cross-entropy and two camri runs; test accuracy per epoch differs by 0.1 between seeds."""
  for seed in range(2):
    epochs = [(0.5, 0.6 + 0.1 * seed + 0.05 * e, 10.0) for e in range(3)]
    write_epochs(root, f"ce{seed}", "cross_entropy", seed, epochs)
    write_epochs(root, f"camri{seed}", "camri", seed, [(v, t + 0.02, a) for v, t, a in epochs],
                 margin=[0.1], scale=16.0)
  return root


def _drawn_curves(root, out, monkeypatch):
  """The curves figure of plot_grid: {panel title: {line label: (x, y)}}, and its bands."""
  figs, bands = [], []
  original = figures.plt.Axes.fill_between

  def fill_between(ax, x, low, high, **kwargs):
    bands.append((ax.get_title() or len(bands), np.asarray(low), np.asarray(high)))
    return original(ax, x, low, high, **kwargs)

  def save(fig, path):
    if os.path.basename(path).startswith("curves"):
      figs.append(fig)
    figures.plt.close(fig)
    return path
  monkeypatch.setattr(figures.plt.Axes, "fill_between", fill_between)
  monkeypatch.setattr(figures, "_save", save)
  plots.plot_grid(root, out, warn=lambda message: None)
  (fig,) = figs
  lines = {ax.get_title(): {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}
           for ax in fig.axes}
  return lines, bands


def test_training_curve_bands_are_one_sample_std(tmp_path, monkeypatch):
  _, bands = _drawn_curves(_curve_runs(str(tmp_path / "runs")), str(tmp_path / "out"), monkeypatch)
  # Bands 0 and 1: the loss panel's train loss of each group; 2: cross-entropy's test accuracy,
  # 0.6 and 0.7 at epoch 1, 0.65 and 0.75 at epoch 2, ...
  low, high = bands[2][1], bands[2][2]
  np.testing.assert_allclose((high - low) / 2, [0.1 / math.sqrt(2)] * 3)  # ddof=1, not 0.05.


def test_cross_entropy_has_a_recall_curve_from_its_per_class_columns(tmp_path, monkeypatch):
  lines, _ = _drawn_curves(_curve_runs(str(tmp_path / "runs")), str(tmp_path / "out"), monkeypatch)
  recall = lines["test recall of the important class"]
  assert [label.split(" ")[0] for label in recall] == ["cross_entropy", "camri"]
  epochs, ce = recall["cross_entropy"]
  # Class 0's recall is 0.5 + test accuracy / 10; accuracies 0.6 + 0.05 e and 0.7 + 0.05 e.
  assert list(epochs) == [1, 2, 3]
  np.testing.assert_allclose(ce, [0.5 + (0.65 + 0.05 * e) / 10 for e in range(3)])
