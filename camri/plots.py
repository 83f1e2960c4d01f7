r"""Plots of runs and of the losses, as PNG files (matplotlib, Agg).

    python -m camri.plots grid RUNS_DIR --out DIR [--epoch last|best|N|last:K] \
        [--select-on val|test] [--accuracy-tolerance DELTA] [--post-hoc-bias]
    python -m camri.plots tradeoff RUNS_DIR --out DIR [the options of grid]
    python -m camri.plots angles RUN_DIR [RUN_DIR ...] --out FILE.png
    python -m camri.plots features2d RUN_DIR [RUN_DIR ...] --out FILE.png
    python -m camri.plots contours --out FILE.png [--margin M] [--scale S]

`grid` reads metrics.csv of every run under RUNS_DIR and, for each dataset and
role (as `camri.report` groups and selects them, with its options), writes for
cross-entropy and every method's reported setting (marked "not kept" when no
setting of the method kept accuracy):
  curves_<dataset>_<role>.png        loss, test accuracy and test recall of the
                                     important class per epoch (mean +- std over seeds),
  class_recall_<dataset>_<role>.png  test recall of every class (mean +- std),
  angle_stats_<dataset>_<role>.png   mean and variance of the angle between each
                                     class's test features and its class weight,
  margin_<dataset>_<role>.png        recall and accuracy against the margin, for
                                     every setting of the losses with a margin
                                     (CAMRI, ArcFace, ...; when any),
  tradeoff_<dataset>_<role>.png      what `tradeoff` writes.
<dataset> is the report's name, an image folder's `folder:signs` written `folder-signs`.
`tradeoff` writes only tradeoff_<dataset>_<role>.png: test recall of the
important class against test accuracy. The line is cross-entropy as a bias
on the important class's score sweeps (`camri.posthoc`, from the runs' saved
test predictions; mean over seeds at each b); the points are every setting of
every method, with 95% t-interval bars over seeds (clipped to [0, 1]), the
reported settings and the report's +bias rows highlighted. A loss shows
something where it lies above the line: a recall the threshold shift does not
buy at that accuracy.
`angles` restores each run's newest checkpoint and draws, per class, the
histogram of those angles over the test set. `features2d` draws the
normalised test features of runs with feature_dim 2 on the unit circle with
the class weight directions. `contours` draws the per-example losses of
cross-entropy, NormFace, ArcFace and CAMRI over a 2-D feature space with three
fixed class weights, for a sample of the important class and of another class
(cf. Figure 2 of Nishiyama et al., IJCNN 2022).
"""

import argparse
import collections
import math
import os
import re
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from camri import posthoc  # pylint: disable=g-import-not-at-top,wrong-import-position
from camri import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from camri import run_log  # pylint: disable=g-import-not-at-top,wrong-import-position
from camri import stats  # pylint: disable=g-import-not-at-top,wrong-import-position

DPI = 100
IMPORTANT_COLOR = "#fde9c9"  # Background of the important classes' columns.


def _colors(n):
  return [plt.get_cmap("tab10")(i % 10) for i in range(n)]


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return path


def _class_ticks(ax, num_classes, class_names, important):
  ax.set_xticks(range(num_classes))
  names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
  ax.set_xticklabels(names, rotation=90 if max(map(len, names)) > 3 else 0)
  for k in important:
    ax.axvspan(k - 0.5, k + 0.5, color=IMPORTANT_COLOR, zorder=0)


# Plots from numbers (metrics.csv rows, per-class arrays).

def plot_training_curves(groups, path, title=""):
  """Per-epoch curves, mean over each group's runs with a +-std band.

  Args:
    groups: {label: [metrics.csv rows of one run (dicts with epoch, train_loss,
      test_loss, test_accuracy, test_recall)], one list per run}.
    path: the PNG to write.
    title: the figure's title.
  """
  panels = [("loss", ("train_loss", "test_loss")), ("test accuracy", ("test_accuracy",)),
            ("test recall of the important class", ("test_recall",))]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for (name, columns), ax in zip(panels, axes):
    for (label, runs), color in zip(groups.items(), _colors(len(groups))):
      for column in columns:
        epochs = sorted({row["epoch"] for rows in runs for row in rows})
        values = np.array([[next((r.get(column, np.nan) for r in rows if r["epoch"] == e), np.nan)
                            for e in epochs] for rows in runs], float)
        if not np.isfinite(values).any():
          continue
        with warnings.catch_warnings():  # An epoch no run reached is NaN, not drawn.
          warnings.simplefilter("ignore", RuntimeWarning)
          mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        style = "--" if column.startswith("test") and len(columns) > 1 else "-"
        text = f"{label} ({column.split('_')[0]})" if len(columns) > 1 else label
        ax.plot(epochs, mean, style, color=color, label=text)
        if len(runs) > 1:
          high = mean + std if name == "loss" else np.minimum(mean + std, 1.0)  # A rate is <= 1.
          ax.fill_between(epochs, np.maximum(mean - std, 0.0), high, color=color, alpha=0.2,
                          linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=8)
  fig.suptitle(title)
  return _save(fig, path)


