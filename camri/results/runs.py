"""Run directories -> records: the only code that reads a run's files, each once.

A run directory holds config.json, metrics.csv and predictions/ (`camri.run_log`).
`load_runs` reads the first two of every run under a root; a run's saved
predictions are read on first use and kept. `load_results` pools the runs of
a report: each run's numbers at the epoch policy (`selection`), one run per
setting and seed, with a warning for every run left out or pooled.
"""

import collections
import dataclasses
import math
import sys

from camri import run_log
from camri.results import selection

BASELINE = "cross_entropy"
# A decoupled run's method: its loss, then the loss of the run whose frozen trunk it trained
# new layers on (config.trunk_from): "camri (head on cross_entropy)".
HEAD_ON = " (head on "


def method_of(config: dict) -> str:
  """A run's method as the report names it: its loss, or a decoupled head's (`HEAD_ON`)."""
  name = run_log.get_field(config, "loss.name")
  source = config.get("trunk_source")
  return f"{name}{HEAD_ON}{source['loss']})" if source else name


def base_method(method: str) -> str:
  """The loss of a method name: "camri" of "camri (head on cross_entropy)"."""
  return method.split(HEAD_ON)[0]
NOT_SETTING = ("name", "important_classes")
# Config fields that may differ between runs of one table without a warning.
NOT_EXPERIMENT = ("seed", "tag", "loss", "data_dir", "workdir", "class_names")


def stderr_warning(message):
  print(f"warning: {message}", file=sys.stderr)


@dataclasses.dataclass(eq=False)
class Run:
  """One run directory's files: config and metrics as read, predictions on demand."""
  workdir: str
  config: dict
  metrics: list  # metrics.csv's rows (`run_log.read_metrics`).
  _predictions: dict = dataclasses.field(default_factory=dict, repr=False)

  def field(self, path, default=None):
    return run_log.get_field(self.config, path, default)

  def predictions(self, split):
    """The split's saved predictions (`run_log.read_predictions`), read once; None when absent."""
    if split not in self._predictions:
      self._predictions[split] = run_log.read_predictions(self.workdir, split)
    return self._predictions[split]


def load_run(workdir) -> Run:
  return Run(str(workdir), run_log.read_config(workdir), run_log.read_metrics(workdir))


def load_runs(root) -> list[Run]:
  """Every run under root (`run_log.find_runs`), in workdir order."""
  return [load_run(w) for w in run_log.find_runs(root)]


def hashable(value):
  return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def flatten(config, prefix=""):
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = hashable(value)
  return flat


def setting_of(loss):
  """A run's setting: its loss fields but name and important classes, ((field, value), ...) sorted."""
  return tuple(sorted((k, hashable(v)) for k, v in (loss or {}).items() if k not in NOT_SETTING))


def important_classes(run: Run) -> tuple:
  """The run's loss.important_classes as a tuple of ints (a bare index, a list or none)."""
  value = run.field("loss.important_classes")
  if value is None:
    return ()
  return tuple(int(k) for k in (value if isinstance(value, (list, tuple)) else (value,)))


@dataclasses.dataclass(frozen=True)
class SplitNumbers:
  """A run's numbers on one split at the epoch policy."""
  accuracy: float
  class_recall: tuple
  class_precision: tuple  # nan for a class never predicted.

  def recall(self, classes):
    return math.fsum(self.class_recall[k] for k in classes) / len(classes)

  def precision(self, classes):
    return math.fsum(self.class_precision[k] for k in classes) / len(classes)


def split_numbers(row, split, num_classes):
  return SplitNumbers(
      accuracy=row[f"{split}_accuracy"],
      class_recall=tuple(row[f"{split}_recall_{k}"] for k in range(num_classes)),
      class_precision=tuple(row.get(f"{split}_precision_{k}", math.nan) for k in range(num_classes)))


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One run's numbers at the chosen epoch."""
  workdir: str
  dataset: str
  method: str
  role: str | None  # None for cross-entropy: it serves every role.
  classes: tuple
  setting: tuple  # ((field, value), ...) sorted by field.
  seed: int
  test: SplitNumbers
  val: SplitNumbers | None  # None without a validation split.
  class_names: tuple
  folder: str | None = None  # An image-folder dataset's tree.
  run: Run | None = dataclasses.field(default=None, compare=False, repr=False)
  row: dict | None = dataclasses.field(default=None, compare=False, repr=False)  # At the epoch.
  at_last_epoch: bool = False  # Whether `row` is the last epoch's, that of the saved predictions.

  def on(self, split) -> SplitNumbers:
    return self.val if split == "val" else self.test

  @property
  def accuracy(self):
    return self.test.accuracy

  @property
  def class_recall(self):
    return self.test.class_recall

  @property
  def recall(self):
    """Test recall of its important classes (mean when several); nan for cross-entropy."""
    return self.test.recall(self.classes) if self.role is not None else float("nan")


