"""Cost-sensitive cross-entropies over ordinary logits: CE, WCE, RWWCE.

The baselines of the CAMRI paper that reweight the cross-entropy instead of
shaping the feature space. All take logits (N, K) from a linear head and
integer labels (N,), and return one loss per example.

Prediction: argmax_k logits (the weights act only in training).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from camri.losses.class_vectors import important_class_vector


def cross_entropy(logits, labels):
  """Softmax cross-entropy, -log softmax(logits)_t, per example. Returns (N,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_cross_entropy(logits, labels, class_weights):
  """Weighted cross-entropy (WCE), per example.

    L_n = -w_{t_n} log softmax(logits_n)_{t_n}

  The class-weighted softmax cross-entropy (e.g. King & Zeng 2001; the WCE
  baseline of Nishiyama et al., IJCNN 2022), unnormalised: the per-example
  values are not divided by the batch's weight sum.

  Args:
    logits: (N, K) logits.
    labels: (N,) integer labels.
    class_weights: (K,) weights w; build them with `class_weights`.

  Returns:
    (N,) losses.
  """
  class_weights = jnp.asarray(class_weights, logits.dtype)
  _check_shape("class_weights", class_weights, (logits.shape[-1],))
  return class_weights[labels] * cross_entropy(logits, labels)


def class_weights(num_classes: int, important_classes: Sequence[int],
                  important_weight: float | Sequence[float] = 2.0):
  """WCE weights: `important_weight` at the important classes, 1 elsewhere."""
  return important_class_vector(num_classes, important_classes,
                                important_weight, default=1.0,
                                name="important weights")


def rwwce_loss(logits, labels, fn_weights, fp_weights):
  """Real-world-weight cross-entropy (RWWCE), single-label multiclass form.

  Ho & Wookey, "The Real-World-Weight Cross-Entropy Loss Function: Modeling
  the Costs of Mislabeling", IEEE Access 8:4806-4813, 2020
  (doi 10.1109/ACCESS.2019.2962617), single-label multicategory variant, as
  the authors' reference code computes it (y one-hot labels, M examples):

    J = -1/M sum_m sum_k [ y_mk C_FN[k] log p_mk
                           + sum_{j != k} y_mj C_FP[j, k] log(1 - p_mk) ]

  with p = softmax(logits). For a one-hot label t this is, per example,

    L_n = -C_FN[t] log p_t - sum_{k != t} C_FP[t, k] log(1 - p_k).

  The first term is the weighted cross-entropy (a missed true class, a false
  negative for t); the second penalises probability put on each wrong class k
  (a false positive for k) with a cost that depends on the true class t.
  With C_FP = 0 RWWCE is WCE with weights C_FN.

  Shapes, and why: the authors' reference code (github.com/yaoshiang/
  The-Real-World-Weight-Crossentropy-Loss-Function) stores both as (K, K)
  matrices, but C_FN there must be diagonal (one cost per true class), so it
  is a (K,) vector here; C_FP depends on the (true, predicted) pair, so it is
  a (K, K) matrix, rows the true class, columns the wrongly predicted class.
  Its diagonal is not used (that case is the false negative of C_FN). The
  reference code also takes the mean over k, i.e. divides this sum by K, and
  clips probabilities to [eps, 1 - eps]; here the sum is kept as in the paper
  and log(1 - p_k) = logsumexp_{j != k} logits_j - logsumexp_j logits_j is
  computed without clipping.

  Args:
    logits: (N, K) logits.
    labels: (N,) integer labels.
    fn_weights: (K,) false-negative costs C_FN.
    fp_weights: (K, K) false-positive costs C_FP[true, predicted].

  Returns:
    (N,) losses.
  """
  num_classes = logits.shape[-1]
  fn_weights = jnp.asarray(fn_weights, logits.dtype)
  fp_weights = jnp.asarray(fp_weights, logits.dtype)
  _check_shape("fn_weights", fn_weights, (num_classes,))
  _check_shape("fp_weights", fp_weights, (num_classes, num_classes))
  others = ~jnp.eye(num_classes, dtype=bool)
  log_normalizer = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  # log(1 - p_k) = log sum_{j != k} p_j, row k of `others` leaves k out.
  log_not_k = jax.nn.logsumexp(
      jnp.broadcast_to(logits[:, None, :], logits.shape[:1] + others.shape),
      axis=-1, where=others) - log_normalizer
  fp_costs = jnp.where(others, fp_weights, 0.0)[labels]
  return (fn_weights[labels] * cross_entropy(logits, labels)
          - jnp.sum(fp_costs * log_not_k, axis=-1))


def rwwce_weights(num_classes: int, important_classes: Sequence[int],
                  fn_weight: float | Sequence[float] = 2.0,
                  fp_weight: float = 1.0):
  """Default RWWCE costs that favour the recall of the important classes.

  C_FN = `fn_weight` at the important classes, 1 elsewhere (a missed
  important class costs more, as in WCE); C_FP[t, k] = `fp_weight` for every
  important t and k != t, 0 elsewhere: probability that a sample of an
  important class puts on any other class is penalised, while other classes'
  confusions cost what they cost under cross-entropy.

  Returns:
    (fn_weights (K,), fp_weights (K, K)) for `rwwce_loss`.
  """
  fn_weights = important_class_vector(num_classes, important_classes,
                                      fn_weight, default=1.0,
                                      name="fn weights")
  rows = important_class_vector(num_classes, important_classes, fp_weight,
                                default=0.0, name="fp weights")
  fp_weights = rows[:, None] * (1.0 - jnp.eye(num_classes, dtype=jnp.float32))
  return fn_weights, fp_weights


def _check_shape(name, array, shape):
  if array.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
