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
  root) count once, with a warning naming both. Runs under a directory holding
  `launch.protocol`'s roles file that the protocol did not launch (not its
  run directories, roles, classes or seeds) are pooled, and a warning names them. The table shows the fields that
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
                   [its 95% interval mean ± t(0.975, n-1) sqrt(sd^2/n + v),
                   clipped to [-1, 1], the values a difference of two rates
                   can take]; no interval for n < 2. v is the test set's
                   share: the variance of the mean difference that a
                   bootstrap over the test examples finds, one resample for
                   every run, from the runs' saved test predictions
                   (`camri.stats.test_set_variance`); 0, and the caption says
                   so, where a run saved none at the reported epoch (the
                   predictions are the last epoch's). † marks a recall
                   interval that holds 0: the gain may be noise of the seeds
                   or of the test set.
  recall gain      the same paired recall gain and interval, over the
  vs +bias         `cross_entropy+bias` run of the same seed (below) instead:
                   every row but the two baselines' own, end-to-end and
                   decoupled heads alike. The trade-off a bias gives any
                   classifier is free, so a class-sensitive method shows
                   something only where this interval lies above 0; † where
                   it holds 0. The bias's numbers are its last epoch's
                   predictions, whatever --epoch says.
The csv has every number: recall_gain_mean, recall_gain_ci_low, ...,
selected_on (val or test), pairs (n of the gains), interval (seeds+test, or
seeds where v is 0 for want of predictions), and the same over
cross_entropy+bias: pairs_over_bias, recall_gain_over_bias_mean, ...,
accuracy_gain_over_bias_ci_high, interval_over_bias.

The baseline row `cross_entropy+bias`, per dataset x role: each cross-entropy
run's saved predictions with a bias b >= 0 added to the important class's
score (`camri.posthoc`: predicted c when s_c + b >= max_{k != c} s_k). Per
run, b is chosen on the selection split among 0 and the breakpoints
t_i = max_{k != c} s_ik - s_ic > 0: among the b whose accuracy is at least the
run's own at b = 0 minus DELTA, the highest recall of c; ties go to the higher
accuracy, then the smaller b. The row reports the test split at that b. A
class-sensitive loss shows something only where it beats this row (the gains
vs +bias): the same trade-off is free for any trained classifier.
`--post-hoc-bias` adds the row for every method too (`camri+bias`, from its
reported setting's runs). With several important classes in a role the bias
goes to the first. The bias rows
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
import sys

from camri import run_log
from camri.results import formats
from camri.results import runs as runs_lib
from camri.results import selection
from camri.results import table

FORMATS = formats.FORMATS
SPLITS = selection.SPLITS
# The loader, selection and table, for callers of the report as a library.
load_results = runs_lib.load_results
build_table = table.build_table
load_reference = table.load_reference
parse_epoch_policy = selection.parse_epoch_policy


def report(root, policy="last", fmt="markdown", with_reference=False, warn=None, *, select_on="val",
           tolerance=0.0, post_hoc_bias=False):
  """The table of the runs under root as text in `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  warn = warn or runs_lib.stderr_warning
  results = load_results(root, policy, warn=warn, select_on=select_on)
  roles_files = run_log.find_roles(root)
  selection.warn_not_launched(roles_files, results, warn)
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
  roles = formats.how_roles_were_chosen(roles_files, results)
  return formats.WRITERS[fmt](rows, policy, with_reference, select_on=select_on, tolerance=tolerance,
                              uncovered=tuple(uncovered), roles=roles)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m camri.report", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs_dir", help="directory holding run directories (searched recursively)")
  selection.add_selection_args(parser)
  parser.add_argument("--format", choices=FORMATS, default="markdown")
  parser.add_argument("--out", help="write the table to this file instead of stdout")
  parser.add_argument("--reference", action="store_true", help="add the paper's Table 1 numbers")
  args = parser.parse_args(argv)
  try:
    policy, chosen = selection.selection_from_args(args)
    text = report(args.runs_dir, policy, args.format, args.reference, **chosen)
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
