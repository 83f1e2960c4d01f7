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
over seeds does not show. `test_set_variance` measures it by resampling the
test examples (one resample for every run, as they share the test set), and
`two_source_interval` adds it to the seeds' variance of the mean:

    CI = mean +- t(1 - alpha/2, n - 1) * sqrt(sd^2 / n + v)

v: the variance, over resamples, of the mean over seeds of the paired
difference.
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


def test_set_variance(hits_a, hits_b, totals, *, num: int = 2000, seed: int = 0) -> float:
  """Variance of the mean paired difference of rates as the test examples are resampled.

  A run's rate is the mean over groups g of sum_j hits[g, j] / sum_j totals[g, j]
  (accuracy: one group, every example; recall of classes: one group per class,
  its examples). Each of `num` resamples draws N examples with replacement,
  one draw for every run; resamples where a group has no example are left out.

  Args:
    hits_a: (n, G, N) 0/1, run i of a counts example j as a hit of group g.
    hits_b: (n, G, N), the runs paired with a's (same seed, same test examples).
    totals: (G, N) 0/1, example j belongs to group g.
    num: resamples.
    seed: of the resampling: the variance is the same on every call.

  Returns:
    v of the module docstring.
  """
  diff = np.asarray(hits_a, np.float64) - np.asarray(hits_b, np.float64)
  totals = np.asarray(totals, np.float64)
  n, groups, size = diff.shape
  rng = np.random.default_rng(seed)
  means = []
  for start in range(0, num, 250):
    weights = rng.multinomial(size, np.full(size, 1.0 / size), size=min(250, num - start))
    counts = weights @ totals.T  # (b, G)
    with np.errstate(divide="ignore", invalid="ignore"):
      rates = (weights @ diff.reshape(n * groups, size).T).reshape(-1, n, groups) / counts[:, None, :]
    rates[np.broadcast_to((counts == 0)[:, None, :], rates.shape)] = np.nan
    means.append(rates.mean(2).mean(1))
  means = np.concatenate(means)
  return float(np.var(means[np.isfinite(means)], ddof=1))


def two_source_interval(values, test_variance: float, confidence: float = 0.95,
                        bounds=UNBOUNDED) -> Interval:
  """`t_interval` of the paired differences with the test set's variance added (module docstring)."""
  s = summarize(values)
  if s.n < 2:
    return Interval(s.n, s.mean, float("nan"), float("nan"))
  half = t_quantile((1 + confidence) / 2, s.n - 1) * math.sqrt(s.std ** 2 / s.n + test_variance)
  return Interval(s.n, s.mean, max(s.mean - half, bounds[0]), min(s.mean + half, bounds[1]), True)
