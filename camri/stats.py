r"""Summaries over seeds: mean, sample standard deviation and Student t intervals.

For values x_1 .. x_n (one per seed; for a paired comparison the differences
d_i = a_i - b_i of two runs with the same seed):

    mean = (1/n) sum_i x_i
    sd   = sqrt(sum_i (x_i - mean)^2 / (n - 1))                  (ddof=1)
    CI   = mean +- t(1 - alpha/2, n - 1) * sd / sqrt(n)           (95%: alpha = 0.05)

The interval assumes the x_i are independent draws from a normal
distribution; with n < 2 there is none. With few seeds it can run past the
values the mean can take (t(0.975, 1) = 12.7): it is clipped to them, e.g.
[0, 1] for a rate and [-1, 1] for a difference of two rates (`RATE`,
`RATE_DIFFERENCE`).

Seeds are not the only noise: every run is scored on one test set, and a
different draw of it would move every run's rate together, which the spread
over seeds does not show. `test_set_variance` measures it as a bootstrap over
the test examples would (one resample for every run, as they share the test
set), and `two_source_interval` adds it to the seeds' variance of the mean:

    CI = mean +- t(1 - alpha/2, n - 1) * sqrt(sd^2 / n + v)

v: the variance of the mean over seeds of the paired difference as the test
examples are resampled.
"""

import dataclasses
import math

import numpy as np

RATE = (0.0, 1.0)
RATE_DIFFERENCE = (-1.0, 1.0)
UNBOUNDED = (-math.inf, math.inf)


@dataclasses.dataclass(frozen=True)
class Stats:
  n: int
  mean: float
  std: float  # Sample standard deviation (ddof=1); nan when n == 1.


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its confidence interval; low and high are nan when n < 2."""
  n: int
  mean: float
  low: float
  high: float
  with_test_set: bool = False  # Whether the interval holds the test set's variance.

  def contains(self, value: float) -> bool:
    return self.low <= value <= self.high  # False when there is no interval.


def summarize(values) -> Stats:
  """n, mean and sample standard deviation of a non-empty sequence."""
  values = list(values)
  n = len(values)
  mean = math.fsum(values) / n
  std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
  return Stats(n, mean, std)


def t_quantile(p: float, df: int) -> float:
  """The p-quantile of Student's t distribution with df degrees of freedom."""
  # scipy comes with scikit-learn, a dependency; imported here, as it is slow to load.
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  return float(scipy_stats.t.ppf(p, df))


def half_width(s: Stats, confidence: float = 0.95) -> float:
  """t((1 + confidence) / 2, n - 1) * sd / sqrt(n); nan when n < 2."""
  if s.n < 2:
    return float("nan")
  return t_quantile((1 + confidence) / 2, s.n - 1) * s.std / math.sqrt(s.n)


def interval(s: Stats, confidence: float = 0.95, bounds=UNBOUNDED) -> tuple[float, float]:
  """(low, high) of the t-interval of `s`, clipped to `bounds`; nan for n < 2."""
  half = half_width(s, confidence)
  if math.isnan(half):
    return half, half
  return max(s.mean - half, bounds[0]), min(s.mean + half, bounds[1])


def t_interval(values, confidence: float = 0.95, bounds=UNBOUNDED) -> Interval:
  """The mean of `values` with its t-interval clipped to `bounds` (see the module docstring)."""
  s = summarize(values)
  return Interval(s.n, s.mean, *interval(s, confidence, bounds))


def test_set_variance(hits_a, hits_b, totals) -> float:
  """Variance of the mean paired difference of rates that resampling the test examples finds.

  A run's rate is the mean over groups g of its hits among the examples of g
  (accuracy: one group, every example; recall of classes: one group per class,
  its examples). With d_j the mean over the pairs of (hit of a - hit of b) on
  example j, the rate difference is mean_g mean_{j in g} d_j, and a bootstrap
  over the test examples (one resample for every run, as they share the test
  set) finds its variance

      v = (1/G^2) sum_g var_{j in g}(d_j) / N_g        (var with ddof=0),

  exactly for one group (a mean) and to first order for a class's recall (a
  ratio): the bootstrap's limit of infinitely many resamples, without drawing any.

  Args:
    hits_a: (n, G, N) 0/1, run i of a counts example j as a hit of group g.
    hits_b: (n, G, N), the runs paired with a's (same seed, same test examples).
    totals: (G, N) 0/1, example j belongs to group g; every group has an example.

  Returns:
    v of the module docstring.
  """
  d = (np.asarray(hits_a, np.float64) - np.asarray(hits_b, np.float64)).mean(0)  # (G, N)
  totals = np.asarray(totals, bool)
  return math.fsum(float(np.var(d[g][totals[g]])) / int(totals[g].sum())
                   for g in range(len(totals))) / len(totals) ** 2


def two_source_interval(values, test_variance: float, confidence: float = 0.95,
                        bounds=UNBOUNDED) -> Interval:
  """`t_interval` of the paired differences with the test set's variance added (module docstring)."""
  s = summarize(values)
  if s.n < 2:
    return Interval(s.n, s.mean, float("nan"), float("nan"))
  half = t_quantile((1 + confidence) / 2, s.n - 1) * math.sqrt(s.std ** 2 / s.n + test_variance)
  return Interval(s.n, s.mean, max(s.mean - half, bounds[0]), min(s.mean + half, bounds[1]), True)
