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
                                     important class per epoch (mean +- sample std
                                     over seeds; recall from the per-class columns,
                                     as the table takes it: cross-entropy too),
  class_recall_<dataset>_<role>.png  test recall of every class (mean +- std),
  angle_stats_<dataset>_<role>.png   mean and variance of the angle between each
                                     class's test features and its class weight,
                                     at each run's epoch of the table,
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
import math
import os
import sys

from camri import run_log
from camri.results import figures
from camri.results import runs as runs_lib
from camri.results import selection
from camri.results import series
from camri.results import table


def _load(root, policy, warn, **chosen):
  """The results and table rows of the runs under root (`camri.report`'s)."""
  results = runs_lib.load_results(root, policy, warn=warn, select_on=chosen.get("select_on", "val"))
  selection.warn_not_launched(run_log.find_roles(root), results, warn or runs_lib.stderr_warning)
  return results, table.build_table(results, warn=warn, **chosen)


def plot_tradeoffs(results, rows, out_dir, policy="last", warn=None):
  """One `figures.plot_tradeoff` per dataset x role of the table; returns the paths."""
  warn = warn or runs_lib.stderr_warning
  written = []
  for row in series.role_rows(rows).values():
    curve = series.tradeoff_curve(results, row)
    if curve is None:
      warn(f"no cross_entropy run of {row.dataset} saved test predictions: the trade-off plot of "
           f"{row.role} has no bias curve")
    title = (f"{series.where(row)}; {selection.describe_epoch_policy(policy, row.selected_on)}, "
             f"settings selected on {row.selected_on}")
    path = os.path.join(out_dir, series.file_name("tradeoff", row.dataset, row.role))
    written.append(figures.plot_tradeoff(series.tradeoff_points(results, rows, row.dataset, row.role),
                                         path, curve, title=title))
  return written


def plot_grid(root, out_dir, policy="last", warn=None, **chosen):
  """Writes the `grid` plots of the module docstring for the runs under root; returns the paths.

  `chosen`: `table.build_table`'s select_on, tolerance and post_hoc_bias.
  """
  warn = warn or runs_lib.stderr_warning
  results, rows = _load(root, policy, warn, **chosen)
  written = []
  for (dataset, role), groups in series.selected_groups(results, rows).items():
    row = series.role_rows(rows)[dataset, role]
    classes, names = row.classes, next(r.class_names for r in results if r.dataset == dataset)
    where = series.where(row)
    path = lambda kind, d=dataset, r=role: os.path.join(out_dir, series.file_name(kind, d, r))
    epoch = selection.describe_epoch_policy(policy, row.selected_on)
    written.append(figures.plot_training_curves(series.training_curves(groups, classes), path("curves"),
                                                title=f"{where}; mean ± std over seeds"))
    written.append(figures.plot_class_recall(series.class_recalls(groups), path("class_recall"),
                                             names, classes, title=f"{where}; {epoch}"))
    angles = series.angle_stats(groups)
    if angles:
      written.append(figures.plot_angle_stats(angles, path("angle_stats"), names, classes,
                                              title=where))
    sweep, baseline = series.margin_sweep(results, dataset, role, classes)
    if sweep:
      written.append(figures.plot_margin_sweep(sweep, path("margin"), baseline,
                                               title=f"{where}; {epoch}"))
  return written + plot_tradeoffs(results, rows, out_dir, policy, warn)


def _run_labels(runs):
  """Short labels for runs (`runs.Run`): the method and the loss fields that differ between them."""
  settings = [runs_lib.setting_of(run.field("loss")) for run in runs]
  varying = table.varying_fields(set(settings))
  seeds = {run.field("seed") for run in runs}
  labels = []
  for run, setting in zip(runs, settings):
    label = series.setting_label(run.field("loss.name", "?"), setting, varying)
    labels.append(label + (f" seed {run.field('seed')}" if len(seeds) > 1 else ""))
  return labels


def plot_run_angles(workdirs, path, data_dir=None):
  """Angle histograms of runs, from their newest checkpoints (see `camri.features`)."""
  from camri import features as features_lib  # pylint: disable=g-import-not-at-top  # JAX, TF.
  runs = [runs_lib.load_run(w) for w in workdirs]
  loaded = [features_lib.load_test_features(w, data_dir) for w in workdirs]
  groups = {label: (f.angles, f.labels) for label, f in zip(_run_labels(runs), loaded)}
  important = sorted({k for run in runs for k in runs_lib.important_classes(run)})
  return figures.plot_angle_histograms(
      groups, path, loaded[0].class_names, important,
      title=f"{loaded[0].config.get('dataset')}: test set, checkpoint of the last saved epoch")


def plot_run_features_2d(workdirs, path, data_dir=None):
  """The 2-D feature plot of runs with feature_dim 2, from their newest checkpoints."""
  from camri import features as features_lib  # pylint: disable=g-import-not-at-top
  runs = [runs_lib.load_run(w) for w in workdirs]
  loaded = [features_lib.load_test_features(w, data_dir) for w in workdirs]
  panels = {}
  for label, run, f in zip(_run_labels(runs), runs, loaded):
    last = run.metrics[-1]  # The newest checkpoint's epoch, that of the features.
    label += f"\naccuracy {last['test_accuracy']:.3f}, important recall {last['test_recall']:.3f}"
    panels[label] = (f.features, f.labels, f.class_weights)
  important = sorted({k for run in runs for k in runs_lib.important_classes(run)})
  return figures.plot_features_2d(panels, path, loaded[0].class_names, important,
                                  title="normalised test features z/|z| (radius jittered) and class "
                                        "weight directions, last saved epoch")


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
    selection.add_selection_args(sub)
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
      policy, chosen = selection.selection_from_args(args)
      if args.command == "grid":
        paths = plot_grid(args.runs_dir, args.out, policy, **chosen)
      else:
        paths = plot_tradeoffs(*_load(args.runs_dir, policy, None, **chosen), args.out, policy)
    elif args.command in ("angles", "features2d"):
      from camri import prepare  # pylint: disable=g-import-not-at-top
      prepare.setup_runtime(reader=True)  # Reads checkpoints and data with TensorFlow.
      plot = plot_run_angles if args.command == "angles" else plot_run_features_2d
      paths = [plot(args.runs, args.out, args.data_dir)]
    else:
      paths = [figures.plot_loss_contours(args.out, margin=args.margin, scale=args.scale)]
  except (ValueError, OSError) as e:  # OSError: a missing, damaged or unreachable dataset.
    parser.exit(2, f"error: {e}\n")
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
