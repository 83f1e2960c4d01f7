r"""The paper's Table 1 for any grid of runs.

    python -m camri.report RUNS_DIR [--epoch last|best|N] [--format markdown|csv|latex] \
        [--out FILE] [--reference]

Reads every run directory under RUNS_DIR (config.json + metrics.csv, see
`camri.run_log`) and groups the runs by dataset x role x method x setting:

- method: config `loss.name`.
- setting: the loss hyperparameters, every `loss.*` field but `name` and
  `important_classes` (margin, scale, weights, ...). Runs of one setting differ
  only in seed. The table shows the fields that vary across the method's runs
  or differ from the cross-entropy runs' (and always margin and scale of the
  angular-margin losses).
- role: config `tag` (worst1, worst2, median from `launch.protocol`) or, with
  no tag, "class<k>" from the important class indices (`class3`, `class3+5`).
  A role names one set of classes per dataset. Cross-entropy trains without an
  important class, so its row for a role is the recall of that role's classes
  (test_recall_<k>, the mean over k when several) in the cross-entropy runs.

For each dataset x role x method the reported setting is the one with the best
mean recall of the important class among the settings whose mean accuracy
over seeds is not below cross-entropy's mean accuracy on that dataset (with a
1e-9 tolerance for rounding; ties go to the higher mean accuracy, then to the
first setting in sorted order); a dash where no setting keeps accuracy. With
no cross-entropy run on a dataset there is no accuracy bound (and a warning).
Means and standard deviations are over seeds; the standard deviation is the
sample one (ddof=1; none for a single seed).

Epoch policy (--epoch), one metrics.csv row per run:
  last  the row with epoch == num_epochs (default; unfinished runs are left out),
  best  the row of the highest test accuracy of a finished run (earliest on ties;
        optimistic: chosen on the test set, there is no validation split),
  N     the row with epoch == N (runs without it are left out).

--reference adds Table 1 of the paper (camri/reference/table1.csv) side by side
for the datasets it covers (cifar10, gtsrb, awa2).
"""

import argparse
import collections
import csv
import dataclasses
import importlib.resources
import io
import math
import sys

from camri import run_log

BASELINE = "cross_entropy"
ROLE_ORDER = ("worst1", "worst2", "median")
METHOD_ORDER = ("cross_entropy", "wce", "rwwce", "arcface", "cosface", "normface", "camri")
# Always shown in a method's setting, besides the loss fields that vary across its runs.
METHOD_FIELDS = {"camri": ("margin", "scale"), "arcface": ("margin", "scale"),
                 "cosface": ("margin", "scale"), "normface": ("scale",)}
NOT_SETTING = ("name", "important_classes")
# Config fields that may differ between runs of one table without a warning.
NOT_EXPERIMENT = ("seed", "tag", "loss", "data_dir", "workdir", "class_names")
ACCURACY_TOLERANCE = 1e-9
FORMATS = ("markdown", "csv", "latex")


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
  accuracy: float
  recall: float  # Of its important classes (mean when several).
  class_recall: tuple  # Recall of every class.
  class_names: tuple


@dataclasses.dataclass(frozen=True)
class Stats:
  n: int
  mean: float
  std: float  # Sample standard deviation (ddof=1); nan when n == 1.


@dataclasses.dataclass(frozen=True)
class Row:
  dataset: str
  role: str
  classes: tuple
  class_names: tuple
  method: str
  setting: str
  settings_kept: int | None  # None for cross-entropy: not selected.
  settings_total: int | None
  recall: Stats | None  # None: no setting keeps accuracy.
  accuracy: Stats | None
  paper_recall: float | None = None
  paper_accuracy: float | None = None
  chosen: tuple | None = None  # The selected setting as in `RunResult.setting`.


def stats(values):
  values = list(values)
  n = len(values)
  mean = math.fsum(values) / n
  std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
  return Stats(n, mean, std)


def parse_epoch_policy(text):
  """'last', 'best' or a positive epoch number."""
  if text in ("last", "best"):
    return text
  if text.isdigit() and int(text) > 0:
    return int(text)
  raise ValueError(f"--epoch must be last, best or a positive epoch number, got {text!r}")


