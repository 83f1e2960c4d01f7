r"""The paper's protocol for one dataset, as one command.

    python -m launch.protocol --dataset digits|cifar10|gtsrb|awa2 --root RUNS_DIR \
        --executor local|slurm|dry [--seeds 10] [--grid paper|smoke] [--config PATH] \
        [launch.grid's options: --parallel, --gpus, --time-min, --partition, --dry-run, ...]

Runs go to RUNS_DIR/<dataset>/, one workdir per run as in `launch.grid`.

Stage 1: cross-entropy x seeds (0 .. --seeds - 1).

Important classes: from stage 1, the mean over seeds of each class's test
recall at the last epoch (epoch == num_epochs); the classes sorted by
(mean recall, class index) ascending; worst1 = the first, worst2 = the second,
median = the one at index K // 2 (for an even K the upper of the two middle
classes; K >= 4 so that the three differ). Written, with the recalls, to
RUNS_DIR/<dataset>/important_classes.json.

Stage 2: for each role, CAMRI and ArcFace over margins x scales (both set
explicitly), WCE over the important class's weight (`loss.important_weight`) and
RWWCE over the cost of missing it (`loss.fn_weight`, with `loss.fp_weight=1`),
x seeds, each run with `--config.loss.important_classes=<k> --config.tag=<role>`
(config names as in docs/losses.md). The margins are
k*pi/64 as in the authors' code. `--grid paper` (k in 1, 2, 4, 5, 8; scales
8, 16, 32; weights 2, 5, 10, 20: 38 settings, x 3 roles x seeds) is our
choice around the authors' released settings (4pi/64 and 5pi/64 with scale
16, 4pi/64 with scale 8), the paper not listing its grid; `--grid smoke` has
one setting per method, for a quick end-to-end check. Edit GRIDS to change them.

Stage 2 needs stage 1 finished. The local executor runs both in one command.
With slurm the command submits stage 1 and stops: run the same command again
once those jobs have ended, and it submits stage 2 (finished runs are always
skipped, queued ones are not submitted twice). A dry run prints stage 1's
commands, or stage 2's once stage 1 is finished.

Then: python -m camri.report RUNS_DIR/<dataset> --reference
"""

import argparse
import json
import math
import os
import sys

from camri import run_log
from launch import grid
from launch import hyper

DATASETS = ("digits", "cifar10", "gtsrb", "awa2")
ROLES = ("worst1", "worst2", "median")
# The swept weight of the important classes (config names of docs/losses.md):
# WCE's class weight, and RWWCE's cost of missing an important class (C_FN);
# RWWCE's false-positive cost is set to RWWCE_FP_WEIGHT, its default, explicitly.
WCE_WEIGHT_FIELD = "loss.important_weight"
RWWCE_WEIGHT_FIELD = "loss.fn_weight"
RWWCE_FP_FIELD, RWWCE_FP_WEIGHT = "loss.fp_weight", 1.0
GRIDS = {
    "paper": dict(margins=tuple(k * math.pi / 64 for k in (1, 2, 4, 5, 8)),
                  scales=(8.0, 16.0, 32.0),
                  weights=(2.0, 5.0, 10.0, 20.0)),
    "smoke": dict(margins=(4 * math.pi / 64,), scales=(16.0,), weights=(5.0,)),
}
CLASSES_FILE = "important_classes.json"


def stage1_sweep(seeds):
  return hyper.product(hyper.fixed("loss.name", "cross_entropy"), hyper.sweep("seed", range(seeds)))


def stage2_sweep(classes, seeds, margins, scales, weights):
  """CAMRI, ArcFace (margins x scales), WCE, RWWCE (weights) x seeds for each {role: class}."""
  angular = hyper.product(hyper.sweep("loss.name", ["camri", "arcface"]),
                          hyper.sweep("loss.margin", margins), hyper.sweep("loss.scale", scales))
  weighted = hyper.union(
      hyper.product(hyper.fixed("loss.name", "wce"), hyper.sweep(WCE_WEIGHT_FIELD, weights)),
      hyper.product(hyper.fixed("loss.name", "rwwce"), hyper.sweep(RWWCE_WEIGHT_FIELD, weights),
                    hyper.fixed(RWWCE_FP_FIELD, RWWCE_FP_WEIGHT)))
  return hyper.union(*[
      hyper.product(hyper.fixed("loss.important_classes", k), hyper.fixed("tag", role),
                    hyper.union(angular, weighted), hyper.sweep("seed", range(seeds)))
      for role, k in classes.items()])


