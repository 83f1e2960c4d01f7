"""Objectives: a loss from `camri.losses`, the head it needs, and its prediction rule.

`config.loss.name` picks an entry of `OBJECTIVES`; its hyperparameters come from
`config.loss`. The prediction rule returns (N, K) scores whose argmax is the
predicted class, so accuracy and recall are right for every loss (no margin is
applied at inference).
"""

from collections.abc import Callable
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from camri import losses
from camri.models import AngularHead, LinearHead

Outputs = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """What training and evaluation need to know about a loss.

  Attributes:
    head: the head module mapping features to `Outputs`.
    loss: (outputs, labels) -> (N,) per-example losses.
    scores: outputs -> (N, K) scores; their argmax is the prediction.
  """
  head: nn.Module
  loss: Callable[[Outputs, jax.Array], jax.Array]
  scores: Callable[[Outputs], jax.Array]


def _cosine_scores(outputs):
  return outputs["cosine"]


def _margin_softmax(num_classes, margins, scale, kind="additive_angular"):
  margins = jnp.asarray(margins, jnp.float32)

  def loss(outputs, labels):
    logits = losses.margin_logits(outputs["cosine"], labels, margins, scale, kind)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  return Objective(AngularHead(num_classes), loss, _cosine_scores)


def cross_entropy(cfg, num_classes):
  del cfg

  def loss(outputs, labels):
    return optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels)

  return Objective(LinearHead(num_classes), loss, lambda o: o["logits"])


def camri(cfg, num_classes):
  margins = losses.margin_vector(num_classes, cfg.important_classes, cfg.margin)
  return _margin_softmax(num_classes, margins, cfg.scale)


def arcface(cfg, num_classes):
  return _margin_softmax(num_classes, [cfg.margin[0]] * num_classes, cfg.scale)


def normface(cfg, num_classes):
  return _margin_softmax(num_classes, [0.0] * num_classes, cfg.scale)


# name -> (constructor, the config.loss fields it reads beyond the name).
OBJECTIVES: dict[str, tuple[Callable[..., Objective], tuple[str, ...]]] = {
    "cross_entropy": (cross_entropy, ()),
    "camri": (camri, ("important_classes", "margin", "scale")),
    "arcface": (arcface, ("margin", "scale")),
    "normface": (normface, ("scale",)),
}


def make_objective(loss_config, num_classes: int) -> Objective:
  """The objective named by `loss_config.name`, with its hyperparameters."""
  if loss_config.name not in OBJECTIVES:
    raise ValueError(f"config.loss.name={loss_config.name!r} is unknown: "
                     f"choose one of {sorted(OBJECTIVES)}")
  make, _ = OBJECTIVES[loss_config.name]
  return make(loss_config, num_classes)
