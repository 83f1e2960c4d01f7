"""The table as text: its caption, and markdown, LaTeX or csv of its rows (`table.Row`)."""

import csv
import io
import math
import os

from camri.results import runs as runs_lib
from camri.results import selection
from camri.results import table

FORMATS = ("markdown", "csv", "latex")
SPLIT_NAMES = selection.SPLIT_NAMES


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
  gain = lambda g, marked=False: number(_gain(g) + (dagger if marked else "")) if g else dash
  cells += [gain(row.recall_gain, row.marked), gain(row.accuracy_gain),
            gain(row.recall_gain_over_bias, row.marked_over_bias)]
  if with_reference:
    cells += [dash if v is None else number(f"{v:.4f}") for v in (row.paper_recall, row.paper_accuracy)]
  return cells


HEADER = ["dataset", "role", "class", "method", "setting", "seeds", "kept", "recall", "precision",
          "accuracy", "recall gain", "accuracy gain", "recall gain vs +bias"]
REFERENCE_HEADER = ["paper recall", "paper accuracy"]


def how_roles_were_chosen(roles_files, results):
  """Caption sentences from the roles files of `launch.protocol`, {directory: file as read}.

  A roles file speaks for the runs under its directory.
  """
  sentences = []
  for directory, saved in sorted(roles_files.items()):
    inside = os.path.join(os.path.abspath(directory), "")
    datasets = sorted({r.dataset for r in results if os.path.abspath(r.workdir).startswith(inside)})
    saved = selection.read_roles_file(saved)
    chosen_on = saved["chosen_on"]
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
           f"std (ddof=1) over seeds, at the {selection.describe_epoch_policy(policy, select_on)}.",
           f"Per method, the setting with the best mean recall among those whose mean accuracy is "
           f"at least cross-entropy's{minus}, both on the {split} split (kept: settings that keep "
           "accuracy / all; not kept: none does, the one of highest accuracy is shown);"]
  if select_on == "val":
    parts.append("selected on the validation split, reported on the test split.")
  else:
    parts.append("selected on the test split, as the paper did: optimistic, the table reports "
                 "the numbers it chose on.")
  fallback = sorted({r.dataset for r in rows
                     if r.selected_on != select_on and not r.method.endswith(table.BIAS)})
  if fallback:
    parts.append(f"Dataset {', '.join(fallback)} has no validation split (validation_fraction=0): "
                 "selected on the test split, optimistic.")
  parts.append("Gains: mean paired difference from the cross-entropy run of the same seed, over "
               "the n seeds both have, [95% interval mean ± t(0.975, n-1) sqrt(sd²/n + v), clipped "
               "to [-1, 1], v the variance of the mean difference that a bootstrap over the test "
               "examples finds (one resample for every run; per class of the role, the variance "
               "over its examples of the seeds' mean hit difference over their number), from the "
               "runs' saved test predictions: seeds and the test set both]; † a recall interval "
               "includes 0.")
  seeds_only = sum(1 for r in rows if any(g and g.n > 1 and not g.with_test_set
                                          for g in (r.recall_gain, r.recall_gain_over_bias)))
  if seeds_only:
    parts.append(f"{seeds_only} rows have v = 0, their runs having saved no test predictions at "
                 "the reported epoch: their intervals leave out the test set's sampling error.")
  if any(r.method.endswith(table.BIAS) for r in rows):
    parts.append(f"+bias: the run's last-epoch predictions with a bias b >= 0 on the important "
                 f"class's score, per run the b of best {split} recall among 0 and the breakpoints "
                 f"whose {split} accuracy is at least the run's own at b = 0{minus}; its gains are "
                 "over cross-entropy's last-epoch predictions.")
  if any(r.recall_gain_over_bias for r in rows):
    parts.append(f"Recall gain vs +bias: the same paired gain and interval over the same seed's "
                 f"{table.BASELINE}{table.BIAS} run instead (its last-epoch test predictions at its "
                 "b, whatever the epoch of the row; the csv also has the accuracy gain): a "
                 "class-sensitive method shows more than the trade-off any classifier gets for free "
                 "only where this interval lies above 0.")
  heads = sorted({r.method.removesuffix(table.BIAS).split(runs_lib.HEAD_ON)[1].rstrip(")")
                  for r in rows if runs_lib.HEAD_ON in r.method})
  if heads:
    parts.append(f"'(head on {', '.join(heads)})': decoupled runs, which trained only new layers "
                 "(the feature layer and the head) with the row's loss on the frozen trunk of the "
                 "same seed's run of that loss (Kang et al., ICLR 2020); their gains are over "
                 "that seed's end-to-end cross-entropy run and its +bias row.")
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


def _gain_columns(over):
  """pairs, the recall and accuracy gains' mean and interval, and the interval's kind (csv)."""
  return ([f"pairs{over}"] + [f"{field}_gain{over}_{end}" for field in ("recall", "accuracy")
                              for end in ("mean", "ci_low", "ci_high")] + [f"interval{over}"])


# Over cross-entropy, then over cross_entropy+bias (`_over_bias`).
CSV_HEADER = ["epoch", "dataset", "role", "classes", "class_names", "method", "setting", "seeds",
              "settings_kept", "settings_total", "recall_mean", "recall_std", "accuracy_mean",
              "accuracy_std", "selected_on", "precision_mean", "precision_std",
              *_gain_columns(""), *_gain_columns("_over_bias")]


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
    for recall, accuracy in ((r.recall_gain, r.accuracy_gain),
                             (r.recall_gain_over_bias, r.accuracy_gain_over_bias)):
      line += [recall.n if recall else ""]
      for g in (recall, accuracy):
        line += [number(g.mean), number(g.low), number(g.high)] if g else ["", "", ""]
      line += ["" if recall is None or recall.n < 2 else "seeds+test" if recall.with_test_set
               else "seeds"]
    if with_reference:
      line += [number(r.paper_recall), number(r.paper_accuracy)]
    writer.writerow(line)
  return out.getvalue()


WRITERS = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex}
