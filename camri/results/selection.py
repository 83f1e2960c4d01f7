"""Which numbers count: the epoch, the split, the setting, the bias and the protocol's roles.

Every choice that turns runs into reported numbers is made here, once, for the
report, the plots and `launch.protocol`:

- the epoch policy (`--epoch`): which metrics.csv rows a run's numbers come from;
- the selection split (`--select-on`): validation, or test, with a warning, for
  a dataset with runs that have no validation split;
- the setting of a method: the best mean recall among the settings whose
  mean accuracy is at least a floor, ties to the higher accuracy;
- the post-hoc bias of a run: the same rule over the bias's operating points;
- the protocol's roles: worst1, worst2 and median of cross-entropy's mean
  recall per class, and the roles file that records them.
"""

import dataclasses
import json
import math
import os

import numpy as np

from camri import posthoc
from camri import run_log
from camri import stats as stats_lib

SPLITS = ("val", "test")
SPLIT_NAMES = {"val": "validation", "test": "test"}
# Accuracies closer than this are equal (float rounding of means): slack on top of
# --accuracy-tolerance, for settings and biases alike.
ROUNDING = 1e-9


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


# The selection split.

def validation_or_test(select_on, without, total, runs_of, consequence, warn):
  """`select_on`, or test when `without` of `total` runs have no validation split, with a warning.

  The one fallback of the setting choice and of the protocol's roles: `runs_of`
  names the runs, `consequence` says what choosing on test does to the result.
  """
  if select_on == "val" and without:
    warn(f"{without} of {total} {runs_of} have no validation split (validation_fraction=0): "
         f"{consequence}")
    return "test"
  return select_on


def selection_split(dataset, runs, select_on, warn):
  """`select_on`, or test when some of the dataset's runs (`RunResult`s) have no validation split."""
  return validation_or_test(select_on, sum(r.val is None for r in runs), len(runs),
                            f"runs of dataset {dataset}",
                            "selecting on the test split, which is optimistic", warn)


# Keeping accuracy: the rule of the settings and of the post-hoc bias.

def keeps(accuracy, floor):
  """Whether `accuracy` is at least `floor`, up to ROUNDING."""
  return accuracy >= floor - ROUNDING


def best_kept(items, floor, rates):
  """The item of highest recall among those whose accuracy is at least `floor`; None when none.

  `rates(item)` is (accuracy, recall). "At least" allows ROUNDING below the
  floor. Ties go to the higher accuracy, then to the first item.
  """
  kept = [item for item in items if keeps(rates(item)[0], floor)]
  return max(kept, key=lambda item: rates(item)[::-1]) if kept else None


# Settings.

@dataclasses.dataclass(frozen=True)
class SettingSummary:
  setting: tuple
  runs: tuple
  recall: stats_lib.Stats  # Of the important classes on the selection split.
  accuracy: stats_lib.Stats  # On the selection split.


def summarize_setting(setting, runs, split):
  return SettingSummary(setting, tuple(runs),
                        stats_lib.summarize(r.on(split).recall(r.classes) for r in runs),
                        stats_lib.summarize(r.on(split).accuracy for r in runs))


def choose_setting(summaries, bound):
  """(the reported `SettingSummary`, how many keep accuracy).

  `best_kept` of the mean accuracies and recalls with floor `bound`. When
  none keeps accuracy, the one of highest mean accuracy.
  """
  rates = lambda s: (s.accuracy.mean, s.recall.mean)
  best = best_kept(summaries, bound, rates)
  if best is not None:
    return best, sum(keeps(s.accuracy.mean, bound) for s in summaries)
  return max(summaries, key=rates), 0


# The post-hoc bias.

