r"""The paper's protocol for one dataset, as one command.

    python -m launch.protocol --dataset digits|cifar10|gtsrb|awa2|folder --root RUNS_DIR \
        --executor local|slurm|dry [--seeds 10] [--grid paper|smoke] \
        [--classes measured|paper|NAME[,NAME|INDEX...]] [--config PATH[:ARGS]] \
        [--config.FIELD=VALUE ...] \
        [launch.grid's options: --parallel, --gpus, --time-min, --partition, --dry-run, ...]

    python -m launch.protocol --dataset folder --config 'configs/folder.py:path=/data/xray,size=64' \
        --classes pneumonia --root runs --executor local --seeds 5

Runs go to RUNS_DIR/<dataset>/, one workdir per run as in `launch.grid`; for
an image folder (`--dataset folder`, whose `--config` is required) to
RUNS_DIR/<the tree's folder name>/ (`runs/xray`), or RUNS_DIR/<name>-<a hash
of the tree's path>/ when that directory holds the runs of another tree.
The base config is --config (default configs/<dataset>.py), whose dataset must
be --dataset, with the --config.FIELD=VALUE overrides given, as camri.main
takes them (e.g. --config.num_epochs=50): every run gets them; the fields
the protocol sets itself (seed, tag, the loss's) cannot be given.

Stage 1: cross-entropy x seeds (0 .. --seeds - 1).

Important classes (`--classes measured`, the default): from stage 1, the mean
over seeds of each class's validation recall at the last epoch (epoch ==
num_epochs); the classes sorted by (mean recall, class index) ascending;
worst1 = the first, worst2 = the second, median = the one at index K // 2
(for an even K the upper of the two middle classes; K >= 4 so that the three
differ). Validation, not test: the class on which cross-entropy did worst on
the test images is partly a low draw of its test recall, and every method's
test gain on it would be inflated by regression to the mean. Runs without a
validation split (validation_fraction=0) are measured on test recall, with a
warning. Written, with the recalls that decided and their split, to
RUNS_DIR/<dataset>/important_classes.json; the report's caption says which
split chose the roles.

`--classes NAME[,NAME|INDEX...]`: the classes you care about, by folder (class)
name or index, each its own role named after the class (`--classes
pneumonia,3`). They need nothing from stage 1, so both stages are launched
together.

Stage 2: for each role, CAMRI and ArcFace over margins x scales (both set
explicitly), WCE over the important class's weight (`loss.important_weight`) and
RWWCE over the cost of missing it (`loss.fn_weight`, with `loss.fp_weight=1`),
x seeds, each run with `--config.loss.important_classes=<k> --config.tag=<role>`
(config names as in docs/losses.md). The margins are
k*pi/64 as in the authors' code. `--grid paper` (k in 1, 2, 4, 5, 8; scales
8, 16, 32; weights 2, 5, 10, 20: 38 settings, x roles x seeds) is our
choice around the authors' released settings (4pi/64 and 5pi/64 with scale
16, 4pi/64 with scale 8), the paper not listing its grid; `--grid smoke` has
one setting per method, for a quick end-to-end check. Edit GRIDS to change them.

`--classes paper` (cifar10 only) takes the important classes and CAMRI's
settings from the authors' released code instead: worst1 = cat (3) with
m = 4pi/64, s = 16; worst2 = dog (5), m = 5pi/64, s = 16; median = airplane
(0), m = 4pi/64, s = 8 (they match the poster's cross-entropy recalls for
those roles, 0.74, 0.83 and 0.89). CAMRI then runs that one setting per role,
x seeds; cross-entropy, ArcFace, WCE and RWWCE run as with `--classes
measured`. Stage 2 does not wait for stage 1: both are launched (or printed)
together.

With `--classes measured`, stage 2 needs stage 1 finished. The local executor
runs both in one command. With slurm the command submits stage 1 and stops:
run the same command again once those jobs have ended, and it submits stage 2
(finished runs are always skipped, queued ones are not submitted twice). A dry
run prints stage 1's commands, or stage 2's once stage 1 is finished.

The local executor runs as many runs at once as the machine holds unless
--parallel says otherwise: one per GPU, each on its own GPU, or without GPUs
one per CPU core (per --cpus cores with --cpus); see launch.grid.local_slots.

`--heads` adds decoupled runs (stage 3, once stage 1 has finished): for each
seed, every method of stage 2 and a cross-entropy head train new layers (the
feature layer and the head) on the frozen trunk of that seed's cross-entropy
run (`--config.trunk_from`, camri/trunk.py: its output is computed once and
shared). They go to RUNS_DIR/<dataset>/heads/<cross-entropy run>/, and the
report shows them as their own rows, "camri (head on cross_entropy)", beside
the end-to-end ones.

Once stage 2 is launched the command prints the commands of the report and of
the trade-off plots of its runs:
python -m camri.report RUNS_DIR/<dataset> [--reference]
python -m camri.plots tradeoff RUNS_DIR/<dataset> --out RUNS_DIR/<dataset>/plots
"""

