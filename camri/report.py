r"""The paper's Table 1 for any grid of runs: selected on validation, reported on test.

    python -m camri.report RUNS_DIR [--epoch last|best|N|last:K] [--select-on val|test] \
        [--accuracy-tolerance DELTA] [--post-hoc-bias] [--format markdown|csv|latex] \
        [--out FILE] [--reference]

Reads every run directory under RUNS_DIR (config.json, metrics.csv and
predictions/, see `camri.run_log`) and groups the runs by dataset x role x
method x setting:

- method: config `loss.name`.
- setting: the loss hyperparameters, every `loss.*` field but `name` and
  `important_classes` (margin, scale, weights, ...). Runs of one setting differ
  only in seed; two with the same seed (a quickstart workdir inside a grid's
  root) count once, with a warning naming both. The table shows the fields that
  vary across the method's runs or differ from the cross-entropy runs' (and
  always margin and scale of the angular-margin losses).
- role: config `tag` (worst1, worst2, median from `launch.protocol`) or, with
  no tag, "class<k>" from the important class indices (`class3`, `class3+5`).
  Cross-entropy trains without an important class: its row for a role holds
  that role's classes' numbers in the cross-entropy runs.

Selection (--select-on val, the default). Per dataset x role x method, the
setting with the best mean recall of the important class on the validation
split among those whose mean validation accuracy is at least cross-entropy's
minus DELTA (--accuracy-tolerance, default 0: the paper's rule; 1e-9 of slack
for rounding); ties go to the higher mean accuracy, then to the first setting
in sorted order. The table reports the test split, which played no part in the
choice. `--select-on test` chooses on the test split as the paper did: the
numbers are then optimistic, and the caption says so. A dataset with runs
without a validation split (validation_fraction=0) is selected on test, with a
warning and a caption note. When no setting keeps accuracy the row shows the
setting of highest mean selection accuracy, marked "not kept" (kept 0/N).
With no cross-entropy run on a dataset there is no accuracy bound (a warning).

Columns (test split; mean ± sample std, ddof=1, over seeds):
  seeds            runs in the row (one per seed).
  kept             settings that keep accuracy / all settings of the method.
  recall           of the important class (the mean over the role's classes).
  precision        of the important class, over the runs that predict it at all.
  accuracy         overall.
  recall gain,     mean over the seeds shared with cross-entropy of the paired
  accuracy gain    difference (run - the cross-entropy run of the same seed),
                   [its 95% interval mean ± t(0.975, n-1) sd / sqrt(n),
                   clipped to [-1, 1], the values a difference of two rates
                   can take]; no interval for n < 2. † marks a recall
                   interval that holds 0: the gain may be seed noise.
The csv has every number: recall_gain_mean, recall_gain_ci_low, ...,
selected_on (val or test), pairs (n of the gains).

The baseline row `cross_entropy+bias`, per dataset x role: each cross-entropy
run's saved predictions with a bias b >= 0 added to the important class's
score (`camri.posthoc`: predicted c when s_c + b >= max_{k != c} s_k). Per
run, b is chosen on the selection split among 0 and the breakpoints
t_i = max_{k != c} s_ik - s_ic > 0: among the b whose accuracy is at least the
run's own at b = 0 minus DELTA, the highest recall of c; ties go to the higher
accuracy, then the smaller b. The row reports the test split at that b. A
class-sensitive loss shows something only where it beats this row: the same
trade-off is free for any trained classifier. `--post-hoc-bias` adds the row
for every method too (`camri+bias`, from its reported setting's runs). With
several important classes in a role the bias goes to the first. The bias rows
use the predictions saved at each run's last epoch, whatever --epoch says, and
their gains are over cross-entropy's last-epoch predictions (at b = 0).

Epoch policy (--epoch), the metrics.csv rows each run's numbers come from:
  last    the row with epoch == num_epochs (default; unfinished runs are left out),
  last:K  the mean of the last K rows (epochs num_epochs-K+1 .. num_epochs) of a
          finished run: recall moves by several points from epoch to epoch late
          in training, and the mean of K rows is steadier than any one,
  best    the row of the highest selection-split accuracy of a finished run
          (earliest on ties; with --select-on test, optimistic),
  N       the row with epoch == N (runs without it are left out).

--reference adds Table 1 of the paper (camri/reference/table1.csv) side by side
for the datasets it covers (cifar10, gtsrb, awa2), and says in one line which
datasets of the table it does not cover.

README.md, "Reading the report", explains how to read the table.
"""

