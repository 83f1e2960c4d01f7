r"""The paper's protocol for one dataset, as one command.

    python -m launch.protocol --dataset digits|cifar10|gtsrb|awa2 --root RUNS_DIR \
        --executor local|slurm|dry [--seeds 10] [--grid paper|smoke] \
        [--classes measured|paper] [--config PATH] \
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

`--classes paper` (cifar10 only) takes the important classes and CAMRI's
settings from the authors' released code instead: worst1 = cat (3) with
m = 4pi/64, s = 16; worst2 = dog (5), m = 5pi/64, s = 16; median = airplane
(0), m = 4pi/64, s = 8 (they match the poster's cross-entropy recalls for
those roles, 0.74, 0.83 and 0.89). CAMRI then runs that one setting per role,
x seeds; cross-entropy, ArcFace, WCE and RWWCE run as with `--classes
measured` (the default). Stage 2 does not wait for stage 1: both are launched
(or printed) together.

With `--classes measured`, stage 2 needs stage 1 finished. The local executor
runs both in one command. With slurm the command submits stage 1 and stops:
run the same command again once those jobs have ended, and it submits stage 2
(finished runs are always skipped, queued ones are not submitted twice). A dry
run prints stage 1's commands, or stage 2's once stage 1 is finished.

The local executor runs as many runs at once as the machine holds unless
--parallel says otherwise: one per GPU, each on its own GPU, or without GPUs
one per CPU core (per --cpus cores with --cpus); see launch.grid.local_slots.

Once stage 2 is launched the command prints the report's command:
python -m camri.report RUNS_DIR/<dataset> --reference
"""

import argparse
import json
import math
import os
import shlex
import sys
from typing import NamedTuple

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


class RoleSetting(NamedTuple):
  """An important class and CAMRI's setting for it."""
  k: int
  name: str
  margin: float
  scale: float


# The authors' released settings (`--classes paper`), margins k*pi/64 as they write them.
PAPER_SETTINGS = {
    "cifar10": {"worst1": RoleSetting(3, "cat", 4 * math.pi / 64, 16.0),
                "worst2": RoleSetting(5, "dog", 5 * math.pi / 64, 16.0),
                "median": RoleSetting(0, "airplane", 4 * math.pi / 64, 8.0)},
}


def stage1_sweep(seeds):
  return hyper.product(hyper.fixed("loss.name", "cross_entropy"), hyper.sweep("seed", range(seeds)))


def stage2_sweep(classes, seeds, margins, scales, weights, camri_settings=None):
  """CAMRI, ArcFace (margins x scales), WCE, RWWCE (weights) x seeds for each {role: class}.

  `camri_settings`, {role: (margin, scale)}, gives CAMRI one setting per role
  instead of margins x scales.
  """

  def angular(name, margins, scales):
    return hyper.product(hyper.fixed("loss.name", name), hyper.sweep("loss.margin", margins),
                         hyper.sweep("loss.scale", scales))

  weighted = hyper.union(
      hyper.product(hyper.fixed("loss.name", "wce"), hyper.sweep(WCE_WEIGHT_FIELD, weights)),
      hyper.product(hyper.fixed("loss.name", "rwwce"), hyper.sweep(RWWCE_WEIGHT_FIELD, weights),
                    hyper.fixed(RWWCE_FP_FIELD, RWWCE_FP_WEIGHT)))

  def methods(role):
    margin, scale = (camri_settings or {}).get(role, (None, None))
    camri = angular("camri", [margin], [scale]) if margin is not None else angular(
        "camri", margins, scales)
    return hyper.union(camri, angular("arcface", margins, scales), weighted)

  return hyper.union(*[
      hyper.product(hyper.fixed("loss.important_classes", k), hyper.fixed("tag", role),
                    methods(role), hyper.sweep("seed", range(seeds)))
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


MEASURED_RULE = "classes sorted by (mean recall, index): worst1 = [0], worst2 = [1], median = [K // 2]"
PAPER_RULE = "the authors' released settings (--classes paper)"


def write_classes(path, classes, names, *, mean_recall, seeds, rule, dry_run=False):
  """Records {role: class}, {role: class name} (or None) and how they were chosen in `path`.

  Warns when they differ from those recorded before; writes nothing on a dry run.
  """
  previous = None
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    previous = {role: saved.get(role) for role in ROLES}
  if previous and previous != classes:
    print(f"warning: the important classes changed from {previous} to {classes}", file=sys.stderr)
  if dry_run:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**classes, "class_names": names, "mean_recall": mean_recall, "seeds": seeds,
               "rule": rule}, f, indent=2)