def plot_class_recall(groups, path, class_names=(), important=(), title=""):
  """Grouped bars: each class's test recall, mean +- std over a group's runs.

  Args:
    groups: {label: (runs, K) array-like of per-class recall}.
    path: the PNG to write.
    class_names: K names for the ticks.
    important: important class indices (shaded).
    title: the figure's title.
  """
  num_classes = len(next(iter(groups.values()))[0])
  width = 0.8 / len(groups)
  fig, ax = plt.subplots(figsize=(max(6, 0.7 * num_classes * max(1, len(groups) / 2)), 4))
  for i, ((label, recalls), color) in enumerate(zip(groups.items(), _colors(len(groups)))):
    recalls = np.asarray(recalls, float)
    std = recalls.std(0, ddof=1) if len(recalls) > 1 else None
    ax.bar(np.arange(num_classes) + (i - (len(groups) - 1) / 2) * width, recalls.mean(0), width,
           yerr=std, capsize=2, color=color, label=f"{label} (n={len(recalls)})")
  _class_ticks(ax, num_classes, class_names, important)
  low = min(np.min(np.asarray(r, float)) for r in groups.values())
  ax.set_ylim(max(0.0, low - 0.05), 1.0)
  ax.set_xlabel("class (shaded: important)")
  ax.set_ylabel("test recall")
  ax.set_title(title)
  ax.legend(fontsize=8, loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  return _save(fig, path)


def plot_angle_stats(groups, path, class_names=(), important=(), title=""):
  """Per class: the mean angle (+- its std) and the angle variance, averaged over runs.

  Args:
    groups: {label: (means, variances)}, each (runs, K): metrics.csv's
      test_angle_mean_<k> (degrees) and test_angle_var_<k> (degrees^2).
    path: the PNG to write.
    class_names, important, title: as in `plot_class_recall`.
  """
  num_classes = np.asarray(next(iter(groups.values()))[0]).shape[1]
  width = 0.8 / len(groups)
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.7 * num_classes), 6), sharex=True)
  for i, ((label, (means, variances)), color) in enumerate(zip(groups.items(), _colors(len(groups)))):
    means, variances = np.asarray(means, float), np.asarray(variances, float)
    x = np.arange(num_classes) + (i - (len(groups) - 1) / 2) * width
    top.errorbar(x, means.mean(0), yerr=np.sqrt(variances.mean(0)), fmt="o", color=color, capsize=3,
                 label=label)
    bottom.bar(x, variances.mean(0), width, color=color, label=label)
  top.set_ylabel("angle to own class weight\n(degrees, mean ± std)")
  bottom.set_ylabel("angle variance (deg²)")
  for ax in (top, bottom):
    _class_ticks(ax, num_classes, class_names, important)
    ax.grid(axis="y", alpha=0.3)
  top.legend(fontsize=8)
  bottom.set_xlabel("class (shaded: important)")
  top.set_title(title)
  return _save(fig, path)