import argparse
import collections
import csv
import dataclasses
import importlib.resources
import io
import math
import os
import sys

import numpy as np

from camri import posthoc
from camri import run_log
from camri import stats as stats_lib

BASELINE = "cross_entropy"
BIAS = "+bias"  # Suffix of a post-hoc bias row's method.
ROLE_ORDER = ("worst1", "worst2", "median")
METHOD_ORDER = ("cross_entropy", "wce", "rwwce", "arcface", "cosface", "normface", "camri")
# Always shown in a method's setting, besides the loss fields that vary across its runs.
METHOD_FIELDS = {"camri": ("margin", "scale"), "arcface": ("margin", "scale"),
                 "cosface": ("margin", "scale"), "normface": ("scale",)}
NOT_SETTING = ("name", "important_classes")
# Config fields that may differ between runs of one table without a warning.
NOT_EXPERIMENT = ("seed", "tag", "loss", "data_dir", "workdir", "class_names")
ACCURACY_TOLERANCE = 1e-9  # Slack for rounding, on top of --accuracy-tolerance.
FORMATS = ("markdown", "csv", "latex")
SPLITS = ("val", "test")
SPLIT_NAMES = {"val": "validation", "test": "test"}


def _stderr(message):
  print(f"warning: {message}", file=sys.stderr)


def _once(warn):
  seen = set()

  def once(message):
    if message not in seen:
      seen.add(message)
      warn(message)
  return once


def stats(values) -> stats_lib.Stats:
  return stats_lib.summarize(values)


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


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One run's test numbers for a role's classes: what a table row summarizes."""
  seed: int
  recall: float
  precision: float
  accuracy: float
  bias: float | None = None  # The chosen b of a bias row.


@dataclasses.dataclass(frozen=True)
class Row:
  dataset: str
  role: str
  classes: tuple
  class_names: tuple
  method: str
  setting: str
  settings_kept: int | None  # None where nothing is selected (cross-entropy).
  settings_total: int | None
  recall: stats_lib.Stats | None
  accuracy: stats_lib.Stats | None
  precision: stats_lib.Stats | None = None  # None where no run predicts the class.
  recall_gain: stats_lib.Interval | None = None  # Paired with cross-entropy by seed.
  accuracy_gain: stats_lib.Interval | None = None
  selected_on: str = "test"
  paper_recall: float | None = None
  paper_accuracy: float | None = None
  chosen: tuple | None = None  # The reported setting as in `RunResult.setting`.

  @property
  def kept(self):
    """False when no setting kept accuracy and the row shows the nearest one."""
    return self.settings_kept != 0

  @property
  def marked(self):
    """Whether the recall gain's interval includes 0."""
    return self.recall_gain is not None and self.recall_gain.contains(0.0)


# Epoch policy.

def parse_epoch_policy(text):
  """'last', 'best', a positive epoch number N, or 'last:K' for a positive K."""
  if text in ("last", "best"):
    return text
  if text.isdigit() and int(text) > 0:
    return int(text)
  head, _, k = text.partition(":")
  if head == "last" and k.isdigit() and int(k) > 0:
    return f"last:{int(k)}"
  raise ValueError(f"--epoch must be last, best, a positive epoch number or last:K, got {text!r}")


def _last_k(policy):
  """K of 'last:K', 1 of 'last', else None."""
  if policy == "last":
    return 1
  if isinstance(policy, str) and policy.startswith("last:"):
    return int(policy[5:])
  return None


def describe_epoch_policy(policy, split="test"):
  if policy == "last":
    return "last epoch (epoch == num_epochs; unfinished runs left out)"
  if _last_k(policy):
    return f"mean of the last {_last_k(policy)} epochs of each finished run"
  if policy == "best":
    if split == "val":
      return "epoch of best validation accuracy per finished run"
    return "epoch of best test accuracy per finished run (chosen on the test set: optimistic)"
  return f"epoch {policy}"


def select_rows(rows, num_epochs, policy, split="test"):
  """The metrics.csv rows the epoch policy takes, or None when the run lacks them.

  `best` takes the row of the highest `<split>_accuracy` of a finished run.
  """
  by_epoch = {row["epoch"]: row for row in rows}
  k = _last_k(policy)
  if k:
    epochs = range(num_epochs - k + 1, num_epochs + 1)
    if epochs.start < 1 or any(e not in by_epoch for e in epochs):
      return None
    return [by_epoch[e] for e in epochs]
  if policy == "best":
    if num_epochs not in by_epoch:
      return None
    ordered = [by_epoch[e] for e in sorted(by_epoch)]
    def accuracy(row):  # NaN (an empty cell) is never the best.
      value = row.get(f"{split}_accuracy", math.nan)
      return -math.inf if math.isnan(value) else value
    return [max(ordered, key=accuracy)]  # The earliest of ties.
  return [by_epoch[policy]] if policy in by_epoch else None


