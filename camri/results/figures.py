"""Every figure, from numbers already selected: the only module that imports matplotlib.

Each `plot_*` takes arrays or `camri.stats` summaries (`series` computes them
from the runs and the table) and writes one PNG (Agg backend).
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from camri import stats  # pylint: disable=g-import-not-at-top,wrong-import-position
from camri.results import table  # pylint: disable=g-import-not-at-top,wrong-import-position

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

TRAINING_PANELS = (("loss", ("train_loss", "test_loss")), ("test accuracy", ("test_accuracy",)),
                   ("test recall of the important class", ("test_recall",)))


def plot_training_curves(curves, path, title=""):
  """Per-epoch curves, mean over each group's runs with a +-std band.

  Args:
    curves: {label: {column: (epochs, means, stds, number of runs)}} for the
      columns of TRAINING_PANELS (`series.training_curves`); a column a group
      lacks is not drawn, nor is a band of one run.
    path: the PNG to write.
    title: the figure's title.
  """
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for (name, columns), ax in zip(TRAINING_PANELS, axes):
    for (label, by_column), color in zip(curves.items(), _colors(len(curves))):
      for column in columns:
        if column not in by_column:
          continue
        epochs, mean, std, runs = by_column[column]
        style = "--" if column.startswith("test") and len(columns) > 1 else "-"
        text = f"{label} ({column.split('_')[0]})" if len(columns) > 1 else label
        ax.plot(epochs, mean, style, color=color, label=text)
        if runs > 1:
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
  bases = list(dict.fromkeys(method.removesuffix(table.BIAS) for method, *_ in points))
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
                color=colors[method.removesuffix(table.BIAS)], capsize=2, label=label,
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