def pick_classes(workdirs):
  """worst1, worst2 and median classes of finished cross-entropy runs (see the module doc).

  Returns:
    ({role: class index}, [mean recall of each class]).
  """
  per_run = []
  for workdir in workdirs:
    config = run_log.read_config(workdir)
    num_epochs = run_log.get_field(config, "num_epochs")
    (row,) = [r for r in run_log.read_metrics(workdir) if r["epoch"] == num_epochs]
    num_classes = run_log.get_field(config, "num_classes")
    per_run.append([row[f"test_recall_{k}"] for k in range(num_classes)])
  if len({len(r) for r in per_run}) != 1:
    raise ValueError("the cross-entropy runs have different numbers of classes")
  num_classes = len(per_run[0])
  if num_classes < 4:
    raise ValueError(f"worst1, worst2 and median need at least 4 classes, got {num_classes}")
  mean = [math.fsum(r[k] for r in per_run) / len(per_run) for k in range(num_classes)]
  order = sorted(range(num_classes), key=lambda k: (mean[k], k))
  return {"worst1": order[0], "worst2": order[1], "median": order[num_classes // 2]}, mean


def write_classes(path, classes, mean_recall, class_names, seeds):
  previous = None
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    previous = {role: saved.get(role) for role in ROLES}
  if previous and previous != classes:
    print(f"warning: the important classes changed from {previous} to {classes}", file=sys.stderr)
  with open(path, "w") as f:
    json.dump({**classes, "class_names": {role: class_names[k] for role, k in classes.items()}
               if class_names else None, "mean_recall": mean_recall, "seeds": seeds,
               "rule": "classes sorted by (mean recall, index): worst1 = [0], worst2 = [1], "
                       "median = [K // 2]"}, f, indent=2)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m launch.protocol", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=DATASETS)
  parser.add_argument("--config", help="base config (default configs/<dataset>.py)")
  parser.add_argument("--seeds", type=int, default=10, help="trials per setting (default 10)")
  parser.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="stage 2 hyperparameters")
  grid.add_launch_args(parser)
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.exit(2, f"error: --seeds must be >= 1, got {args.seeds}\n")
  config = args.config or f"configs/{args.dataset}.py"
  root = os.path.join(args.root, args.dataset)
  log = sys.stderr
  try:
    print(f"stage 1: cross-entropy x {args.seeds} seeds in {root}", file=log)
    stage1 = grid.expand(config, stage1_sweep(args.seeds), root, module=args.module)
    if grid.launch(stage1, args):
      return 1
    unfinished = [run for run in stage1 if grid.status(run) != "finished"]
    if unfinished:
      print(f"stage 2 waits for stage 1: {len(unfinished)} of {len(stage1)} cross-entropy runs are "
            "not finished; run this command again once they are", file=log)
      return 0
    classes, mean_recall = pick_classes([run.workdir for run in stage1])
    class_names = run_log.get_field(run_log.read_config(stage1[0].workdir), "class_names")
    write_classes(os.path.join(root, CLASSES_FILE), classes, mean_recall, class_names, args.seeds)
    print("important classes: " + ", ".join(
        f"{role} = {k}" + (f" ({class_names[k]})" if class_names else "") + f", recall {mean_recall[k]:.4f}"
        for role, k in classes.items()), file=log)
    stage2 = grid.expand(config, stage2_sweep(classes, args.seeds, **GRIDS[args.grid]), root,
                         module=args.module)
    print(f"stage 2: {len(stage2)} runs", file=log)
    return 1 if grid.launch(stage2, args) else 0
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
  sys.exit(main())
