"""The table's rows: per dataset and role, cross-entropy, its bias row, then each method.

Each row summarizes one run per seed (mean and sample std) and pairs it by seed
(`paired_gain`) with cross-entropy and, but for the two baselines' own rows,
with `cross_entropy+bias`. What is selected (epoch, split, setting,
bias) comes from `selection`; how the rows read, from `formats`.
"""

import collections
import csv
import dataclasses
import importlib.resources
import math

import numpy as np

from camri import posthoc
from camri import stats as stats_lib
from camri.results import runs as runs_lib
from camri.results import selection

BASELINE = runs_lib.BASELINE
BIAS = "+bias"  # Suffix of a post-hoc bias row's method.
ROLE_ORDER = ("worst1", "worst2", "median")
METHOD_ORDER = ("cross_entropy", "wce", "rwwce", "arcface", "cosface", "normface", "camri")
# Always shown in a method's setting, besides the loss fields that vary across its runs.
METHOD_FIELDS = {"camri": ("margin", "scale"), "arcface": ("margin", "scale"),
                 "cosface": ("margin", "scale"), "normface": ("scale",)}


def once(warn):
  seen = set()

  def warn_once(message):
    if message not in seen:
      seen.add(message)
      warn(message)
  return warn_once


def stats(values) -> stats_lib.Stats:
  return stats_lib.summarize(values)


def format_value(value):
  if isinstance(value, tuple) and len(value) == 1:
    value = value[0]
  if isinstance(value, float):
    return format(value, ".5g")
  if isinstance(value, tuple):
    return "(" + ", ".join(format_value(v) for v in value) + ")"
  return str(value)


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One run's test numbers for a role's classes: what a table row summarizes."""
  seed: int
  recall: float
  precision: float
  accuracy: float
  bias: float | None = None  # The chosen b of a bias row.
  # (ids, labels, predicted classes) of the test examples in id order, where saved for these numbers.
  examples: tuple | None = dataclasses.field(default=None, compare=False, repr=False)


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
  # Paired by seed with cross_entropy+bias: the free trade-off a class-sensitive method must beat.
  recall_gain_over_bias: stats_lib.Interval | None = None
  accuracy_gain_over_bias: stats_lib.Interval | None = None
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
    return holds_zero(self.recall_gain)

  @property
  def marked_over_bias(self):
    """Whether the interval of the recall gain over cross_entropy+bias includes 0."""
    return holds_zero(self.recall_gain_over_bias)


def holds_zero(gain):
  return gain is not None and gain.contains(0.0)


def _examples(test, predicted):
  order = np.argsort(test["ids"], kind="stable")
  return test["ids"][order], test["labels"][order], predicted[order]


def outcome(run, classes):
  """`run`'s test Outcome at the epoch policy, with its examples when its predictions are of that epoch."""
  test = run.run.predictions("test") if run.at_last_epoch else None
  examples = None if test is None else _examples(test, np.argmax(test["scores"], axis=1))
  return Outcome(run.seed, run.test.recall(classes), run.test.precision(classes), run.test.accuracy,
                 examples=examples)


def predictions_outcome(run, classes, bias=0.0):
  """`run`'s test Outcome from its saved last-epoch predictions with `bias`; None without them."""
  test = run.run.predictions("test")
  if test is None:
    return None
  accuracy, recall, precision = posthoc.rates_with_bias(test["scores"], test["labels"], classes, bias)
  predicted = posthoc.predict_with_bias(test["scores"], classes[0], bias)
  return Outcome(run.seed, recall, precision, accuracy, bias, examples=_examples(test, predicted))


def _hits(pairs, field, classes):
  """`stats.test_set_variance`'s (hits_a, hits_b, totals) of the pairs' examples; None without them."""
  examples = [e for pair in pairs for e in (o.examples for o in pair)]
  if any(e is None for e in examples) or any(
      not (np.array_equal(e[0], examples[0][0]) and np.array_equal(e[1], examples[0][1])) for e in examples):
    return None  # A run without saved predictions of these numbers, or another test set.
  labels = examples[0][1]
  groups = [labels == k for k in classes] if field == "recall" else [np.ones_like(labels, bool)]
  hits = lambda predicted: np.stack([(predicted == labels) & g for g in groups])
  return (np.stack([hits(a.examples[2]) for a, _ in pairs]),
          np.stack([hits(b.examples[2]) for _, b in pairs]), np.stack(groups))


