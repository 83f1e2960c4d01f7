"""Post-hoc bias: predictions, breakpoints and metrics against hand computations."""

import numpy as np
from camri import posthoc

# Class 1 is important. Gaps max_{k != 1} s_k - s_1: 0.5, -0.2, 0.0 (a tie), 0.3.
SCORES = np.array([[0.9, 0.4, 0.1],
                   [0.1, 0.5, 0.3],
                   [0.2, 0.6, 0.6],
                   [0.1, 0.2, 0.5]], np.float32)
LABELS = np.array([1, 1, 2, 2])


def test_bias_moves_examples_to_the_important_class_ties_included():
  np.testing.assert_array_equal(posthoc.predict_with_bias(SCORES, 1, 0.0), [0, 1, 1, 2])
  np.testing.assert_array_equal(posthoc.predict_with_bias(SCORES, 1, 0.3), [0, 1, 1, 1])
  np.testing.assert_array_equal(posthoc.predict_with_bias(SCORES, 1, 0.5), [1, 1, 1, 1])


def test_breakpoints_are_the_positive_gaps_in_float64():
  np.testing.assert_allclose(posthoc.breakpoints(SCORES, 1),
                             [np.float64(np.float32(0.5)) - np.float64(np.float32(0.2)),
                              np.float64(np.float32(0.9)) - np.float64(np.float32(0.4))])


def test_accuracy_and_recall():
  assert posthoc.accuracy_and_recall(SCORES, LABELS, 1, 0.0) == (0.5, 0.5)
  assert posthoc.accuracy_and_recall(SCORES, LABELS, 1, 0.5) == (0.5, 1.0)
  _, recall = posthoc.accuracy_and_recall(SCORES, LABELS, 0, 0.0)
  assert np.isnan(recall)
  # Class 2 important: row 2's tie (0.6, 0.6) now goes to 2.
  assert posthoc.accuracy_and_recall(SCORES, LABELS, 2, 0.0) == (0.75, 1.0)