def mean_row(rows):
  """Column-wise means of metrics.csv rows, leaving out nan cells (an undefined precision)."""
  means = {}
  for key in rows[-1]:
    values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
    means[key] = math.fsum(values) / len(values) if values else math.nan
  means["epoch"] = rows[-1]["epoch"]
  return means


def epoch_row(rows, num_epochs, policy, split="test"):
  """The run's numbers at the epoch policy as one metrics.csv-like row, or None."""
  chosen = select_rows(rows, num_epochs, policy, split)
  return None if chosen is None else mean_row(chosen)


# Reading runs.

def hashable(value):
  return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def _as_tuple(value):
  if value is None:
    return ()
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _split_numbers(row, split, num_classes):
  return SplitNumbers(
      accuracy=row[f"{split}_accuracy"],
      class_recall=tuple(row[f"{split}_recall_{k}"] for k in range(num_classes)),
      class_precision=tuple(row.get(f"{split}_precision_{k}", math.nan) for k in range(num_classes)))


def read_result(workdir, policy, select_on="val"):
  """A run's `RunResult` at the epoch policy, or None when it has no such epoch.

  `best` picks the epoch on `select_on`, or on test for a run without a validation split.
  """
  config = run_log.read_config(workdir)
  for field in ("dataset", "num_epochs", "loss.name"):
    if run_log.get_field(config, field) is None:
      raise ValueError(f"{workdir}/{run_log.CONFIG_FILE} has no field {field}")
  num_epochs = run_log.get_field(config, "num_epochs")
  metrics = run_log.read_metrics(workdir)
  has_val = any("val_accuracy" in r for r in metrics)
  row = epoch_row(metrics, num_epochs, policy, select_on if has_val else "test")
  if row is None:
    return None
  num_classes = run_log.get_field(config, "num_classes")
  if num_classes is None:
    num_classes = sum(1 for k in row if k.startswith("test_recall_") and k[12:].isdigit())
  method = run_log.get_field(config, "loss.name")
  classes = tuple(int(k) for k in _as_tuple(run_log.get_field(config, "loss.important_classes")))
  role = None
  if method != BASELINE:
    if not classes:
      raise ValueError(f"{workdir}: loss.important_classes is empty for method {method!r}")
    role = run_log.get_field(config, "tag") or "class" + "+".join(map(str, classes))
  loss = run_log.get_field(config, "loss") or {}
  setting = tuple(sorted((k, hashable(v)) for k, v in loss.items() if k not in NOT_SETTING))
  dataset = run_log.dataset_name(config)
  return RunResult(workdir=workdir, dataset=dataset, method=method,
                   role=role, classes=classes, setting=setting, seed=run_log.get_field(config, "seed"),
                   test=_split_numbers(row, "test", num_classes),
                   val=_split_numbers(row, "val", num_classes) if has_val else None,
                   class_names=tuple(run_log.get_field(config, "class_names") or ()),
                   folder=run_log.get_field(config, "folder") if dataset.startswith("folder:") else None)


def _flatten(config, prefix=""):
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = hashable(value)
  return flat


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


