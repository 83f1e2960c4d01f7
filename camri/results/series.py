"""The numbers each figure draws, from the records (`runs`) and the table's rows (`table`).

Nothing here reads a file or chooses anything: the runs are those the table
reports, at the epoch the selection took.
"""

import collections
import math
import re
import warnings

import numpy as np

from camri import posthoc
from camri.results import table


def file_name(kind, dataset, role):
  """`<kind>_<dataset>_<role>.png`, characters a file name should not hold as `-`
  (`tradeoff_folder-signs_stop.png` for dataset folder:signs)."""
  safe = lambda text: re.sub(r"[^A-Za-z0-9._+=-]", "-", text)
  return f"{kind}_{safe(dataset)}_{safe(role)}.png"


def where(row):
  """`<dataset>, <role>: class <k> (<name>)`: what a figure of the row's role is about."""
  text = f"{row.dataset}, {row.role}: class {'+'.join(map(str, row.classes))}"
  if row.class_names and list(row.class_names) != [str(k) for k in row.classes]:
    text += f" ({'+'.join(row.class_names)})"
  return text


def setting_label(method, setting, varying):
  shown = ", ".join(f"{k}={table.format_value(v)}" for k, v in setting if k in varying)
  return f"{method} ({shown})" if shown else method


def row_label(row):
  label = row.method if row.setting == "-" else f"{row.method} ({row.setting})"
  return label if row.kept else f"{label}, not kept"


def role_rows(rows):
  """The first row of each dataset x role of the table: its classes and selection split."""
  firsts = {}
  for row in rows:
    if row.role != "-":
      firsts.setdefault((row.dataset, row.role), row)
  return firsts


def selected_groups(results, rows):
  """{(dataset, role): {label: [RunResult]}}: cross-entropy and each method's reported setting."""
  selected = {}
  for row in rows:
    if row.role == "-" or row.method.endswith(table.BIAS):
      continue
    if row.method == table.BASELINE:
      runs = [r for r in results if r.dataset == row.dataset and r.method == table.BASELINE]
    else:
      runs = [r for r in results if (r.dataset, r.role, r.method, r.setting)
              == (row.dataset, row.role, row.method, row.chosen)]
    selected.setdefault((row.dataset, row.role), {})[row_label(row)] = runs
  return selected


TRAINING_COLUMNS = ("train_loss", "test_loss", "test_accuracy", "test_recall")


def epoch_curve(runs, column):
  """(epochs, means, sample stds (ddof=1), number of runs) of a column over runs' metrics rows.

  An epoch is in the curve when any run reached it; a run without it, or with an
  empty cell, is left out of that epoch's mean and std (nan with fewer than 2).
  None when no run has a number in the column.
  """
  epochs = sorted({row["epoch"] for rows in runs for row in rows})
  values = np.array([[next((r.get(column, np.nan) for r in rows if r["epoch"] == e), np.nan)
                      for e in epochs] for rows in runs], float)
  if not np.isfinite(values).any():
    return None
  with warnings.catch_warnings():  # An epoch fewer than 2 runs reached: nan, not drawn.
    warnings.simplefilter("ignore", RuntimeWarning)
    return epochs, np.nanmean(values, 0), np.nanstd(values, 0, ddof=1), len(runs)


def training_curves(groups, classes):
  """`figures.plot_training_curves`'s curves: each group's `epoch_curve` of each column.

  test_recall is the mean of the test_recall_<k> columns of `classes`, as the
  table computes it: cross-entropy, which logs no recall of an important
  class, gets a curve too.
  """
  curves = {}
  for label, runs in groups.items():
    rows = [[{**row, "test_recall": _class_mean(row, classes)} for row in r.run.metrics] for r in runs]
    curves[label] = {c: curve for c in TRAINING_COLUMNS if (curve := epoch_curve(rows, c)) is not None}
  return curves


def _class_mean(row, classes):
  return math.fsum(row.get(f"test_recall_{k}", math.nan) for k in classes) / len(classes)


def class_recalls(groups):
  """`figures.plot_class_recall`'s groups: (runs, K) test recall per class."""
  return {label: [r.class_recall for r in runs] for label, runs in groups.items()}


def angle_stats(groups):
  """`figures.plot_angle_stats`'s groups, for the groups whose runs logged angle statistics.

  Each run's at the epoch of its table numbers (`RunResult.row`).
  """
  angles = {}
  for label, runs in groups.items():
    at = [r.row for r in runs]
    k = len(runs[0].class_recall)
    if all(f"test_angle_mean_{j}" in a for a in at for j in range(k)):
      angles[label] = (np.array([[a[f"test_angle_mean_{j}"] for j in range(k)] for a in at]),
                       np.array([[a[f"test_angle_var_{j}"] for j in range(k)] for a in at]))
  return angles


def margin_sweep(results, dataset, role, classes):
  """`figures.plot_margin_sweep`'s (series, baseline) for the settings with a margin; ({}, None) without."""
  with_margin = [r for r in results if r.dataset == dataset  # WCE and RWWCE have a margin field: None.
                 and dict(r.setting).get("margin") is not None]
  by_setting = table.by_setting(with_margin, role=role)
  varying = table.varying_fields({s for _, s in by_setting}) - {"margin"}
  series = collections.defaultdict(list)
  for (method, setting), runs in by_setting.items():
    margin = dict(setting)["margin"]
    margin = margin[0] if isinstance(margin, tuple) else margin
    series[setting_label(method, setting, varying)].append(
        (margin, [r.recall for r in runs], [r.accuracy for r in runs]))
  ce = [r for r in results if r.dataset == dataset and r.method == table.BASELINE]
  baseline = None
  if series and ce:
    baseline = (table.BASELINE,
                [math.fsum(r.class_recall[k] for k in classes) / len(classes) for r in ce],
                [r.accuracy for r in ce])
  return dict(series), baseline


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


def tradeoff_curve(results, row):
  """Cross-entropy's (accuracies, recalls) as a bias sweeps, from its saved test predictions; or None."""
  ce = [r for r in results if r.dataset == row.dataset and r.method == table.BASELINE]
  predictions = [p for p in (r.run.predictions("test") for r in ce) if p is not None]
  if not predictions:
    return None
  _, accuracy, recall = bias_sweep(predictions, row.classes[0])
  return accuracy, recall


def tradeoff_points(results, rows, dataset, role):
  """`figures.plot_tradeoff`'s points: cross-entropy, the bias rows and every setting of every method."""
  points = []
  chosen = {}
  for row in rows:
    if (row.dataset, row.role) != (dataset, role):
      continue
    if row.method == table.BASELINE:
      points.append((row.method, "cross_entropy (b = 0)", row.accuracy, row.recall, "baseline"))
    elif row.method.endswith(table.BIAS):
      points.append((row.method, row_label(row), row.accuracy, row.recall, "bias"))
    else:
      chosen[row.method, row.chosen] = row_label(row)
  of_dataset = [r for r in results if r.dataset == dataset]
  for (method, setting), runs in table.by_setting(of_dataset, role=role).items():
    accuracy, recall = table.stats(r.accuracy for r in runs), table.stats(r.recall for r in runs)
    label = chosen.get((method, setting))
    points.append((method, label or method, accuracy, recall, "setting" if label is None else "chosen"))
  return points