def read_result(run: Run, policy, select_on="val"):
  """The run's `RunResult` at the epoch policy, or None when it has no such epoch.

  `best` picks the epoch on `select_on`, or on test for a run without a validation split.
  """
  for field in ("dataset", "num_epochs", "loss.name"):
    if run.field(field) is None:
      raise ValueError(f"{run.workdir}/{run_log.CONFIG_FILE} has no field {field}")
  has_val = any("val_accuracy" in r for r in run.metrics)
  num_epochs = run.field("num_epochs")
  rows = selection.select_rows(run.metrics, num_epochs, policy, select_on if has_val else "test")
  if rows is None:
    return None
  row = selection.mean_row(rows)
  num_classes = run.field("num_classes")
  if num_classes is None:
    num_classes = sum(1 for k in row if k.startswith("test_recall_") and k[12:].isdigit())
  method = method_of(run.config)
  classes = important_classes(run)
  role = None
  if method != BASELINE:
    if not classes:
      raise ValueError(f"{run.workdir}: loss.important_classes is empty for method {method!r}")
    role = run.field("tag") or "class" + "+".join(map(str, classes))
  dataset = run_log.dataset_name(run.config)
  return RunResult(workdir=run.workdir, dataset=dataset, method=method, role=role, classes=classes,
                   setting=setting_of(run.field("loss")), seed=run.field("seed"),
                   test=split_numbers(row, "test", num_classes),
                   val=split_numbers(row, "val", num_classes) if has_val else None,
                   class_names=tuple(run.field("class_names") or ()),
                   folder=run.field("folder") if dataset.startswith("folder:") else None,
                   run=run, row=row, at_last_epoch=[r["epoch"] for r in rows] == [num_epochs])


def drop_duplicate_seeds(results, warn):
  """Keeps the first run (in workdir order) of each setting and seed; warns about the others."""
  first, kept = {}, []
  for r in results:
    key = (r.dataset, r.method, r.role, r.classes, r.setting, r.seed)
    if key in first:
      warn(f"runs {first[key].workdir} and {r.workdir} are one setting of {r.method} on {r.dataset} "
           f"with one seed ({r.seed}); counting only {first[key].workdir}")
      continue
    first[key] = r
    kept.append(r)
  return kept


def tell_trees_apart(results):
  """`results` with image-folder trees of one folder name named `folder:<name>@<tree_id>`."""
  trees = collections.defaultdict(set)
  for r in results:
    if r.folder is not None:
      trees[r.dataset].add(r.folder)
  return [dataclasses.replace(r, dataset=f"{r.dataset}@{run_log.tree_id(r.folder)}")
          if r.folder is not None and len(trees[r.dataset]) > 1 else r for r in results]


def _warn_varying_fields(results, warn):
  experiment = collections.defaultdict(lambda: collections.defaultdict(set))
  for result in results:
    for key, value in flatten(result.run.config).items():
      if key.split(".")[0] not in NOT_EXPERIMENT:
        experiment[result.dataset][key].add(value)
  for dataset, fields in sorted(experiment.items()):
    varying = sorted(k for k, values in fields.items() if len(values) > 1)
    if varying:
      warn(f"runs of dataset {dataset} differ in {', '.join(varying)}; they are pooled")


def load_results(root, policy, warn=None, select_on="val", runs=None):
  """`RunResult`s of every run under root; runs without the policy's epoch are left out.

  `runs`: the runs under root when already loaded (`load_runs`).

  Raises:
    ValueError: no run under root has the policy's epoch: there is nothing to report.
  """
  warn = warn or stderr_warning
  results, left_out = [], []
  for run in load_runs(root) if runs is None else runs:
    result = read_result(run, policy, select_on)
    if result is None:
      left_out.append(run.workdir)
    else:
      results.append(result)
  described = selection.describe_epoch_policy(policy, select_on)
  if not results and not left_out:
    raise ValueError(f"no run directories (with {run_log.CONFIG_FILE}) under {root}")
  if not results:
    raise ValueError(f"none of the {len(left_out)} runs under {root} has a row for the {described}: "
                     "nothing to report (see --epoch)")
  if left_out:
    warn(f"{len(left_out)} runs have no row for the {described}, "
         "left out: " + ", ".join(left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
  results = tell_trees_apart(results)
  _warn_varying_fields(results, warn)
  return drop_duplicate_seeds(results, warn)