def paired_gain(outcomes, baseline, field, classes) -> stats_lib.Interval | None:
  """Mean and interval of `field`'s difference from `baseline` (seed -> Outcome), by seed.

  The interval holds the test set's variance where every run of a pair has its
  test examples (`stats.two_source_interval`); else it is the t-interval over seeds.
  """
  pairs = [(o, baseline[o.seed]) for o in sorted(outcomes, key=lambda o: o.seed) if o.seed in baseline]
  if not pairs:
    return None
  diffs = [getattr(a, field) - getattr(b, field) for a, b in pairs]
  hits = _hits(pairs, field, classes) if len(pairs) > 1 else None
  if hits is None:
    return stats_lib.t_interval(diffs, bounds=stats_lib.RATE_DIFFERENCE)
  return stats_lib.two_source_interval(diffs, stats_lib.test_set_variance(*hits),
                                       bounds=stats_lib.RATE_DIFFERENCE)


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
  bias_baseline: dict  # seed -> cross_entropy+bias's Outcome (last-epoch predictions, its b).
  reference: dict

  def row(self, method, setting, outcomes, kept=None, total=None, chosen=None, selected_on=None,
          baseline=None):
    precisions = [o.precision for o in outcomes if not math.isnan(o.precision)]
    baselines = {}
    if method != BASELINE:
      baselines["gain"] = self.baseline if baseline is None else baseline
    if method not in (BASELINE, BASELINE + BIAS):
      baselines["gain_over_bias"] = self.bias_baseline
    gains = {f"{field}_{name}": paired_gain(outcomes, against, field, self.classes)
             for name, against in baselines.items() for field in ("recall", "accuracy")}
    paper = self.reference.get((self.dataset, self.role, method), (None, None))
    return Row(self.dataset, self.role, self.classes, self.class_names, method, setting, kept, total,
               recall=stats(o.recall for o in outcomes), accuracy=stats(o.accuracy for o in outcomes),
               precision=stats(precisions) if precisions else None, **gains,
               selected_on=selected_on or self.selected_on, paper_recall=paper[0],
               paper_accuracy=paper[1], chosen=chosen)

  def bias_row(self, method, runs, biased, warn, kept=None, total=None):
    """The `<method>+bias` row of the runs' `biased_outcomes`, or None when no run saved predictions."""
    outcomes = [o for o, _ in biased if o is not None]
    if len(outcomes) < len(runs):
      missing = [r.workdir for r, (o, _) in zip(runs, biased) if o is None]
      warn(f"{len(missing)} of {len(runs)} {method} runs of {self.dataset} have no saved test "
           f"predictions: {method}{BIAS} rows " + ("leave them out" if outcomes else "are not shown")
           + f" ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    if not outcomes:
      return None
    on = {split for o, split in biased if o is not None}
    selected_on = on.pop() if len(on) == 1 else "val+test"
    biases = stats(o.bias for o in outcomes)
    setting = f"b on {selected_on}: {format_value(biases.mean)}" + (
        "" if math.isnan(biases.std) else f" ± {format_value(biases.std)}")
    # Gains over cross-entropy at the predictions' epoch, whatever --epoch says.
    return self.row(method + BIAS, setting, outcomes, kept, total, selected_on=selected_on,
                    baseline=self.saved_baseline)


def biased_outcomes(runs, classes, split, tolerance):
  """Per run, (its test `Outcome` at the bias chosen on `split`, the split b was chosen on).

  (None, None) for a run without saved test predictions (`selection.run_bias`).
  """
  found = [selection.run_bias(r.run, classes[0], split, tolerance) for r in runs]
  return [(predictions_outcome(r, classes, b), on) if b is not None else (None, None)
          for r, (b, on) in zip(runs, found)]


def check_recall_defined(runs, classes, splits, dataset, role):
  """Raises when a run's recall of `classes` is nan on one of `splits`.

  A nan recall means the split holds no example of the class: nothing can be
  selected on it or compared, and a table of nan gains would look like a result.
  """
  for r in runs:
    for split in splits:
      missing = [k for k in classes if math.isnan(r.on(split).class_recall[k])]
      if missing:
        k, name = missing[0], selection.SPLIT_NAMES[split]
        label = f"{k} ({r.class_names[k]})" if k < len(r.class_names) else str(k)
        raise ValueError(f"{dataset}, role {role}: class {label} has no {name} example in "
                         f"{r.workdir} ({split}_recall_{k} is nan), so no method can be selected "
                         f"or compared on it; give the class {name} examples")


def varying_fields(settings):
  """The fields whose value differs between `settings` ((field, value), ...)."""
  return {k for s in settings for k, v in s if any(dict(t).get(k) != v for t in settings)}


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
    not_ce = {k for s in settings for k, v in s if ce_values.get(k) != {v}}
    shown[method] = varying_fields(settings) | not_ce | set(METHOD_FIELDS.get(method, ()))
  return shown


def _order(values, preferred):
  """`values` in `preferred`'s order, then by name; a decoupled head after its loss's method."""
  def key(value):
    base = runs_lib.base_method(value)
    return (preferred.index(base) if base in preferred else len(preferred), base, value)
  return sorted(values, key=key)


def _role_classes(results, dataset):
  mapping = {}
  for r in results:
    if r.dataset == dataset and r.role is not None:
      if mapping.setdefault(r.role, r.classes) != r.classes:
        raise ValueError(f"role {r.role!r} of dataset {dataset!r} names classes "
                         f"{mapping[r.role]} and {r.classes} (in {r.workdir})")
  return mapping


def by_setting(runs, *, role, method=None):
  """{setting: [runs]} of a role's runs (of one method, when given), in sorted setting order."""
  groups = collections.defaultdict(list)
  for r in runs:
    if r.role == role and method in (None, r.method):
      groups[(r.method, r.setting) if method is None else r.setting].append(r)
  return dict(sorted(groups.items(), key=lambda kv: repr(kv[0])))


def _dataset_rows(dataset, runs, reference, select_on, tolerance, post_hoc_bias, warn):
  split = selection.selection_split(dataset, runs, select_on, warn)
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
    saved = {r.seed: o for r in ce if (o := predictions_outcome(r, classes)) is not None}
    ce_biased = biased_outcomes(ce, classes, split, tolerance)
    block = _Block(dataset, role, classes, tuple(names[k] for k in classes if k < len(names)),
                   split, baseline, saved, {o.seed: o for o, _ in ce_biased if o is not None},
                   reference)
    if ce:
      rows.append(block.row(BASELINE, "-", list(baseline.values())))
      rows.append(block.bias_row(BASELINE, ce, ce_biased, warn))
    for method in methods:
      groups = by_setting(runs, role=role, method=method)
      if not groups:
        continue
      summaries = [selection.summarize_setting(s, group, split) for s, group in groups.items()]
      best, kept = selection.choose_setting(summaries, bound)
      label = ", ".join(f"{k}={format_value(v)}" for k, v in best.setting if k in shown[method]) or "-"
      rows.append(block.row(method, label, [outcome(r, classes) for r in best.runs], kept,
                            len(summaries), chosen=best.setting))
      if post_hoc_bias:
        rows.append(block.bias_row(method, best.runs, biased_outcomes(best.runs, classes, split, tolerance),
                                   warn, kept, len(summaries)))
  return [r for r in rows if r is not None]


def build_table(results, reference=None, warn=None, *, select_on="val", tolerance=0.0,
                post_hoc_bias=False):
  """The table's `Row`s: per dataset and role, cross-entropy, its bias row, then each method.

  Args:
    results: `RunResult`s (`runs.load_results`).
    reference: the paper's numbers (`load_reference`), or None.
    warn: called with each warning line.
    select_on: "val" or "test", the split settings are chosen on.
    tolerance: DELTA of --accuracy-tolerance.
    post_hoc_bias: add a `<method>+bias` row after every method.
  """
  if select_on not in selection.SPLITS:
    raise ValueError(f"select_on must be one of {selection.SPLITS}, got {select_on!r}")
  warn = once(warn or runs_lib.stderr_warning)  # The bias rows of every role would repeat a warning.
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
