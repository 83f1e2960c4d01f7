"""How far two float32 programs of one forward pass may differ.

A run's evaluation, `camri.predict` (another batch size), a process count and
the exported artifact compile the same model into different XLA programs, and
XLA:CPU picks kernels, so summation orders, by shape and instruction set
(AVX2, AVX-512). Their scores agree only to round-off, bounded here.

A sum of n float32 terms in any order is within n * u * sum|terms| of the exact
sum (u = 2**-24). Along the tests' models (`small_cnn`, feature_dim 64, inputs
of 1 or 3 channels and at most 8x8) the reductions are the 3x3 convolutions
(at most 27, 288, 288 and 576 terms), the average pool (at most 16), the
feature layer (64) and the score itself (64 for a cosine or a logit), 1,323
terms in all: a score can move by 1323 * u = 7.9e-5 of the size of what it
sums. ReLU, max pooling and the cosine's normalisation
do not amplify an error; evaluation-mode BatchNorm scales it by
gamma / sqrt(var + eps), near 1 in these models. So two programs' scores
agree to 1e-4 of the largest score's magnitude (at least 1).

Where two scores of an example are closer than twice that, the two programs
may predict different classes: such near ties are the only predictions (and
accuracy counts) allowed to differ.
"""

import numpy as np

SCORE_RTOL = 1e-4


def score_atol(scores) -> float:
  """The bound on any score's difference between two programs of one forward pass."""
  return SCORE_RTOL * max(1.0, float(np.max(np.abs(scores))))


def assert_scores_agree(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=score_atol(expected))


def near_ties(scores) -> np.ndarray:
  """(N,) bool: whether an example's two highest scores are within round-off of each other."""
  top_two = np.sort(np.asarray(scores), axis=1)[:, -2:]
  return top_two[:, 1] - top_two[:, 0] <= 2 * score_atol(scores)


def assert_same_predictions(predicted, scores, labels=None, accuracy=None):
  """`predicted` is argmax(`scores`) but at near ties, and so `accuracy` up to those.

  Args:
    predicted: (N,) class indices from one program.
    scores: (N, K) scores from another.
    labels: (N,) labels, with `accuracy`, the first program's accuracy.
    accuracy: with `labels`, checked against the accuracy of `scores`.
  """
  predicted = np.asarray(predicted)
  ties = near_ties(scores)
  np.testing.assert_array_equal(predicted[~ties], np.argmax(scores, 1)[~ties])
  if accuracy is not None:
    other = np.mean(np.argmax(scores, 1) == np.asarray(labels))
    assert abs(accuracy - other) <= np.mean(ties) + 1e-12, (accuracy, other, np.sum(ties))