import argparse
import math
import os
import shlex
import sys
from typing import NamedTuple

from camri import cli
from camri import config_lib
from camri import run_log
from camri.results import runs as runs_lib
from camri.results import selection
from launch import grid
from launch import hyper

DATASETS = ("digits", "cifar10", "gtsrb", "awa2", "folder")
PAPER_DATASETS = ("cifar10", "gtsrb", "awa2")  # Those of the paper's Table 1 (`--reference`).
MEASURED_ROLES = selection.MEASURED_ROLES
# The swept weight of the important classes (config names of docs/losses.md):
# WCE's class weight, and RWWCE's cost of missing an important class (C_FN);
# RWWCE's false-positive cost is set to RWWCE_FP_WEIGHT, its default, explicitly.
WCE_WEIGHT_FIELD = "loss.important_weight"
RWWCE_WEIGHT_FIELD = "loss.fn_weight"
RWWCE_FP_FIELD, RWWCE_FP_WEIGHT = "loss.fp_weight", 1.0
# The fields the protocol's runs set; --config.FIELD=VALUE cannot give them.
PROTOCOL_FIELDS = ("seed", "tag", "loss.name", "loss.important_classes", "loss.margin", "loss.scale",
                   WCE_WEIGHT_FIELD, RWWCE_WEIGHT_FIELD, RWWCE_FP_FIELD, "trunk_from")
HEADS_DIR = selection.HEADS_DIR
GRIDS = {
    "paper": dict(margins=tuple(k * math.pi / 64 for k in (1, 2, 4, 5, 8)),
                  scales=(8.0, 16.0, 32.0),
                  weights=(2.0, 5.0, 10.0, 20.0)),
    "smoke": dict(margins=(4 * math.pi / 64,), scales=(16.0,), weights=(5.0,)),
}
CLASSES_FILE = run_log.ROLES_FILE
PLOTS_DIR = "plots"


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
  """Seeds x CAMRI, ArcFace (margins x scales), WCE, RWWCE (weights) for each {role: class}.

  `camri_settings`, {role: (margin, scale)}, gives CAMRI one setting per role
  instead of margins x scales.
  """
  # Seed by seed: a protocol stopped part way has every method at its first seeds, a paired
  # comparison, rather than every seed of its first methods.
  return hyper.product(hyper.sweep("seed", range(seeds)),
                       methods_sweep(classes, margins, scales, weights, camri_settings))


def heads_sweep(classes, seed, margins, scales, weights):
  """Stage 2's methods of one seed, and a cross-entropy head, for each {role: class}."""
  cross_entropy = hyper.union(*[
      hyper.product(hyper.fixed("loss.important_classes", k), hyper.fixed("tag", role),
                    hyper.fixed("loss.name", "cross_entropy")) for role, k in classes.items()])
  return hyper.product(hyper.fixed("seed", seed), hyper.union(
      cross_entropy, methods_sweep(classes, margins, scales, weights)))


def methods_sweep(classes, margins, scales, weights, camri_settings=None):
  """CAMRI, ArcFace, WCE and RWWCE (`stage2_sweep`'s) of each {role: class}, without seeds."""

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
      hyper.product(hyper.fixed("loss.important_classes", k), hyper.fixed("tag", role), methods(role))
      for role, k in classes.items()])