def describe_epoch_policy(policy):
  if policy == "last":
    return "last epoch (epoch == num_epochs; unfinished runs left out)"
  if policy == "best":
    return "epoch of best test accuracy per finished run (chosen on the test set: optimistic)"
  return f"epoch {policy}"


def select_row(rows, num_epochs, policy):
  """The metrics.csv row of the epoch policy, or None when the run has none."""
  by_epoch = {row["epoch"]: row for row in rows}
  if policy == "last":
    return by_epoch.get(num_epochs)
  if policy == "best":
    if num_epochs not in by_epoch:
      return None
    return max(sorted(by_epoch.values(), key=lambda r: r["epoch"]),
               key=lambda r: r["test_accuracy"])
  return by_epoch.get(policy)


def hashable(value):
  return tuple(hashable(v) for v in value) if isinstance(value, list) else value


def _as_tuple(value):
  if value is None:
    return ()
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def read_result(workdir, policy):
  """A run's `RunResult` at the epoch policy, or None when it has no such epoch."""
  config = run_log.read_config(workdir)
  for field in ("dataset", "num_epochs", "loss.name"):
    if run_log.get_field(config, field) is None:
      raise ValueError(f"{workdir}/{run_log.CONFIG_FILE} has no field {field}")
  num_epochs = run_log.get_field(config, "num_epochs")
  row = select_row(run_log.read_metrics(workdir), num_epochs, policy)
  if row is None:
    return None
  num_classes = run_log.get_field(config, "num_classes")
  if num_classes is None:
    num_classes = sum(1 for k in row if k.startswith("test_recall_") and k[12:].isdigit())
  class_recall = tuple(row[f"test_recall_{k}"] for k in range(num_classes))
  method = run_log.get_field(config, "loss.name")
  classes = tuple(int(k) for k in _as_tuple(run_log.get_field(config, "loss.important_classes")))
  if method == BASELINE:
    role, recall = None, float("nan")
  else:
    if not classes:
      raise ValueError(f"{workdir}: loss.important_classes is empty for method {method!r}")
    role = run_log.get_field(config, "tag") or "class" + "+".join(map(str, classes))
    recall = math.fsum(class_recall[k] for k in classes) / len(classes)
  loss = run_log.get_field(config, "loss") or {}
  setting = tuple(sorted((k, hashable(v)) for k, v in loss.items() if k not in NOT_SETTING))
  return RunResult(workdir=workdir, dataset=run_log.get_field(config, "dataset"), method=method,
                   role=role, classes=classes, setting=setting, seed=run_log.get_field(config, "seed"),
                   accuracy=row["test_accuracy"], recall=recall, class_recall=class_recall,
                   class_names=tuple(run_log.get_field(config, "class_names") or ()))


def _flatten(config, prefix=""):
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = hashable(value)
  return flat


def load_results(root, policy, warn=None):
  """`RunResult`s of every run under root; runs without the policy's epoch are left out."""
  warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
  results, left_out = [], []
  experiment = collections.defaultdict(lambda: collections.defaultdict(set))
  for workdir in run_log.find_runs(root):
    result = read_result(workdir, policy)
    if result is None:
      left_out.append(workdir)
      continue
    results.append(result)
    for key, value in _flatten(run_log.read_config(workdir)).items():
      if key.split(".")[0] not in NOT_EXPERIMENT:
        experiment[result.dataset][key].add(value)
  if not results and not left_out:
    warn(f"no run directories (with {run_log.CONFIG_FILE}) under {root}")
  if left_out:
    warn(f"{len(left_out)} runs have no row for the {describe_epoch_policy(policy)}, left out: "
         + ", ".join(left_out[:5]) + (" ..." if len(left_out) > 5 else ""))
  for dataset, fields in sorted(experiment.items()):
    varying = sorted(k for k, values in fields.items() if len(values) > 1)
    if varying:
      warn(f"runs of dataset {dataset} differ in {', '.join(varying)}; they are pooled")
  return results


def _order(values, preferred):
  return sorted(values, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), v))


