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
"""

import dataclasses
import math

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