def plot_margin_sweep(series, path, baseline=None, title=""):
  """Recall of the important class and accuracy against the margin.

  Args:
    series: {label: [(margin in radians, recalls over seeds, accuracies over seeds)]}.
    path: the PNG to write.
    baseline: optional (label, recalls, accuracies), drawn as a horizontal band.
    title: the figure's title.
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = _colors(len(series) + 1)
  for which, ax in enumerate(axes):
    if baseline is not None:
      values = np.asarray(baseline[1 + which], float)
      ax.axhline(values.mean(), color="k", linestyle="--", label=baseline[0])
      if len(values) > 1:
        ax.axhspan(values.mean() - values.std(ddof=1), values.mean() + values.std(ddof=1),
                   color="k", alpha=0.1)
    for (label, points), color in zip(series.items(), colors):
      points = sorted(points, key=lambda p: p[0])
      x = [p[0] * 64 / math.pi for p in points]
      values = [np.asarray(p[1 + which], float) for p in points]
      std = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
      ax.errorbar(x, [v.mean() for v in values], yerr=std, marker="o", capsize=3, color=color,
                  label=label)
    ax.set_xlabel("margin m (× π/64 rad)")
    ax.set_ylabel(("test recall of the important class", "test accuracy")[which])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  return _save(fig, path)


_TRADEOFF_STYLES = {
    "setting": dict(marker="o", markersize=5, alpha=0.45),
    "chosen": dict(marker="o", markersize=10, markeredgecolor="k", markeredgewidth=1.5),
    "bias": dict(marker="*", markersize=16, markeredgecolor="k"),
    "baseline": dict(marker="s", markersize=8, markeredgecolor="k"),
}


def _bar(s):
  """(low, high): the 95% t-interval of a rate over seeds, clipped to [0, 1]; the mean for one seed."""
  low, high = stats.interval(s, bounds=stats.RATE)
  return (s.mean, s.mean) if math.isnan(low) else (low, high)


def _error(s):
  low, high = _bar(s)
  return [[s.mean - low], [high - s.mean]]


def _frame(values, pad_fraction):
  """Axis limits around `values` (rates) with a pad, never far past [0, 1]."""
  pad = max(0.005, pad_fraction * (max(values) - min(values)))
  return max(min(values) - pad, -0.01), min(max(values) + pad, 1.01)


def plot_tradeoff(points, path, curve=None, title=""):
  """Test recall of the important class against test accuracy: what a bias buys, and the losses.

  Args:
    points: [(method, label, accuracy Stats, recall Stats, kind)] (`camri.stats`),
      drawn at the means with 95% t-interval bars over seeds (none for one
      seed). kind: "setting" (one setting of a method: small), "chosen" (the
      reported setting: large, black edge), "bias" (a post-hoc bias row: a
      star) or "baseline" (cross-entropy: a square). Colour: by method, a bias
      row taking its method's.
    path: the PNG to write.
    curve: optional (accuracies, recalls), cross-entropy's means over seeds as
      a bias on the important class sweeps (`bias_sweep`).
    title: the figure's title.
  """
  bases = list(dict.fromkeys(method.removesuffix(report.BIAS) for method, *_ in points))
  colors = dict(zip(bases, _colors(len(bases))))
  fig, ax = plt.subplots(figsize=(8, 6))
  if curve is not None:
    ax.plot(curve[0], curve[1], "-", color="0.35", zorder=1,
            label="cross_entropy + bias b, b swept (mean over seeds)")
  labelled = set()
  for method, label, accuracy, recall, kind in points:
    if kind == "setting":
      label = None if method in labelled else f"{method}: settings"
      labelled.add(method)
    ax.errorbar(accuracy.mean, recall.mean, xerr=_error(accuracy), yerr=_error(recall), linestyle="none",
                color=colors[method.removesuffix(report.BIAS)], capsize=2, label=label,
                zorder=2 if kind == "setting" else 3, **_TRADEOFF_STYLES[kind])
  # Frame the points and their bars; the curve runs on to low accuracy, which is not of interest.
  left, right = _frame([x for p in points for x in _bar(p[2])], 0.15)
  ys = [y for p in points for y in _bar(p[3])]
  if curve is not None:
    inside = (np.asarray(curve[0]) >= left) & (np.asarray(curve[0]) <= right)
    ys += list(np.asarray(curve[1])[inside])
  ax.set_xlim(left, right)
  ax.set_ylim(*_frame(ys, 0.1))
  ax.set_xlabel("test accuracy")
  ax.set_ylabel("test recall of the important class")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  ax.set_title(title + "\nbars: 95% t-interval over seeds, clipped to [0, 1]; large: reported "
               "setting; star: +bias row", fontsize=9)
  return _save(fig, path)


def plot_angle_histograms(groups, path, class_names=(), important=(), title=""):
  """Per class, histograms of the angle between test features and the class's weight.

  Args:
    groups: {label: (angles (N,) in degrees, labels (N,))}.
    path: the PNG to write.
    class_names, important, title: as in `plot_class_recall`.
  """
  num_classes = int(max(np.max(labels) for _, labels in groups.values())) + 1
  num_classes = max(num_classes, len(class_names))
  cols = min(5, num_classes)
  rows = math.ceil(num_classes / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False,
                           layout="constrained")
  top = max(np.max(angles) for angles, _ in groups.values())
  bins = np.linspace(0.0, max(top, 1.0), 31)
  for k, ax in enumerate(axes.flat):
    if k >= num_classes:
      ax.axis("off")
      continue
    for (label, (angles, labels)), color in zip(groups.items(), _colors(len(groups))):
      own = np.asarray(angles)[np.asarray(labels) == k]
      if own.size:
        ax.hist(own, bins=bins, histtype="step", color=color, linewidth=1.5,
                label=f"{label}: var {own.var():.1f}")
    name = class_names[k] if k < len(class_names) else str(k)
    ax.set_title(f"class {name}" + (" (important)" if k in important else ""), fontsize=9,
                 fontweight="bold" if k in important else "normal")
    if k in important:
      ax.set_facecolor(IMPORTANT_COLOR)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
  fig.supxlabel("angle between a test feature and its class weight (degrees)")
  fig.suptitle(title)
  return _save(fig, path)


def plot_features_2d(panels, path, class_names=(), important=(), title=""):
  """Normalised 2-D features on the unit circle, coloured by class, with the class weights.

  Each point is a test feature z/|z|, drawn at a radius jittered in [0.8, 1]
  so that points at one angle stay visible; each class weight direction is an
  arrow to radius 1.25 (the important classes' thicker, in black).

  Args:
    panels: {label: (features (N, 2), labels (N,), class weights (2, K))}.
    path: the PNG to write.
    class_names, important, title: as in `plot_class_recall`.
  """
  rng = np.random.default_rng(0)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.2), squeeze=False)
  for ax, (label, (features, labels, weights)) in zip(axes.flat, panels.items()):
    features, labels, weights = np.asarray(features), np.asarray(labels), np.asarray(weights)
    if features.shape[1] != 2 or weights.shape[0] != 2:
      raise ValueError(f"{label}: the 2-D feature plot needs feature_dim 2, got {features.shape[1]}")
    num_classes = weights.shape[1]
    colors = _colors(num_classes)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    radius = rng.uniform(0.8, 1.0, size=(len(unit), 1))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.7", linewidth=0.8))
    for k in range(num_classes):
      points = unit[labels == k] * radius[labels == k]
      ax.scatter(points[:, 0], points[:, 1], s=6, color=colors[k], alpha=0.6)
      w = weights[:, k] / np.linalg.norm(weights[:, k])
      heavy = k in important
      ax.annotate("", xy=1.25 * w, xytext=(0, 0),
                  arrowprops=dict(arrowstyle="-|>", color="k" if heavy else colors[k],
                                  linewidth=2.5 if heavy else 1.2))
      name = class_names[k] if k < len(class_names) else str(k)
      ax.text(*(1.4 * w), name, color=colors[k], ha="center", va="center",
              fontweight="bold" if heavy else "normal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(label, fontsize=10)
  fig.suptitle(title)
  return _save(fig, path)


# Loss contours (Figure 2 of the paper).

CONTOUR_LOSSES = ("cross_entropy", "normface", "arcface", "camri")


def contour_weights():
  """Three unit class weights in 2-D, 120 degrees apart (columns of a (2, 3) array)."""
  angles = np.radians([90.0, 210.0, 330.0])
  return np.stack([np.cos(angles), np.sin(angles)])


def loss_surface(name, points, weights, label, margin, scale, important=0):
  """Per-example loss of each feature point for the true class `label`.

  Args:
    name: one of CONTOUR_LOSSES. cross_entropy uses the logits z @ W (no bias);
      the others the scaled cosines of `camri.losses` (ArcFace: `margin` for
      every class; CAMRI: `margin` for the class `important` only).
    points: (N, 2) features z.
    weights: (2, K) class weights.
    label: the true class of every point.
    margin: radians.
    scale: s.
    important: CAMRI's important class.

  Returns:
    (N,) losses.
  """
  from camri import losses  # pylint: disable=g-import-not-at-top  # JAX only here.
  points = np.asarray(points, np.float32)
  weights = np.asarray(weights, np.float32)
  labels = np.full((len(points),), label, np.int32)
  if name == "cross_entropy":
    values = losses.cross_entropy(points @ weights, labels)
  elif name == "normface":
    values = losses.normface_loss(points, weights, labels, scale)
  elif name == "arcface":
    values = losses.arcface_loss(points, weights, labels, margin, scale)
  elif name == "camri":
    margins = losses.margin_vector(weights.shape[1], (important,), margin)
    values = losses.camri_loss(points, weights, labels, margins, scale)
  else:
    raise ValueError(f"loss must be one of {CONTOUR_LOSSES}, got {name!r}")
  return np.asarray(values)


def plot_loss_contours(path, margin=8 * math.pi / 64, scale=4.0, important=0, other=1,
                       extent=3.0, resolution=161):
  """Contours of each loss over a 2-D feature space with `contour_weights()`.

  Rows: a sample of the important class (CAMRI adds its margin, as ArcFace
  does) and one of another class (CAMRI adds none: it is NormFace there;
  ArcFace still does). One colour scale for every panel; the red line is where
  the true class's softmax probability is 0.9 (loss -log 0.9), the margin
  shrinking the region inside it; the dashed lines are the decision boundaries
  (the same for every panel: the weights have one norm and no bias).
  """
  weights = contour_weights()
  axis = np.linspace(-extent, extent, resolution)
  xx, yy = np.meshgrid(axis, axis)
  points = np.stack([xx.ravel(), yy.ravel()], axis=1)
  rows = (important, other)
  values = {(label, name): loss_surface(name, points, weights, label, margin, scale,
                                        important).reshape(xx.shape)
            for label in rows for name in CONTOUR_LOSSES}
  levels = np.arange(0.0, math.ceil(max(float(v.max()) for v in values.values())) + 0.25, 0.4)
  titles = {"cross_entropy": "cross-entropy (logits z·W, no bias)",
            "normface": f"NormFace (s={scale:g})",
            "arcface": f"ArcFace (m={margin:.3g} for all, s={scale:g})",
            "camri": f"CAMRI (m={margin:.3g} for class {important}, s={scale:g})"}
  fig, axes = plt.subplots(len(rows), len(CONTOUR_LOSSES), figsize=(4 * len(CONTOUR_LOSSES) + 1.5, 8.4),
                           layout="constrained")
  num_classes = weights.shape[1]
  for row, label in enumerate(rows):
    for ax, name in zip(axes[row], CONTOUR_LOSSES):
      filled = ax.contourf(xx, yy, values[(label, name)], levels=levels, cmap="viridis")
      ax.contour(xx, yy, values[(label, name)], levels=[-math.log(0.9)], colors="r", linewidths=1.5)
      for k in range(num_classes):
        w = weights[:, k]
        color = "r" if k == label else "w"
        ax.annotate("", xy=0.75 * extent * w, xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.5))
        ax.text(*(0.87 * extent * w), f"W{k}", color=color, ha="center", va="center", fontsize=10)
        bisector = weights[:, k] + weights[:, (k + 1) % num_classes]
        ax.plot([0, 2 * extent * bisector[0]], [0, 2 * extent * bisector[1]], "w--", linewidth=0.8)
      ax.set_xlim(-extent, extent)
      ax.set_ylim(-extent, extent)
      ax.set_aspect("equal")
      ax.set_title(titles[name], fontsize=9)
    axes[row][0].set_ylabel(f"true class {label}" + (" (important)" if label == important else ""),
                            fontsize=11)
  fig.colorbar(filled, ax=axes, shrink=0.8, label="per-example loss")
  fig.suptitle("Loss over a 2-D feature z with class weights W0, W1, W2 (red arrow: the true "
               "class; red line: p_true = 0.9; dashed: decision boundaries)")
  return _save(fig, path)


# From run directories.

def _label(method, setting, varying):
  shown = ", ".join(f"{k}={report.format_value(v)}" for k, v in setting if k in varying)
  return f"{method} ({shown})" if shown else method


def _varying_fields(settings):
  return {k for s in settings for k, v in s if any(dict(t).get(k) != v for t in settings)}


def _row_label(row):
  label = row.method if row.setting == "-" else f"{row.method} ({row.setting})"
  return label if row.kept else f"{label}, not kept"


def _selected_groups(results, rows):
  """{(dataset, role): {label: [RunResult]}}: cross-entropy and each method's reported setting."""
  selected = {}
  for row in rows:
    if row.role == "-" or row.method.endswith(report.BIAS):
      continue
    if row.method == report.BASELINE:
      runs = [r for r in results if r.dataset == row.dataset and r.method == report.BASELINE]
    else:
      runs = [r for r in results if (r.dataset, r.role, r.method, r.setting)
              == (row.dataset, row.role, row.method, row.chosen)]
    selected.setdefault((row.dataset, row.role), {})[_row_label(row)] = runs
  return selected


def _row_at(workdir, policy, split="test"):
  config = run_log.read_config(workdir)
  return report.epoch_row(run_log.read_metrics(workdir), run_log.get_field(config, "num_epochs"),
                          policy, split)


def _load(root, policy, warn, **selection):
  """`report.load_results` and `report.build_table` of the runs under root."""
  results = report.load_results(root, policy, warn=warn, select_on=selection.get("select_on", "val"))
  return results, report.build_table(results, warn=warn, **selection)


def file_name(kind, dataset, role):
  """`<kind>_<dataset>_<role>.png`, characters a file name should not hold as `-`
  (`tradeoff_folder-signs_stop.png` for dataset folder:signs)."""
  safe = lambda text: re.sub(r"[^A-Za-z0-9._+=-]", "-", text)
  return f"{kind}_{safe(dataset)}_{safe(role)}.png"


def _where(row):
  where = f"{row.dataset}, {row.role}: class {'+'.join(map(str, row.classes))}"
  if row.class_names and list(row.class_names) != [str(k) for k in row.classes]:
    where += f" ({'+'.join(row.class_names)})"
  return where


def bias_sweep(predictions, important, num=100):
  """Cross-entropy's trade-off as a bias b on class `important` sweeps: means over runs.

  Every run is evaluated on one grid of b (`camri.posthoc`): 0 and `num`
  quantiles of the runs' pooled breakpoints of the important class's examples,
  the b where its recall moves.

  Args:
    predictions: one dict per run with "scores" (N, K) and "labels" (N,)
      (`run_log.read_predictions`).
    important: the class the bias goes to.
    num: quantiles of the breakpoints.

  Returns:
    (biases, mean accuracies, mean recalls), each (B,).
  """
  gaps = np.concatenate([posthoc.breakpoints(p["scores"][p["labels"] == important], important)
                         for p in predictions])
  biases = np.unique(np.concatenate([[0.0], np.quantile(gaps, np.linspace(0, 1, num))
                                     if gaps.size else []]))
  values = np.array([posthoc.accuracy_and_recall_over(p["scores"], p["labels"], important, biases)
                     for p in predictions])  # (runs, B, 2)
  return biases, values[..., 0].mean(0), values[..., 1].mean(0)


def _tradeoff_points(results, rows, dataset, role):
  """`plot_tradeoff`'s points: cross-entropy, the bias rows and every setting of every method."""
  points = []
  chosen = {}
  for row in rows:
    if (row.dataset, row.role) != (dataset, role):
      continue
    if row.method == report.BASELINE:
      points.append((row.method, "cross_entropy (b = 0)", row.accuracy, row.recall, "baseline"))
    elif row.method.endswith(report.BIAS):
      points.append((row.method, _row_label(row), row.accuracy, row.recall, "bias"))
    else:
      chosen[row.method, row.chosen] = _row_label(row)
  groups = collections.defaultdict(list)
  for r in results:
    if (r.dataset, r.role) == (dataset, role):
      groups[r.method, r.setting].append(r)
  for (method, setting), runs in sorted(groups.items(), key=lambda kv: repr(kv[0])):
    accuracy, recall = report.stats(r.accuracy for r in runs), report.stats(r.recall for r in runs)
    label = chosen.get((method, setting))
    points.append((method, label or method, accuracy, recall, "setting" if label is None else "chosen"))
  return points


def plot_tradeoffs(results, rows, out_dir, policy="last", warn=None):
  """One `plot_tradeoff` per dataset x role of the table; returns the paths."""
  warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
  written = []
  firsts = {}  # The first row of each dataset x role: its classes and selection split.
  for row in rows:
    if row.role != "-":
      firsts.setdefault((row.dataset, row.role), row)
  for row in firsts.values():
    ce = [r for r in results if r.dataset == row.dataset and r.method == report.BASELINE]
    predictions = [p for p in (run_log.read_predictions(r.workdir, "test") for r in ce) if p is not None]
    curve = None
    if predictions:
      _, accuracy, recall = bias_sweep(predictions, row.classes[0])
      curve = (accuracy, recall)
    else:
      warn(f"no cross_entropy run of {row.dataset} saved test predictions: the trade-off plot of "
           f"{row.role} has no bias curve")
    title = (f"{_where(row)}; {report.describe_epoch_policy(policy, row.selected_on)}, "
             f"settings selected on {row.selected_on}")
    written.append(plot_tradeoff(_tradeoff_points(results, rows, row.dataset, row.role),
                                 os.path.join(out_dir, file_name("tradeoff", row.dataset, row.role)),
                                 curve, title=title))
  return written


def plot_grid(root, out_dir, policy="last", warn=None, **selection):
  """Writes the `grid` plots of the module docstring for the runs under root; returns the paths.

  `selection`: `report.build_table`'s select_on, tolerance and post_hoc_bias.
  """
  warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
  results, rows = _load(root, policy, warn, **selection)
  written = []
  for (dataset, role), groups in _selected_groups(results, rows).items():
    row = next(r for r in rows if (r.dataset, r.role) == (dataset, role))
    classes, names = row.classes, next(r.class_names for r in results if r.dataset == dataset)
    where = _where(row)
    path = lambda kind, d=dataset, r=role: os.path.join(out_dir, file_name(kind, d, r))
    epoch = report.describe_epoch_policy(policy, row.selected_on)
    curves = {label: [run_log.read_metrics(r.workdir) for r in runs] for label, runs in groups.items()}
    written.append(plot_training_curves(curves, path("curves"),
                                        title=f"{where}; mean ± std over seeds"))
    written.append(plot_class_recall(
        {label: [r.class_recall for r in runs] for label, runs in groups.items()},
        path("class_recall"), names, classes, title=f"{where}; {epoch}"))
    angles = {}
    for label, runs in groups.items():
      at = [_row_at(r.workdir, policy, row.selected_on) for r in runs]
      k = len(runs[0].class_recall)
      if all(f"test_angle_mean_{j}" in a for a in at for j in range(k)):
        angles[label] = ([[a[f"test_angle_mean_{j}"] for j in range(k)] for a in at],
                         [[a[f"test_angle_var_{j}"] for j in range(k)] for a in at])
    if angles:
      angles = {label: tuple(np.array(list(v)) for v in pair) for label, pair in angles.items()}
      written.append(plot_angle_stats(angles, path("angle_stats"),
                                      names, classes, title=where))
    series = collections.defaultdict(list)
    by_setting = collections.defaultdict(list)
    for r in results:  # WCE and RWWCE have a margin field too, None.
      if (r.dataset, r.role) == (dataset, role) and dict(r.setting).get("margin") is not None:
        by_setting[(r.method, r.setting)].append(r)
    varying = _varying_fields({s for _, s in by_setting}) - {"margin"}
    for (method, setting), runs in sorted(by_setting.items(), key=lambda kv: repr(kv[0])):
      margin = dict(setting)["margin"]
      margin = margin[0] if isinstance(margin, tuple) else margin
      series[_label(method, setting, varying)].append(
          (margin, [r.recall for r in runs], [r.accuracy for r in runs]))
    if series:
      ce = [r for r in results if r.dataset == dataset and r.method == report.BASELINE]
      baseline = None
      if ce:
        baseline = (report.BASELINE,
                    [math.fsum(r.class_recall[k] for k in classes) / len(classes) for r in ce],
                    [r.accuracy for r in ce])
      written.append(plot_margin_sweep(dict(series), path("margin"),
                                       baseline, title=f"{where}; {epoch}"))
  return written + plot_tradeoffs(results, rows, out_dir, policy, warn)


def _run_labels(workdirs):
  """Short labels for runs: the method and the loss fields that differ between them."""
  configs = [run_log.read_config(w) or {} for w in workdirs]
  settings = [tuple(sorted((k, report.hashable(v)) for k, v in (c.get("loss") or {}).items()
                           if k not in report.NOT_SETTING)) for c in configs]
  varying = _varying_fields(set(settings))
  seeds = {c.get("seed") for c in configs}
  labels = []
  for config, setting in zip(configs, settings):
    label = _label(run_log.get_field(config, "loss.name", "?"), setting, varying)
    labels.append(label + (f" seed {config.get('seed')}" if len(seeds) > 1 else ""))
  return labels


def _important(config):
  classes = run_log.get_field(config, "loss.important_classes") or ()
  return tuple(int(k) for k in (classes if isinstance(classes, (list, tuple)) else (classes,)))


def plot_run_angles(workdirs, path, data_dir=None):
  """Angle histograms of runs, from their newest checkpoints (see `camri.features`)."""
  from camri import features as features_lib  # pylint: disable=g-import-not-at-top  # JAX, TF.
  loaded = [features_lib.load_test_features(w, data_dir) for w in workdirs]
  groups = {label: (f.angles, f.labels) for label, f in zip(_run_labels(workdirs), loaded)}
  important = sorted({k for f in loaded for k in _important(f.config)})
  return plot_angle_histograms(groups, path, loaded[0].class_names, important,
                               title=f"{loaded[0].config.get('dataset')}: test set, checkpoint of the "
                                     "last saved epoch")


def plot_run_features_2d(workdirs, path, data_dir=None):
  """The 2-D feature plot of runs with feature_dim 2, from their newest checkpoints."""
  from camri import features as features_lib  # pylint: disable=g-import-not-at-top
  loaded = [features_lib.load_test_features(w, data_dir) for w in workdirs]
  panels = {}
  for label, workdir, f in zip(_run_labels(workdirs), workdirs, loaded):
    last = run_log.read_metrics(workdir)[-1]
    label += f"\naccuracy {last['test_accuracy']:.3f}, important recall {last['test_recall']:.3f}"
    panels[label] = (f.features, f.labels, f.class_weights)
  important = sorted({k for f in loaded for k in _important(f.config)})
  return plot_features_2d(panels, path, loaded[0].class_names, important,
                          title="normalised test features z/|z| (radius jittered) and class weight "
                                "directions, last saved epoch")


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m camri.plots", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for name, text in (("grid", "curves, class recall, angle statistics, margin sweep, trade-off"),
                     ("tradeoff", "recall against accuracy: the losses and a post-hoc bias")):
    sub = commands.add_parser(name, help=text)
    sub.add_argument("runs_dir")
    sub.add_argument("--out", required=True, help="directory for the PNG files")
    sub.add_argument("--epoch", default="last", help="last (default), best, an epoch number or last:K")
    sub.add_argument("--select-on", choices=report.SPLITS, default="val",
                     help="as camri.report: the split settings are chosen on (default val)")
    sub.add_argument("--accuracy-tolerance", type=float, default=0.0, metavar="DELTA",
                     help="as camri.report (default 0)")
    sub.add_argument("--post-hoc-bias", action="store_true",
                     help="as camri.report: a bias point for every method")
  for name, text in (("angles", "angle histograms from checkpoints"),
                     ("features2d", "2-D features from checkpoints (feature_dim 2)")):
    sub = commands.add_parser(name, help=text)
    sub.add_argument("runs", nargs="+", help="run directories")
    sub.add_argument("--out", required=True, help="the PNG file")
    sub.add_argument("--data-dir", default=None, help="tfds data_dir, when not the runs' own")
  contours = commands.add_parser("contours", help="loss contours over a 2-D feature space")
  contours.add_argument("--out", required=True, help="the PNG file")
  contours.add_argument("--margin", type=float, default=8 * math.pi / 64, help="radians")
  contours.add_argument("--scale", type=float, default=4.0)
  args = parser.parse_args(argv)
  try:
    if args.command in ("grid", "tradeoff"):
      policy = report.parse_epoch_policy(args.epoch)
      selection = dict(select_on=args.select_on, tolerance=args.accuracy_tolerance,
                       post_hoc_bias=args.post_hoc_bias)
      if args.command == "grid":
        paths = plot_grid(args.runs_dir, args.out, policy, **selection)
      else:
        paths = plot_tradeoffs(*_load(args.runs_dir, policy, None, **selection), args.out, policy)
    elif args.command in ("angles", "features2d"):
      from camri import prepare  # pylint: disable=g-import-not-at-top
      prepare.setup_runtime(reader=True)  # Reads checkpoints and data with TensorFlow.
      plot = plot_run_angles if args.command == "angles" else plot_run_features_2d
      paths = [plot(args.runs, args.out, args.data_dir)]
    else:
      paths = [plot_loss_contours(args.out, margin=args.margin, scale=args.scale)]
  except (ValueError, OSError) as e:  # OSError: a missing, damaged or unreachable dataset.
    parser.exit(2, f"error: {e}\n")
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