def _warn(message):
  print(f"warning: {message}", file=sys.stderr)


def mean_class_recall(workdirs, warn=_warn):
  """`selection.mean_class_recall` of the cross-entropy runs in `workdirs`: (means, split)."""
  return selection.mean_class_recall([runs_lib.load_run(w) for w in workdirs], warn)


pick_classes = selection.pick_classes


MEASURED_RULE = "classes sorted by (mean recall, index): worst1 = [0], worst2 = [1], median = [K // 2]"
PAPER_RULE = "the authors' released classes and CAMRI settings (--classes paper)"
NAMED_RULE = "the classes named on the command line (--classes)"


def write_classes(path, roles, names, **recorded):
  """Records how the roles were chosen in `path` (`selection.write_roles_file`)."""
  selection.write_roles_file(path, roles, names, warn=_warn, **recorded)


def _dry(args):
  return args.executor == "dry" or args.dry_run


class Protocol(NamedTuple):
  """What both stages share: the base config, where the runs go, and how they launch."""
  config: str
  base_args: tuple
  root: str
  dataset: str  # As the report names it.
  args: argparse.Namespace

  def expand(self, sweep):
    return grid.expand(self.config, sweep, self.root, module=self.args.module,
                       base_args=self.base_args)

  def stage2(self, roles, names, *, rule, chosen_on=None, mean_recall=None, camri_settings=None):
    """Stage 2's runs for {role: class index}; records the roles and prints them."""
    write_classes(os.path.join(self.root, CLASSES_FILE), roles, names, dataset=self.dataset,
                  seeds=self.args.seeds, rule=rule, chosen_on=chosen_on, mean_recall=mean_recall,
                  dry_run=_dry(self.args))
    sweep = stage2_sweep(roles, self.args.seeds, **GRIDS[self.args.grid],
                         camri_settings=camri_settings)
    return self.expand(sweep), roles


def heads_stage(protocol, stage1, roles):
  """Stage 3 (--heads): for each seed, every method's head on the frozen trunk of that seed's
  cross-entropy run, in RUNS_DIR/<dataset>/heads/<its name>/; None while stage 1 is not
  finished."""
  unfinished = [run for run in stage1 if grid.status(run) != "finished"]
  if unfinished:
    print(f"the heads wait for stage 1: {len(unfinished)} of {len(stage1)} cross-entropy runs "
          "are not finished; run this command again once they are", file=sys.stderr)
    return None
  runs = []
  for run in stage1:
    runs += grid.expand(protocol.config, heads_sweep(roles, run.overrides["seed"],
                                                     **GRIDS[protocol.args.grid]),
                        os.path.join(protocol.root, HEADS_DIR, run.name),
                        module=protocol.args.module,
                        base_args=(*protocol.base_args, f"--config.trunk_from={run.workdir}"))
  return runs


def paper_stage2(protocol):
  """The runs of stage 2 with the authors' classes and CAMRI settings."""
  settings = PAPER_SETTINGS[protocol.args.dataset]
  print("important classes (the authors'): " + "; ".join(
      f"{role} = {s.k} ({s.name}), CAMRI m = {s.margin * 64 / math.pi:g}pi/64, s = {s.scale:g}"
      for role, s in settings.items()), file=sys.stderr)
  return protocol.stage2({role: s.k for role, s in settings.items()},
                         {role: s.name for role, s in settings.items()}, rule=PAPER_RULE,
                         camri_settings={role: (s.margin, s.scale) for role, s in settings.items()})


def named_stage2(protocol, roles):
  """The runs of stage 2 with the classes of --classes, {class name: index}."""
  print("important classes (named): " + ", ".join(f"{name} = {k}" for name, k in roles.items()),
        file=sys.stderr)
  return protocol.stage2(roles, {name: name for name in roles}, rule=NAMED_RULE)