def format_value(value):
  if isinstance(value, tuple) and len(value) == 1:
    value = value[0]
  if isinstance(value, float):
    return format(value, ".5g")
  if isinstance(value, tuple):
    return "(" + ", ".join(format_value(v) for v in value) + ")"
  return str(value)


def _setting_label(setting, shown):
  return ", ".join(f"{k}={format_value(v)}" for k, v in setting if k in shown) or "-"


def _role_classes(results, dataset):
  mapping = {}
  for r in results:
    if r.dataset == dataset and r.role is not None:
      if mapping.setdefault(r.role, r.classes) != r.classes:
        raise ValueError(f"role {r.role!r} of dataset {dataset!r} names classes "
                         f"{mapping[r.role]} and {r.classes} (in {r.workdir})")
  return mapping


def build_table(results, reference=None, warn=None):
  """The table's `Row`s: per dataset, per role, cross-entropy then each method's chosen setting."""
  warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
  reference = reference or {}
  rows = []
  for dataset in sorted({r.dataset for r in results}):
    ce = [r for r in results if r.dataset == dataset and r.method == BASELINE]
    ce_accuracy = stats(r.accuracy for r in ce).mean if ce else -math.inf
    if not ce:
      warn(f"no {BASELINE} runs for dataset {dataset}: settings are not bound by accuracy")
    methods = _order({r.method for r in results if r.dataset == dataset} - {BASELINE}, METHOD_ORDER)
    ce_values = collections.defaultdict(set)
    for r in ce:
      for k, v in r.setting:
        ce_values[k].add(v)
    shown = {}
    for method in methods:
      settings = {r.setting for r in results if r.dataset == dataset and r.method == method}
      varying = {k for s in settings for k, v in s if any(dict(t).get(k) != v for t in settings)}
      not_ce = {k for s in settings for k, v in s if ce_values.get(k) != {v}}
      shown[method] = varying | not_ce | set(METHOD_FIELDS.get(method, ()))
    role_classes = _role_classes(results, dataset)
    if not role_classes and ce:
      rows.append(Row(dataset, "-", (), ce[0].class_names, BASELINE, "-", None, None, None,
                      stats(r.accuracy for r in ce)))
    for role in _order(role_classes, ROLE_ORDER):
      classes = role_classes[role]

      def row(method, setting, kept, total, recall, accuracy, chosen=None):
        paper = reference.get((dataset, role, method), (None, None))
        names = next((r.class_names for r in results if r.dataset == dataset), ())
        return Row(dataset, role, classes, tuple(names[k] for k in classes if k < len(names)),
                   method, setting, kept, total, recall, accuracy, *paper, chosen=chosen)

      if ce:
        rows.append(row(BASELINE, "-", None, None,
                        stats(math.fsum(r.class_recall[k] for k in classes) / len(classes) for r in ce),
                        stats(r.accuracy for r in ce)))
      for method in methods:
        groups = collections.defaultdict(list)
        for r in results:
          if r.dataset == dataset and r.role == role and r.method == method:
            groups[r.setting].append(r)
        if not groups:
          continue
        summaries = [(setting, stats(r.recall for r in runs), stats(r.accuracy for r in runs))
                     for setting, runs in sorted(groups.items(), key=lambda kv: repr(kv[0]))]
        kept = [s for s in summaries if s[2].mean >= ce_accuracy - ACCURACY_TOLERANCE]
        if kept:
          best = max(kept, key=lambda s: (s[1].mean, s[2].mean))  # max keeps the first of ties
          rows.append(row(method, _setting_label(best[0], shown[method]), len(kept), len(summaries),
                          best[1], best[2], chosen=best[0]))
        else:
          rows.append(row(method, "-", 0, len(summaries), None, None))
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

def _class_label(row):
  if not row.classes:
    return "-"
  label = "+".join(map(str, row.classes))
  return f"{label} ({'+'.join(row.class_names)})" if row.class_names else label


def _mean_std(s, pm):
  return f"{s.mean:.4f}" if math.isnan(s.std) else f"{s.mean:.4f}{pm}{s.std:.4f}"


