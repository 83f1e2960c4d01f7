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

`camri.results.selection.choose_bias` is the report's rule for the
`cross_entropy+bias` baseline: on validation predictions, the b of highest
recall of c among those that keep the accuracy of b = 0 (minus a tolerance).
"""

import numpy as np


def _split_scores(scores, important: int):
  """(s_c, max_{k != c} s_k, argmax_{k != c} s_k), in float64."""
  scores = np.asarray(scores, np.float64)
  others = scores.copy()
  others[:, important] = -np.inf
  return scores[:, important], others.max(axis=1), others.argmax(axis=1)


def _predict(split_scores, important: int, bias: float) -> np.ndarray:
  own, best_other, other_class = split_scores
  return np.where(own + bias >= best_other, important, other_class)


def predict_with_bias(scores, important: int, bias: float) -> np.ndarray:
  """(N,) predicted classes with `bias` added to class `important`'s score."""
  return _predict(_split_scores(scores, important), important, bias)


def breakpoints(scores, important: int) -> np.ndarray:
  """The sorted distinct positive t_i = max_{k != c} s_ik - s_ic: where predictions change."""
  own, best_other, _ = _split_scores(scores, important)
  gaps = best_other - own
  return np.unique(gaps[gaps > 0])


def _accuracy_and_recall(predicted, labels, important: int) -> tuple[float, float]:
  correct = predicted == labels
  positives = labels == important
  recall = float(correct[positives].mean()) if positives.any() else float("nan")
  return float(correct.mean()), recall


def accuracy_and_recall(scores, labels, important: int, bias: float) -> tuple[float, float]:
  """(accuracy, recall of `important`) with `bias`; recall NaN without an example of it."""
  return _accuracy_and_recall(predict_with_bias(scores, important, bias), np.asarray(labels),
                              important)


def accuracy_and_recall_over(scores, labels, important: int, biases) -> np.ndarray:
  """(B, 2): `accuracy_and_recall` at each of `biases`, the scores split once."""
  split, labels = _split_scores(scores, important), np.asarray(labels)
  return np.array([_accuracy_and_recall(_predict(split, important, b), labels, important)
                   for b in biases]).reshape(len(biases), 2)


def rates_with_bias(scores, labels, classes, bias):
  """(accuracy, recall, precision) with `bias` on classes[0]; recall, precision: means over classes."""
  labels = np.asarray(labels)
  predicted = predict_with_bias(scores, classes[0], bias)
  recall = [np.mean(predicted[labels == k] == k) if np.any(labels == k) else np.nan for k in classes]
  precision = [np.mean(labels[predicted == k] == k) if np.any(predicted == k) else np.nan
               for k in classes]
  return float(np.mean(predicted == labels)), float(np.mean(recall)), float(np.mean(precision))