def measured_stage2(protocol, stage1):
  """The runs of stage 2 with the classes stage 1 measured; None while stage 1 is not finished."""
  unfinished = [run for run in stage1 if grid.status(run) != "finished"]
  if unfinished:
    print(f"stage 2 waits for stage 1: {len(unfinished)} of {len(stage1)} cross-entropy runs are "
          "not finished; run this command again once they are", file=sys.stderr)
    return None
  ce_runs = [runs_lib.load_run(run.workdir) for run in stage1]
  mean_recall, split = selection.mean_class_recall(ce_runs, _warn)
  roles = selection.pick_classes(mean_recall)
  class_names = ce_runs[0].field("class_names")
  print(f"important classes (cross-entropy's mean {'validation' if split == 'val' else 'test'} "
        "recall): " + ", ".join(
            f"{role} = {k}" + (f" ({class_names[k]})" if class_names else "")
            + f", recall {mean_recall[k]:.4f}" for role, k in roles.items()), file=sys.stderr)
  return protocol.stage2(
      roles, {role: class_names[k] for role, k in roles.items()} if class_names else None,
      rule=MEASURED_RULE, chosen_on=split, mean_recall=mean_recall)


def config_args(extra):
  """The `--config.FIELD=VALUE` arguments among those argparse did not take, checked."""
  for arg in extra:
    field, sep, _ = arg.removeprefix("--config.").partition("=")
    if not arg.startswith("--config.") or not sep:
      raise ValueError(f"unrecognized argument {arg!r}: config fields are given as "
                       "--config.FIELD=VALUE")
    if field in PROTOCOL_FIELDS:
      raise ValueError(f"{arg}: the protocol sets {field} itself (fields it sets: "
                       f"{', '.join(PROTOCOL_FIELDS)})")
  return tuple(extra)


def protocol_root(runs_dir, config):
  """RUNS_DIR/<dataset>, or an image folder's RUNS_DIR/<tree name>[-<tree id>].

  The tree id is added when RUNS_DIR/<tree name> holds the runs of another tree.
  """
  if config.dataset != "folder":
    return os.path.join(runs_dir, config.dataset)
  root = os.path.join(runs_dir, run_log.tree_name(config.folder))
  for workdir in run_log.find_runs(root):
    held = run_log.read_config(workdir)
    if (held.get("dataset"), held.get("folder")) != ("folder", config.folder):
      return f"{root}-{run_log.tree_id(config.folder)}"
  return root


def runs_not_launched_here(root, config_path, base_args) -> list[str]:
  """The runs under `root` whose launch.json is not this protocol's (absent, or another config
  or other base arguments, a head's trunk_from aside): a quickstart run trained in the root,
  another protocol's."""
  def launched_with(workdir):
    launch = grid.read_launch_file(workdir)
    return (launch.get("config"), [a for a in launch.get("base_args", [])
                                   if not a.startswith("--config.trunk_from=")])
  return [workdir for workdir in run_log.find_runs(root)
          if launched_with(workdir) != (config_path, list(base_args))]


def named_roles(text, class_names):
  """{class name: index} of `--classes NAME[,NAME|INDEX...]`."""
  try:
    indices = config_lib.resolve_classes(
        "loss.important_classes", [item.strip() for item in text.split(",")], class_names)
  except config_lib.ConfigError as e:
    raise ValueError(f"--classes {text}: {e}") from e
  return {class_names[k]: k for k in indices}


def load_base_config(args, extra):
  """(config path, base args, the loaded config) of --config and the --config.FIELD=VALUE given."""
  if args.dataset == "folder" and not args.config:
    raise ValueError("--dataset folder takes its base config from --config, e.g. --config "
                     "'configs/folder.py:path=/data/xray,size=64,channels=1'")
  path = args.config or f"configs/{args.dataset}.py"
  base_args = config_args(extra)
  config = cli.load_config(path, base_args)
  if config.dataset != args.dataset:
    raise ValueError(f"--config {path} is a config of dataset {config.dataset!r}, not of --dataset "
                     f"{args.dataset}: give --dataset {config.dataset} or a config of "
                     f"{args.dataset} (configs/{args.dataset}.py)")
  return path, base_args, config