def _cells(row, with_reference, pm, dash, escape=str, number=str):
  """The row's cells: text cells through `escape`, numbers through `number`."""
  cells = [escape(c) for c in (row.dataset, row.role, _class_label(row), row.method, row.setting)]
  kept = dash if row.settings_total is None else f"{row.settings_kept}/{row.settings_total}"
  cells += [str(row.accuracy.n if row.accuracy else 0), kept]
  cells += [number(_mean_std(s, pm)) if s else dash for s in (row.recall, row.accuracy)]
  if with_reference:
    cells += [dash if v is None else number(f"{v:.4f}") for v in (row.paper_recall, row.paper_accuracy)]
  return cells


HEADER = ["dataset", "role", "class", "method", "setting", "seeds", "kept", "recall", "accuracy"]
REFERENCE_HEADER = ["paper recall", "paper accuracy"]
CAPTION = ("Recall of the important class and accuracy, mean ± sample std (ddof=1) over seeds, "
           "at the {epoch}. Per method, the setting with the best mean recall among those whose "
           "mean accuracy is not below cross-entropy's (kept: settings that keep accuracy / all); "
           "a dash where none does.")


def to_markdown(rows, policy, with_reference=False):
  header = HEADER + (REFERENCE_HEADER if with_reference else [])
  lines = [CAPTION.format(epoch=describe_epoch_policy(policy)), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cells(r, with_reference, " ± ", "-")) + " |" for r in rows]
  return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def _latex_escape(text):
  return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def to_latex(rows, policy, with_reference=False):
  header = HEADER + (REFERENCE_HEADER if with_reference else [])
  caption = _latex_escape(CAPTION.format(epoch=describe_epoch_policy(policy))).replace("±", r"$\pm$")
  lines = [r"\begin{table}", r"\centering", r"\caption{" + caption + "}",
           r"\begin{tabular}{" + "l" * 5 + "r" * (len(header) - 5) + "}", r"\hline",
           " & ".join(header) + r" \\", r"\hline"]
  for r in rows:
    cells = _cells(r, with_reference, r" \pm ", "--", escape=_latex_escape, number=lambda x: f"${x}$")
    lines.append(" & ".join(cells) + r" \\")
  lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
  return "\n".join(lines) + "\n"


def to_csv(rows, policy, with_reference=False):
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  header = ["epoch", "dataset", "role", "classes", "class_names", "method", "setting", "seeds",
            "settings_kept", "settings_total", "recall_mean", "recall_std", "accuracy_mean",
            "accuracy_std"]
  writer.writerow(header + (["paper_recall", "paper_accuracy"] if with_reference else []))
  number = lambda x: "" if x is None or math.isnan(x) else repr(round(x, 12))
  for r in rows:
    line = [policy, r.dataset, r.role, "+".join(map(str, r.classes)), "+".join(r.class_names),
            r.method, r.setting, r.accuracy.n if r.accuracy else 0,
            "" if r.settings_kept is None else r.settings_kept,
            "" if r.settings_total is None else r.settings_total]
    for s in (r.recall, r.accuracy):
      line += [number(s.mean), number(s.std)] if s else ["", ""]
    if with_reference:
      line += [number(r.paper_recall), number(r.paper_accuracy)]
    writer.writerow(line)
  return out.getvalue()


def report(root, policy="last", fmt="markdown", with_reference=False, warn=None):
  """The table of the runs under root as text in `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  results = load_results(root, policy, warn=warn)
  rows = build_table(results, load_reference() if with_reference else None, warn=warn)
  return {"markdown": to_markdown, "csv": to_csv, "latex": to_latex}[fmt](rows, policy, with_reference)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m camri.report", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs_dir", help="directory holding run directories (searched recursively)")
  parser.add_argument("--epoch", default="last", help="last (default), best or an epoch number")
  parser.add_argument("--format", choices=FORMATS, default="markdown")
  parser.add_argument("--out", help="write the table to this file instead of stdout")
  parser.add_argument("--reference", action="store_true", help="add the paper's Table 1 numbers")
  args = parser.parse_args(argv)
  try:
    text = report(args.runs_dir, parse_epoch_policy(args.epoch), args.format, args.reference)
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
