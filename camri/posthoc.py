r"""Post-hoc operating points: a bias on one class's score, after training.

With a bias b on class c, an example is predicted c when

    s_c + b >= max_{k != c} s_k

(ties go to c), and otherwise the argmax of the other classes. b = 0 is the
plain argmax except on exact ties, which go to c. Raising b trades overall
accuracy for recall of c: the threshold shift any classifier gets for free,
and so the baseline a class-sensitive loss must beat.

The predictions change only where b crosses an example's breakpoint
t_i = max_{k != c} s_ik - s_ic, so the breakpoints (with 0) are every distinct
operating point. Computed in float64.
"""

import numpy as np


def _split_scores(scores, important: int):
  """(s_c, max_{k != c} s_k, argmax_{k != c} s_k), in float64."""
  scores = np.asarray(scores, np.float64)
  others = scores.copy()
  others[:, important] = -np.inf
  return scores[:, important], others.max(axis=1), others.argmax(axis=1)


def predict_with_bias(scores, important: int, bias: float) -> np.ndarray:
  """(N,) predicted classes with `bias` added to class `important`'s score."""
  own, best_other, other_class = _split_scores(scores, important)
  return np.where(own + bias >= best_other, important, other_class)


def breakpoints(scores, important: int) -> np.ndarray:
  """The sorted distinct positive t_i = max_{k != c} s_ik - s_ic: where predictions change."""
  own, best_other, _ = _split_scores(scores, important)
  gaps = best_other - own
  return np.unique(gaps[gaps > 0])


def accuracy_and_recall(scores, labels, important: int, bias: float) -> tuple[float, float]:
  """(accuracy, recall of `important`) with `bias`; recall NaN without an example of it."""
  labels = np.asarray(labels)
  correct = predict_with_bias(scores, important, bias) == labels
  positives = labels == important
  recall = float(correct[positives].mean()) if positives.any() else float("nan")
  return float(correct.mean()), recall