def next_commands(protocol, ended):
  """The report's and the trade-off plots' commands for the protocol's root."""
  root = shlex.quote(protocol.root)
  reference = " --reference" if protocol.args.dataset in PAPER_DATASETS else ""
  when = "" if ended else ", once the runs have ended"
  return [f"report{when}: python -m camri.report {root}{reference}",
          f"trade-off plots{when}: python -m camri.plots tradeoff {root} "
          f"--out {shlex.quote(os.path.join(protocol.root, PLOTS_DIR))}"]


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m launch.protocol", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=DATASETS)
  parser.add_argument("--config", help="base config (default configs/<dataset>.py; required for "
                      "folder), e.g. 'configs/folder.py:path=/data/xray,size=64'; fields as "
                      "--config.FIELD=VALUE")
  parser.add_argument("--seeds", type=int, default=10, help="trials per setting (default 10)")
  parser.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="stage 2 hyperparameters")
  parser.add_argument("--classes", default="measured",
                      help="important classes: measured (default: worst1, worst2 and median of "
                      "cross-entropy's validation recall in stage 1), paper (the authors' released "
                      f"classes and CAMRI settings, {', '.join(PAPER_SETTINGS)} only), or class names "
                      "or indices, comma-separated, each its own role")
  parser.add_argument("--heads", action="store_true",
                      help="also train every method's head on the frozen trunk of each seed's "
                      "cross-entropy run (decoupled rows in the report), once stage 1 is finished")
  grid.add_launch_args(parser)
  args, extra = parser.parse_known_args(argv)
  if args.seeds < 1:
    parser.exit(2, f"error: --seeds must be >= 1, got {args.seeds}\n")
  if args.classes == "paper" and args.dataset not in PAPER_SETTINGS:
    parser.exit(2, f"error: --classes paper: the authors released settings for "
                f"{', '.join(PAPER_SETTINGS)} only, not {args.dataset}; use --classes measured "
                "or name the classes (a class named paper by its index)\n")
  log = sys.stderr
  try:
    config_path, base_args, config = load_base_config(args, extra)
    named = None
    if args.dataset == "folder" or args.classes not in ("measured", "paper"):
      from camri import data  # pylint: disable=g-import-not-at-top  # tfds; reads the tree.
      class_names = data.config_class_names(config)
      if args.classes not in ("measured", "paper"):
        named = named_roles(args.classes, class_names)
      elif args.classes == "measured" and len(class_names) < 4:
        raise ValueError(f"--classes measured: worst1, worst2 and median need at least 4 classes, "
                         f"{config.dataset} has {len(class_names)}; name the important ones with "
                         "--classes NAME,...")
    root = protocol_root(args.root, config)
    strays = runs_not_launched_here(root, config_path, base_args)
    if strays:
      print(f"warning: {root} holds {len(strays)} runs this protocol does not launch "
            f"({', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}); the report would "
            "pool them with its runs (and name them): move them out, or give another --root",
            file=log)
    protocol = Protocol(config_path, base_args, root, run_log.dataset_name(config.to_dict()), args)
    print(f"stage 1: cross-entropy x {args.seeds} seeds in {root}", file=log)
    stage1 = protocol.expand(stage1_sweep(args.seeds))
    if args.classes == "measured":
      if grid.launch(stage1, args):
        return 1
      measured = measured_stage2(protocol, stage1)
      if measured is None:
        return 0
      stage2, roles = measured
      print(f"stage 2: {len(stage2)} runs", file=log)
      failed = grid.launch(stage2, args)
    else:  # Stage 2 needs nothing from stage 1: one launch.
      stage2, roles = paper_stage2(protocol) if named is None else named_stage2(protocol, named)
      print(f"stage 2: {len(stage2)} runs, launched with stage 1", file=log)
      failed = grid.launch(stage1 + stage2, args)
    heads = heads_stage(protocol, stage1, roles) if args.heads and not failed else None
    if heads:
      print(f"heads: {len(heads)} runs on the trunks of stage 1's runs", file=log)
      failed = grid.launch(heads, args)
  except ValueError as e:  # ConfigError and FolderError are ValueErrors.
    parser.exit(2, f"error: {e}\n")
  if failed:
    return 1
  ended = (args.executor == "local" and not args.dry_run) or args.wait
  for line in next_commands(protocol, ended):
    print(line, file=log)
  return 0


if __name__ == "__main__":
  sys.exit(main())