def load_results(root, policy, warn=None, select_on="val"):
  """`RunResult`s of every run under root; runs without the policy's epoch are left out.

  Raises:
    ValueError: no run under root has the policy's epoch: there is nothing to report.
  """
  warn = warn or _stderr
  results, left_out = [], []
  for workdir in run_log.find_runs(root):
    result = read_result(workdir, policy, select_on)
    if result is None:
      left_out.append(workdir)
    else:
      results.append(result)
  described = describe_epoch_policy(policy, select_on)
  if not results and not left_out:
    raise ValueError(f"no run directories (with {run_log.CONFIG_FILE}) under {root}")
  if not results:
    raise ValueError(f"none of the {len(left_out)} runs under {root} has a row for the {described}: "
                     "nothing to report (see --epoch)")
  if left_out:
    warn(f"{len(left_out)} runs have no row for the {described}, "
         "left out: " + ", ".join(left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
  results = tell_trees_apart(results)
  experiment = collections.defaultdict(lambda: collections.defaultdict(set))
  for result in results:
    for key, value in _flatten(run_log.read_config(result.workdir)).items():
      if key.split(".")[0] not in NOT_EXPERIMENT:
        experiment[result.dataset][key].add(value)
  for dataset, fields in sorted(experiment.items()):
    varying = sorted(k for k, values in fields.items() if len(values) > 1)
    if varying:
      warn(f"runs of dataset {dataset} differ in {', '.join(varying)}; they are pooled")
  return drop_duplicate_seeds(results, warn)


# The post-hoc bias baseline.

def bias_outcome(run, classes, split, tolerance):
  """`run`'s test Outcome with the bias chosen on `split`'s saved predictions; None without them.

  Returns (outcome, the split b was chosen on: test when `split` is val and
  the run saved no validation predictions).
  """
  test = run_log.read_predictions(run.workdir, "test")
  chooser = run_log.read_predictions(run.workdir, "val") if split == "val" else test
  if test is None:
    return None, None
  if chooser is None:
    chooser, split = test, "test"
  bias = posthoc.choose_bias(chooser["scores"], chooser["labels"], classes[0], tolerance)
  accuracy, recall, precision = posthoc.rates_with_bias(test["scores"], test["labels"], classes, bias)
  return Outcome(run.seed, recall, precision, accuracy, bias), split


def saved_outcome(run, classes):
  """`run`'s test Outcome from its saved last-epoch predictions at b = 0; None without them."""
  test = run_log.read_predictions(run.workdir, "test")
  if test is None:
    return None
  accuracy, recall, precision = posthoc.rates_with_bias(test["scores"], test["labels"], classes, 0.0)
  return Outcome(run.seed, recall, precision, accuracy, 0.0)


# The table.

def outcome(run, classes):
  return Outcome(run.seed, run.test.recall(classes), run.test.precision(classes), run.test.accuracy)


def paired_gain(outcomes, baseline, field) -> stats_lib.Interval | None:
  """Mean and t-interval of `field`'s difference from `baseline` (seed -> Outcome), by seed."""
  diffs = [getattr(o, field) - getattr(baseline[o.seed], field)
           for o in sorted(outcomes, key=lambda o: o.seed) if o.seed in baseline]
  return stats_lib.t_interval(diffs, bounds=stats_lib.RATE_DIFFERENCE) if diffs else None


@dataclasses.dataclass(frozen=True)
class SettingSummary:
  setting: tuple
  runs: tuple
  recall: stats_lib.Stats  # Of the important classes on the selection split.
  accuracy: stats_lib.Stats  # On the selection split.


def summarize_setting(setting, runs, split):
  return SettingSummary(setting, tuple(runs), stats(r.on(split).recall(r.classes) for r in runs),
                        stats(r.on(split).accuracy for r in runs))


def choose_setting(summaries, bound):
  """(the reported `SettingSummary`, how many keep accuracy).

  The best mean recall among those of mean accuracy >= bound (minus the
  rounding slack); ties: higher accuracy, then the first. When none keeps
  accuracy, the one of highest mean accuracy.
  """
  kept = [s for s in summaries if s.accuracy.mean >= bound - ACCURACY_TOLERANCE]
  if kept:
    return max(kept, key=lambda s: (s.recall.mean, s.accuracy.mean)), len(kept)
  return max(summaries, key=lambda s: (s.accuracy.mean, s.recall.mean)), 0


@dataclasses.dataclass(frozen=True)
class _Block:
  """What the rows of one dataset x role share."""
  dataset: str
  role: str
  classes: tuple
  class_names: tuple
  selected_on: str
  baseline: dict  # seed -> cross-entropy's Outcome at the epoch policy.
  saved_baseline: dict  # seed -> cross-entropy's Outcome from its last-epoch predictions.
  reference: dict

  def row(self, method, setting, outcomes, kept=None, total=None, chosen=None, selected_on=None,
          baseline=None):
    precisions = [o.precision for o in outcomes if not math.isnan(o.precision)]
    baseline = self.baseline if baseline is None else baseline
    gains = {} if method == BASELINE else {
        f"{field}_gain": paired_gain(outcomes, baseline, field) for field in ("recall", "accuracy")}
    paper = self.reference.get((self.dataset, self.role, method), (None, None))
    return Row(self.dataset, self.role, self.classes, self.class_names, method, setting, kept, total,
               recall=stats(o.recall for o in outcomes), accuracy=stats(o.accuracy for o in outcomes),
               precision=stats(precisions) if precisions else None, **gains,
               selected_on=selected_on or self.selected_on, paper_recall=paper[0],
               paper_accuracy=paper[1], chosen=chosen)

  def bias_row(self, method, runs, tolerance, warn, kept=None, total=None):
    """The `<method>+bias` row from the runs' saved predictions, or None when none has any."""
    found = [bias_outcome(r, self.classes, self.selected_on, tolerance) for r in runs]
    outcomes = [o for o, _ in found if o is not None]
    if len(outcomes) < len(runs):
      missing = [r.workdir for r, (o, _) in zip(runs, found) if o is None]
      warn(f"{len(missing)} of {len(runs)} {method} runs of {self.dataset} have no saved test "
           f"predictions: {method}{BIAS} rows " + ("leave them out" if outcomes else "are not shown")
           + f" ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    if not outcomes:
      return None
    on = {split for o, split in found if o is not None}
    selected_on = on.pop() if len(on) == 1 else "val+test"
    biases = stats(o.bias for o in outcomes)
    setting = f"b on {selected_on}: {format_value(biases.mean)}" + (
        "" if math.isnan(biases.std) else f" ± {format_value(biases.std)}")
    # Gains over cross-entropy at the predictions' epoch, whatever --epoch says.
    return self.row(method + BIAS, setting, outcomes, kept, total, selected_on=selected_on,
                    baseline=self.saved_baseline)


def check_recall_defined(runs, classes, splits, dataset, role):
  """Raises when a run's recall of `classes` is nan on one of `splits`.

  A nan recall means the split holds no example of the class: nothing can be
  selected on it or compared, and a table of nan gains would look like a result.
  """
  for r in runs:
    for split in splits:
      missing = [k for k in classes if math.isnan(r.on(split).class_recall[k])]
      if missing:
        k, name = missing[0], SPLIT_NAMES[split]
        label = f"{k} ({r.class_names[k]})" if k < len(r.class_names) else str(k)
        raise ValueError(f"{dataset}, role {role}: class {label} has no {name} example in "
                         f"{r.workdir} ({split}_recall_{k} is nan), so no method can be selected "
                         f"or compared on it; give the class {name} examples")


def selection_split(dataset, runs, select_on, warn):
  """`select_on`, or test when some of the dataset's runs have no validation split."""
  without = [r for r in runs if r.val is None]
  if select_on == "val" and without:
    warn(f"{len(without)} of {len(runs)} runs of dataset {dataset} have no validation split "
         "(validation_fraction=0): selecting on the test split, which is optimistic")
    return "test"
  return select_on


def _shown_fields(runs, methods):
  """Per method, the setting fields its label shows."""
  ce_values = collections.defaultdict(set)
  for r in runs:
    if r.method == BASELINE:
      for k, v in r.setting:
        ce_values[k].add(v)
  shown = {}
  for method in methods:
    settings = {r.setting for r in runs if r.method == method}
    varying = {k for s in settings for k, v in s if any(dict(t).get(k) != v for t in settings)}
    not_ce = {k for s in settings for k, v in s if ce_values.get(k) != {v}}
    shown[method] = varying | not_ce | set(METHOD_FIELDS.get(method, ()))
  return shown


def _order(values, preferred):
  return sorted(values, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), v))


def _role_classes(results, dataset):
  mapping = {}
  for r in results:
    if r.dataset == dataset and r.role is not None:
      if mapping.setdefault(r.role, r.classes) != r.classes:
        raise ValueError(f"role {r.role!r} of dataset {dataset!r} names classes "
                         f"{mapping[r.role]} and {r.classes} (in {r.workdir})")
  return mapping


def _dataset_rows(dataset, runs, reference, select_on, tolerance, post_hoc_bias, warn):
  split = selection_split(dataset, runs, select_on, warn)
  ce = [r for r in runs if r.method == BASELINE]
  if not ce:
    warn(f"no {BASELINE} runs for dataset {dataset}: settings are not bound by accuracy")
  bound = stats(r.on(split).accuracy for r in ce).mean - tolerance if ce else -math.inf
  methods = _order({r.method for r in runs} - {BASELINE}, METHOD_ORDER)
  shown = _shown_fields(runs, methods)
  names = runs[0].class_names
  role_classes = _role_classes(runs, dataset)
  rows = []
  if not role_classes and ce:
    rows.append(Row(dataset, "-", (), names, BASELINE, "-", None, None, None,
                    stats(r.accuracy for r in ce), selected_on=split))
  for role in _order(role_classes, ROLE_ORDER):
    classes = role_classes[role]
    check_recall_defined(ce + [r for r in runs if r.role == role], classes,
                         dict.fromkeys((split, "test")), dataset, role)
    baseline = {r.seed: outcome(r, classes) for r in ce}
    saved = {r.seed: o for r in ce if (o := saved_outcome(r, classes)) is not None}
    block = _Block(dataset, role, classes, tuple(names[k] for k in classes if k < len(names)),
                   split, baseline, saved, reference)
    if ce:
      rows.append(block.row(BASELINE, "-", list(baseline.values())))
      rows.append(block.bias_row(BASELINE, ce, tolerance, warn))
    for method in methods:
      groups = collections.defaultdict(list)
      for r in runs:
        if r.role == role and r.method == method:
          groups[r.setting].append(r)
      if not groups:
        continue
      summaries = [summarize_setting(s, group, split)
                   for s, group in sorted(groups.items(), key=lambda kv: repr(kv[0]))]
      best, kept = choose_setting(summaries, bound)
      label = ", ".join(f"{k}={format_value(v)}" for k, v in best.setting if k in shown[method]) or "-"
      rows.append(block.row(method, label, [outcome(r, classes) for r in best.runs], kept,
                            len(summaries), chosen=best.setting))
      if post_hoc_bias:
        rows.append(block.bias_row(method, best.runs, tolerance, warn, kept, len(summaries)))
  return [r for r in rows if r is not None]


def build_table(results, reference=None, warn=None, *, select_on="val", tolerance=0.0,
                post_hoc_bias=False):
  """The table's `Row`s: per dataset and role, cross-entropy, its bias row, then each method.

  Args:
    results: `RunResult`s (`load_results`).
    reference: the paper's numbers (`load_reference`), or None.
    warn: called with each warning line.
    select_on: "val" or "test", the split settings are chosen on.
    tolerance: DELTA of --accuracy-tolerance.
    post_hoc_bias: add a `<method>+bias` row after every method.
  """
  if select_on not in SPLITS:
    raise ValueError(f"select_on must be one of {SPLITS}, got {select_on!r}")
  warn = _once(warn or _stderr)  # The bias rows of every role would repeat a warning.
  rows = []
  for dataset in sorted({r.dataset for r in results}):
    runs = [r for r in results if r.dataset == dataset]
    rows += _dataset_rows(dataset, runs, reference or {}, select_on, tolerance, post_hoc_bias, warn)
  return rows


def load_reference():
  """Table 1 of the paper: {(dataset, role, method): (recall, accuracy)}, None where empty."""
  text = importlib.resources.files("camri").joinpath("reference/table1.csv").read_text()
  lines = [line for line in text.splitlines() if line and not line.startswith("#")]
  table = {}
  for r in csv.DictReader(lines):
    value = lambda key: float(r[key]) if r[key] else None  # pylint: disable=cell-var-from-loop
    table[(r["dataset"], r["role"], r["method"])] = (value("recall"), value("accuracy"))
  return table


# Output.

def format_value(value):
  if isinstance(value, tuple) and len(value) == 1:
    value = value[0]
  if isinstance(value, float):
    return format(value, ".5g")
  if isinstance(value, tuple):
    return "(" + ", ".join(format_value(v) for v in value) + ")"
  return str(value)


def _class_label(row):
  if not row.classes:
    return "-"
  label = "+".join(map(str, row.classes))
  return f"{label} ({'+'.join(row.class_names)})" if row.class_names else label


def _mean_std(s, pm):
  return f"{s.mean:.4f}" if math.isnan(s.std) else f"{s.mean:.4f}{pm}{s.std:.4f}"


def _gain(interval):
  if math.isnan(interval.low):
    return f"{interval.mean:+.4f}"
  return f"{interval.mean:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]"


def _cells(row, with_reference, pm, dash, dagger, escape=str, number=str):
  """The row's cells: text cells through `escape`, numbers through `number`."""
  setting = row.setting if row.kept else f"{row.setting} (not kept)"
  cells = [escape(c) for c in (row.dataset, row.role, _class_label(row), row.method, setting)]
  kept = dash if row.settings_total is None else f"{row.settings_kept}/{row.settings_total}"
  cells += [str(row.accuracy.n if row.accuracy else 0), kept]
  cells += [number(_mean_std(s, pm)) if s else dash for s in (row.recall, row.precision, row.accuracy)]
  cells += [number(_gain(row.recall_gain) + (dagger if row.marked else "")) if row.recall_gain else dash,
            number(_gain(row.accuracy_gain)) if row.accuracy_gain else dash]
  if with_reference:
    cells += [dash if v is None else number(f"{v:.4f}") for v in (row.paper_recall, row.paper_accuracy)]
  return cells


HEADER = ["dataset", "role", "class", "method", "setting", "seeds", "kept", "recall", "precision",
          "accuracy", "recall gain", "accuracy gain"]
REFERENCE_HEADER = ["paper recall", "paper accuracy"]


def how_roles_were_chosen(root, results):
  """Caption sentences from the roles files (`run_log.ROLES_FILE`) of `launch.protocol` under root.

  A roles file speaks for the runs under its directory.
  """
  sentences = []
  for directory, saved in sorted(run_log.find_roles(root).items()):
    inside = os.path.join(os.path.abspath(directory), "")
    datasets = sorted({r.dataset for r in results if os.path.abspath(r.workdir).startswith(inside)})
    # Files of the protocol from before "chosen_on" measured on test.
    chosen_on = saved.get("chosen_on", "test" if saved.get("mean_recall") else None)
    for dataset in datasets:
      if chosen_on is None:
        sentences.append(f"Roles of {dataset}: {saved.get('rule')}.")
      else:
        sentences.append(
            f"Roles of {dataset}: worst1, worst2 and median of cross-entropy's mean "
            f"{SPLIT_NAMES[chosen_on]} recall per class"
            + (": chosen on the test split, optimistic for every gain on them." if chosen_on == "test"
               else ", test recall playing no part."))
  return tuple(sentences)


def caption(rows, policy, select_on, tolerance=0.0, uncovered=(), roles=()):
  """The table's caption: what the numbers are and how the settings (and roles) were chosen."""
  split = SPLIT_NAMES[select_on]
  minus = f" minus {tolerance:g}" if tolerance else ""
  parts = [f"Test recall and precision of the important class and test accuracy, mean ± sample "
           f"std (ddof=1) over seeds, at the {describe_epoch_policy(policy, select_on)}.",
           f"Per method, the setting with the best mean recall among those whose mean accuracy is "
           f"at least cross-entropy's{minus}, both on the {split} split (kept: settings that keep "
           "accuracy / all; not kept: none does, the one of highest accuracy is shown);"]
  if select_on == "val":
    parts.append("selected on the validation split, reported on the test split.")
  else:
    parts.append("selected on the test split, as the paper did: optimistic, the table reports "
                 "the numbers it chose on.")
  fallback = sorted({r.dataset for r in rows
                     if r.selected_on != select_on and not r.method.endswith(BIAS)})
  if fallback:
    parts.append(f"Dataset {', '.join(fallback)} has no validation split (validation_fraction=0): "
                 "selected on the test split, optimistic.")
  parts.append("Gains: mean paired difference from the cross-entropy run of the same seed, over "
               "the seeds both have, [95% t-interval, clipped to [-1, 1]]; † the recall interval "
               "includes 0.")
  if any(r.method.endswith(BIAS) for r in rows):
    parts.append(f"+bias: the run's last-epoch predictions with a bias b >= 0 on the important "
                 f"class's score, per run the b of best {split} recall among 0 and the breakpoints "
                 f"whose {split} accuracy is at least the run's own at b = 0{minus}; its gains are "
                 "over cross-entropy's last-epoch predictions.")
  parts += roles
  if uncovered:
    parts.append(f"The paper's Table 1 does not cover {', '.join(uncovered)}.")
  return " ".join(parts)


def to_markdown(rows, policy, with_reference=False, **caption_args):
  header = HEADER + (REFERENCE_HEADER if with_reference else [])
  lines = [caption(rows, policy, **caption_args), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cells(r, with_reference, " ± ", "-", "†")) + " |" for r in rows]
  return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def _latex_escape(text):
  escaped = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
  return escaped.replace("±", r"$\pm$").replace("†", r"$^\dagger$")