def choose_bias(scores, labels, important, tolerance=0.0):
  """The bias b >= 0 on class `important` chosen on (scores, labels) (`camri.posthoc`).

  Among 0 and the breakpoints of (scores, labels) in ascending order, `best_kept`
  with the floor the accuracy at b = 0 minus `tolerance`: ties go to the higher
  accuracy, then to the smaller b.
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  # Passing the breakpoint of an example of another class cannot raise recall and
  # cannot raise accuracy, so the breakpoint below it wins the tie: the important
  # class's own breakpoints are the only ones that can be chosen.
  candidates = np.concatenate([[0.0], posthoc.breakpoints(scores[labels == important], important)])
  rates = posthoc.accuracy_and_recall_over(scores, labels, important, candidates)
  best = best_kept(range(len(candidates)), rates[0, 0] - tolerance, lambda i: tuple(rates[i]))
  return float(candidates[best])


def run_bias(run, important, split, tolerance):
  """(b, the split it was chosen on) for a run's saved predictions; (None, None) without test ones.

  b is chosen on `split`'s predictions, or on test's when `split` is val and
  the run saved no validation predictions.
  """
  test = run.predictions("test")
  if test is None:
    return None, None
  chooser = run.predictions("val") if split == "val" else test
  if chooser is None:
    chooser, split = test, "test"
  return choose_bias(chooser["scores"], chooser["labels"], important, tolerance), split


# The protocol's roles.

MEASURED_ROLES = ("worst1", "worst2", "median")


def mean_class_recall(runs, warn):
  """Per class, the mean over finished cross-entropy runs of its recall at the last epoch.

  On the validation split; on test when a run has none (`warn` says so).

  Args:
    runs: `runs.Run`s.
    warn: called with the warning line.

  Returns:
    ([mean recall of each class], the split: "val" or "test").

  Raises:
    ValueError: the runs differ in their classes, or a class has no example
      on the split (its recall is nan) and cannot be ranked.
  """
  rows = []
  for run in runs:
    (row,) = select_rows(run.metrics, run.field("num_epochs"), "last")
    rows.append((run.workdir, row, run.field("num_classes")))
  if len({k for _, _, k in rows}) != 1:
    raise ValueError("the cross-entropy runs have different numbers of classes")
  split = validation_or_test(
      "val", sum("val_recall_0" not in row for _, row, _ in rows), len(rows), "cross-entropy runs",
      "the important classes are measured on test recall, which inflates every method's gain on "
      "them (regression to the mean)", warn)
  num_classes = rows[0][2]
  for workdir, row, _ in rows:
    for k in range(num_classes):
      if math.isnan(row[f"{split}_recall_{k}"]):
        name = SPLIT_NAMES[split]
        raise ValueError(f"class {k} has no {name} example in {workdir} ({split}_recall_{k} is "
                         f"nan): the classes cannot be ranked; name the important ones with "
                         "--classes NAME,...")
  mean = [math.fsum(row[f"{split}_recall_{k}"] for _, row, _ in rows) / len(rows)
          for k in range(num_classes)]
  return mean, split


def pick_classes(mean_recall):
  """{worst1, worst2, median: class index}: classes sorted by (mean recall, index), [0], [1], [K // 2]."""
  num_classes = len(mean_recall)
  if num_classes < 4:
    raise ValueError(f"worst1, worst2 and median need at least 4 classes, got {num_classes}")
  order = sorted(range(num_classes), key=lambda k: (mean_recall[k], k))
  return {"worst1": order[0], "worst2": order[1], "median": order[num_classes // 2]}


def read_roles_file(saved):
  """A roles file's dict with `roles` and `chosen_on` as today's protocol writes them.

  Files from before `roles` held the measured roles at the top level; files
  from before `chosen_on` measured on test.
  """
  saved = dict(saved)
  if not saved.get("roles"):
    saved["roles"] = {r: saved[r] for r in MEASURED_ROLES if r in saved}
  if "chosen_on" not in saved:
    saved["chosen_on"] = "test" if saved.get("mean_recall") else None
  return saved


def write_roles_file(path, roles, names, *, dataset, seeds, rule, chosen_on=None,
                     mean_recall=None, warn, dry_run=False):
  """Records how the roles were chosen in `path` (the report's caption reads it).

  Warns when the roles differ from those recorded before; writes nothing on a dry run.
  """
  previous = None
  if os.path.exists(path):
    with open(path) as f:
      previous = read_roles_file(json.load(f))["roles"]
  if previous and previous != roles:
    warn(f"the important classes changed from {previous} to {roles}")
  if dry_run:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  run_log.atomic_write(path, json.dumps(
      {"dataset": dataset, "roles": roles, "class_names": names, "chosen_on": chosen_on,
       "mean_recall": mean_recall, "seeds": seeds, "rule": rule}) + "\n")


# The protocol's decoupled runs (launch.protocol --heads): <root>/heads/<trunk's run>/<run>.
HEADS_DIR = "heads"


def _launched(result, directory, saved):
  """Whether the protocol of the roles file `saved`, in `directory`, launched `result`'s run."""
  roles, seeds = saved["roles"], saved.get("seeds")
  parent = os.path.dirname(os.path.abspath(result.workdir))
  if parent != directory and os.path.dirname(parent) != os.path.join(directory, HEADS_DIR):
    return False  # Not a run directory of it.
  if seeds is not None and result.seed not in range(seeds):
    return False
  return result.role is None or (result.role in roles and result.classes == (roles[result.role],))


def warn_not_launched(roles_files, results, warn):
  """Warns, naming them, about the runs under a roles file's directory its protocol did not launch.

  Those runs (a quickstart run in the protocol's root, another role's or seed's)
  are pooled with the protocol's: the report cannot tell them apart by their numbers.
  """
  for directory, saved in sorted(roles_files.items()):
    directory, saved = os.path.abspath(directory), read_roles_file(saved)
    inside = [r for r in results if os.path.abspath(r.workdir).startswith(os.path.join(directory, ""))
              or os.path.abspath(r.workdir) == directory]
    strays = sorted(r.workdir for r in inside if not _launched(r, directory, saved))
    if strays:
      warn(f"{len(strays)} runs under {directory} were not launched by launch.protocol (a role, "
           f"class or seed not in its {run_log.ROLES_FILE}, or not a run directory of it) and are "
           f"pooled with its runs: {', '.join(strays)}")


# The command-line flags of every selection.

def add_selection_args(parser):
  """--epoch, --select-on, --accuracy-tolerance and --post-hoc-bias, as the report and plots take them."""
  parser.add_argument("--epoch", default="last", help="last (default), best, an epoch number or last:K")
  parser.add_argument("--select-on", choices=SPLITS, default="val",
                      help="the split settings (and --epoch best) are chosen on (default val)")
  parser.add_argument("--accuracy-tolerance", type=float, default=0.0, metavar="DELTA",
                      help="keep a setting whose mean accuracy is >= cross-entropy's - DELTA (default 0)")
  parser.add_argument("--post-hoc-bias", action="store_true",
                      help="add a <method>+bias row for every method, not only cross-entropy")


def selection_from_args(args):
  """(epoch policy, {select_on, tolerance, post_hoc_bias}) of `add_selection_args`'s flags."""
  if args.accuracy_tolerance < 0:
    raise ValueError(f"--accuracy-tolerance must be >= 0, got {args.accuracy_tolerance}")
  return parse_epoch_policy(args.epoch), dict(select_on=args.select_on,
                                              tolerance=args.accuracy_tolerance,
                                              post_hoc_bias=args.post_hoc_bias)
