"""Metrics accumulated on device: loss, confusion matrix, angle statistics.

A step returns sums (never means), so sums over steps, devices and hosts are
exact and padded examples (mask = 0) count for nothing. `summarize` turns the
sums into the per-epoch numbers written to metrics.csv.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def empty(num_classes: int):
  """Zero sums for one pass over a split."""
  return {
      "loss_sum": jnp.zeros((), jnp.float32),
      "count": jnp.zeros((), jnp.float32),
      "confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
      "angle_sum": jnp.zeros((num_classes,), jnp.float32),
      "angle_sq_sum": jnp.zeros((num_classes,), jnp.float32),
  }


def batch_sums(per_example_loss, scores, labels, mask, cosine=None):
  """Sums for one batch.

  Args:
    per_example_loss: (N,) losses.
    scores: (N, K) prediction scores (argmax = predicted class).
    labels: (N,) integer labels.
    mask: (N,) 1 for real examples, 0 for padding.
    cosine: optional (N, K) cosines between features and class weights; the
      angle of each example to its own class weight, in degrees, is summed per
      class for the angle statistics.
  """
  num_classes = scores.shape[-1]
  true = jax.nn.one_hot(labels, num_classes) * mask[:, None]
  pred = jax.nn.one_hot(jnp.argmax(scores, -1), num_classes)
  sums = {
      "loss_sum": jnp.sum(per_example_loss * mask),
      "count": jnp.sum(mask),
      "confusion": true.T @ pred,  # rows: true class, columns: predicted.
  }
  if cosine is None:
    angle = jnp.full(labels.shape, jnp.nan)
  else:
    own = jnp.take_along_axis(cosine, labels[:, None], axis=-1)[:, 0]
    angle = jnp.degrees(jnp.arccos(jnp.clip(own, -1.0, 1.0)))
  sums["angle_sum"] = angle @ true
  sums["angle_sq_sum"] = jnp.square(angle) @ true
  return sums


def add(a, b):
  return jax.tree.map(jnp.add, a, b)


def summarize(sums, important_classes: Sequence[int], prefix: str,
              per_class: bool = False) -> dict[str, float]:
  """Per-epoch numbers from accumulated sums.

  Returns `{prefix}_loss`, `{prefix}_accuracy` and `{prefix}_recall` (recall of
  the important classes, their mean when several; NaN when there are none);
  with `per_class`, also `{prefix}_recall_<k>`, `{prefix}_precision_<k>`
  (NaN where nothing was predicted as k) and the mean and variance in
  degrees^2 of the angle to the own class weight, `{prefix}_angle_mean_<k>`
  and `{prefix}_angle_var_<k>`.
  """
  sums = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(sums))
  confusion = sums["confusion"]
  support = confusion.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    recall = np.diag(confusion) / support
    precision = np.diag(confusion) / confusion.sum(axis=0)
    angle_mean = sums["angle_sum"] / support
    angle_var = np.maximum(sums["angle_sq_sum"] / support - angle_mean**2, 0.0)
  important = list(important_classes)
  out = {
      f"{prefix}_loss": sums["loss_sum"] / sums["count"],
      f"{prefix}_accuracy": np.trace(confusion) / sums["count"],
      f"{prefix}_recall": float(np.mean(recall[important])) if important else np.nan,
  }
  if per_class:
    for k in range(len(recall)):
      out[f"{prefix}_recall_{k}"] = recall[k]
    for k in range(len(recall)):
      out[f"{prefix}_precision_{k}"] = precision[k]
    for k in range(len(recall)):
      out[f"{prefix}_angle_mean_{k}"] = angle_mean[k]
      out[f"{prefix}_angle_var_{k}"] = angle_var[k]
  return {k: float(v) for k, v in out.items()}