def to_latex(rows, policy, with_reference=False, **caption_args):
  header = HEADER + (REFERENCE_HEADER if with_reference else [])
  text = _latex_escape(caption(rows, policy, **caption_args))
  lines = [r"\begin{table}", r"\centering", r"\caption{" + text + "}",
           r"\begin{tabular}{" + "l" * 5 + "r" * (len(header) - 5) + "}", r"\hline",
           " & ".join(header) + r" \\", r"\hline"]
  for r in rows:
    cells = _cells(r, with_reference, r" \pm ", "--", r"^\dagger", escape=_latex_escape,
                   number=lambda x: f"${x}$")
    lines.append(" & ".join(cells) + r" \\")
  lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
  return "\n".join(lines) + "\n"


CSV_HEADER = ["epoch", "dataset", "role", "classes", "class_names", "method", "setting", "seeds",
              "settings_kept", "settings_total", "recall_mean", "recall_std", "accuracy_mean",
              "accuracy_std", "selected_on", "precision_mean", "precision_std", "pairs",
              "recall_gain_mean", "recall_gain_ci_low", "recall_gain_ci_high", "accuracy_gain_mean",
              "accuracy_gain_ci_low", "accuracy_gain_ci_high"]


def to_csv(rows, policy, with_reference=False, **unused_caption_args):
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(CSV_HEADER + (["paper_recall", "paper_accuracy"] if with_reference else []))
  number = lambda x: "" if x is None or math.isnan(x) else repr(round(x, 12))
  for r in rows:
    line = [policy, r.dataset, r.role, "+".join(map(str, r.classes)), "+".join(r.class_names),
            r.method, r.setting, r.accuracy.n if r.accuracy else 0,
            "" if r.settings_kept is None else r.settings_kept,
            "" if r.settings_total is None else r.settings_total]
    for s in (r.recall, r.accuracy):
      line += [number(s.mean), number(s.std)] if s else ["", ""]
    line += [r.selected_on]
    line += [number(r.precision.mean), number(r.precision.std)] if r.precision else ["", ""]
    line += [r.recall_gain.n if r.recall_gain else ""]
    for g in (r.recall_gain, r.accuracy_gain):
      line += [number(g.mean), number(g.low), number(g.high)] if g else ["", "", ""]
    if with_reference:
      line += [number(r.paper_recall), number(r.paper_accuracy)]
    writer.writerow(line)
  return out.getvalue()