def _dry(args):
  return args.executor == "dry" or args.dry_run


def paper_stage2(config, root, args):
  """The runs of stage 2 with the authors' classes and CAMRI settings; records and prints them."""
  settings = PAPER_SETTINGS[args.dataset]
  classes = {role: s.k for role, s in settings.items()}
  write_classes(os.path.join(root, CLASSES_FILE), classes,
                {role: s.name for role, s in settings.items()}, mean_recall=None,
                seeds=args.seeds, rule=PAPER_RULE, dry_run=_dry(args))
  print("important classes (the authors'): " + "; ".join(
      f"{role} = {s.k} ({s.name}), CAMRI m = {s.margin * 64 / math.pi:g}pi/64, s = {s.scale:g}"
      for role, s in settings.items()), file=sys.stderr)
  sweep = stage2_sweep(classes, args.seeds, **GRIDS[args.grid],
                       camri_settings={role: (s.margin, s.scale) for role, s in settings.items()})
  return grid.expand(config, sweep, root, module=args.module)


def measured_stage2(config, root, args, stage1):
  """The runs of stage 2 with the classes stage 1 measured; records and prints them.

  None while stage 1 is not finished.
  """
  unfinished = [run for run in stage1 if grid.status(run) != "finished"]
  if unfinished:
    print(f"stage 2 waits for stage 1: {len(unfinished)} of {len(stage1)} cross-entropy runs are "
          "not finished; run this command again once they are", file=sys.stderr)
    return None
  classes, mean_recall = pick_classes([run.workdir for run in stage1])
  class_names = run_log.get_field(run_log.read_config(stage1[0].workdir), "class_names")
  write_classes(os.path.join(root, CLASSES_FILE), classes,
                {role: class_names[k] for role, k in classes.items()} if class_names else None,
                mean_recall=mean_recall, seeds=args.seeds, rule=MEASURED_RULE, dry_run=_dry(args))
  print("important classes: " + ", ".join(
      f"{role} = {k}" + (f" ({class_names[k]})" if class_names else "") + f", recall {mean_recall[k]:.4f}"
      for role, k in classes.items()), file=sys.stderr)
  sweep = stage2_sweep(classes, args.seeds, **GRIDS[args.grid])
  return grid.expand(config, sweep, root, module=args.module)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m launch.protocol", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=DATASETS)
  parser.add_argument("--config", help="base config (default configs/<dataset>.py)")
  parser.add_argument("--seeds", type=int, default=10, help="trials per setting (default 10)")
  parser.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="stage 2 hyperparameters")
  parser.add_argument("--classes", choices=("measured", "paper"), default="measured",
                      help="important classes: measured in stage 1 (default), or the authors' "
                      f"released classes and CAMRI settings ({', '.join(PAPER_SETTINGS)} only)")
  grid.add_launch_args(parser)
  args = parser.parse_args(argv)
  if args.seeds < 1:
    parser.exit(2, f"error: --seeds must be >= 1, got {args.seeds}\n")
  if args.classes == "paper" and args.dataset not in PAPER_SETTINGS:
    parser.exit(2, f"error: --classes paper: the authors released settings for "
                f"{', '.join(PAPER_SETTINGS)} only, not {args.dataset}; use --classes measured\n")
  config = args.config or f"configs/{args.dataset}.py"
  root = os.path.join(args.root, args.dataset)
  log = sys.stderr
  try:
    print(f"stage 1: cross-entropy x {args.seeds} seeds in {root}", file=log)
    stage1 = grid.expand(config, stage1_sweep(args.seeds), root, module=args.module)
    if args.classes == "paper":  # Stage 2 needs nothing from stage 1: one launch.
      stage2 = paper_stage2(config, root, args)
      print(f"stage 2: {len(stage2)} runs, launched with stage 1", file=log)
      failed = grid.launch(stage1 + stage2, args)
    else:
      if grid.launch(stage1, args):
        return 1
      stage2 = measured_stage2(config, root, args, stage1)
      if stage2 is None:
        return 0
      print(f"stage 2: {len(stage2)} runs", file=log)
      failed = grid.launch(stage2, args)
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")
  if failed:
    return 1
  ended = (args.executor == "local" and not args.dry_run) or args.wait
  print(f"report{'' if ended else ', once the runs have ended'}: "
        f"python -m camri.report {shlex.quote(root)} --reference", file=log)
  return 0


if __name__ == "__main__":
  sys.exit(main())