def report(root, policy="last", fmt="markdown", with_reference=False, warn=None, *, select_on="val",
           tolerance=0.0, post_hoc_bias=False):
  """The table of the runs under root as text in `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  warn = warn or _stderr
  results = load_results(root, policy, warn=warn, select_on=select_on)
  reference = load_reference() if with_reference else None
  rows = build_table(results, reference, warn=warn, select_on=select_on, tolerance=tolerance,
                     post_hoc_bias=post_hoc_bias)
  uncovered = ()
  if with_reference:
    covered = {dataset for dataset, _, _ in reference}
    uncovered = sorted({r.dataset for r in rows} - covered)
    with_reference = len(uncovered) < len({r.dataset for r in rows})
    if uncovered and fmt == "csv":
      warn(f"the paper's Table 1 does not cover {', '.join(uncovered)}")
  writer = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex}[fmt]
  return writer(rows, policy, with_reference, select_on=select_on, tolerance=tolerance,
                uncovered=tuple(uncovered), roles=how_roles_were_chosen(root, results))


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m camri.report", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs_dir", help="directory holding run directories (searched recursively)")
  parser.add_argument("--epoch", default="last", help="last (default), best, an epoch number or last:K")
  parser.add_argument("--select-on", choices=SPLITS, default="val",
                      help="the split settings (and --epoch best) are chosen on (default val)")
  parser.add_argument("--accuracy-tolerance", type=float, default=0.0, metavar="DELTA",
                      help="keep a setting whose mean accuracy is >= cross-entropy's - DELTA (default 0)")
  parser.add_argument("--post-hoc-bias", action="store_true",
                      help="add a <method>+bias row for every method, not only cross-entropy")
  parser.add_argument("--format", choices=FORMATS, default="markdown")
  parser.add_argument("--out", help="write the table to this file instead of stdout")
  parser.add_argument("--reference", action="store_true", help="add the paper's Table 1 numbers")
  args = parser.parse_args(argv)
  try:
    if args.accuracy_tolerance < 0:
      raise ValueError(f"--accuracy-tolerance must be >= 0, got {args.accuracy_tolerance}")
    text = report(args.runs_dir, parse_epoch_policy(args.epoch), args.format, args.reference,
                  select_on=args.select_on, tolerance=args.accuracy_tolerance,
                  post_hoc_bias=args.post_hoc_bias)
  except ValueError as e:
    parser.exit(2, f"error: {e}\n")
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
