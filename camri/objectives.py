"""Objectives: a loss from `camri.losses`, the head it needs, and its prediction rule.

`config.loss.name` picks an entry of `OBJECTIVES`; its hyperparameters come from
`config.loss` (validated, with each loss's defaults filled in, by
`config_lib.validate`). The prediction rule returns (N, K) scores whose argmax
is the predicted class, so accuracy and recall are right for every loss (no
margin is applied at inference):

    logits of a linear head        cross_entropy, wce, rwwce, competing_ratio, cc_loss
    cos(theta_k) (argmax cosine)   camri, arcface, cosface, class_sensitive_cosface, normface
    -||z - c_k||^2 (nearest simplex centre)   nirvana
    -1/2 ||z - mu_k||^2 (nearest Gaussian mean)   lgm
    mean_v softmax(z W^v) (ensemble average)   em_softmax

A loss's per-class vectors and scale (`HPARAM_FIELDS`) reach it as arrays,
`Objective.hparams`, an argument of the compiled step rather than constants in
it: the runs of a population (`camri.population`) differ in them and share one
program. Its other hyperparameters shape the program and are constants.
"""

from collections.abc import Callable
import dataclasses

import flax.linen as nn
import jax
import numpy as np

from camri import losses
from camri.models import heads

Outputs = dict[str, jax.Array]
Hparams = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """What training and evaluation need to know about a loss.

  Attributes:
    head: the head module mapping features to `Outputs`; the model's outputs
      are `{"features": z, **head(z)}`.
    loss: (outputs, labels, where) -> (N,) per-example losses; `where` (N,)
      marks the rows that are examples, for a batch-level term (CC-Loss's) to
      leave an evaluation batch's padding out. Per-example losses ignore it.
    scores: outputs -> (N, K) scores; their argmax is the prediction.
    hparams: the loss's numbers that runs of one program may differ in
      (`HPARAM_FIELDS`), as float32 arrays: per-class vectors (K,) and
      scalars.
  """
  head: nn.Module
  _loss: Callable[[Outputs, jax.Array, jax.Array | None, Hparams], jax.Array]
  scores: Callable[[Outputs], jax.Array]
  hparams: Hparams = dataclasses.field(default_factory=dict)

  def loss(self, outputs, labels, where=None, hparams: Hparams | None = None) -> jax.Array:
    """(N,) per-example losses, with `hparams` (default: the objective's own)."""
    return self._loss(outputs, labels, where, self.hparams if hparams is None else hparams)


def _per_example(loss):
  """`loss(outputs, labels, hparams)` as an `Objective` loss: each example's loss is its own."""
  return lambda outputs, labels, where, hparams: loss(outputs, labels, hparams)


def _f32(**values) -> Hparams:
  return {name: np.asarray(value, np.float32) for name, value in values.items()}


def _logits(outputs):
  return outputs["logits"]


def _cosine(outputs):
  return outputs["cosine"]


def _linear(num_classes, loss, hparams=None):
  """A linear head, `loss(logits, labels, hparams)`, argmax-logits prediction."""
  return Objective(heads.LinearHead(num_classes),
                   _per_example(lambda o, labels, h: loss(o["logits"], labels, h)), _logits,
                   hparams or {})


def _angular(num_classes, margins, scale, kind="additive_angular"):
  """An angular head, the margin-softmax core on its cosines, argmax-cosine prediction.

  `losses.camri_loss`, `arcface_loss`, ... are these configurations of the core
  as functions of (features, weights); the objective applies the core to the
  cosines the head computed for prediction, rather than computing them again.
  """
  return Objective(heads.AngularHead(num_classes),
                   _per_example(lambda o, labels, h: losses.margin_cross_entropy(
                       o["cosine"], labels, h["margins"], h["scale"], kind)), _cosine,
                   _f32(margins=margins, scale=scale))


def cross_entropy(cfg, num_classes):
  del cfg
  return _linear(num_classes, lambda logits, labels, h: losses.cross_entropy(logits, labels))


def wce(cfg, num_classes):
  weights = losses.class_weights(num_classes, cfg.important_classes, cfg.important_weight)
  return _linear(num_classes, lambda logits, labels, h: losses.weighted_cross_entropy(
      logits, labels, h["class_weights"]), _f32(class_weights=weights))


def rwwce(cfg, num_classes):
  fn_weights, fp_weights = losses.rwwce_weights(
      num_classes, cfg.important_classes, cfg.fn_weight, cfg.fp_weight)
  return _linear(num_classes, lambda logits, labels, h: losses.rwwce_loss(
      logits, labels, h["fn_weights"], h["fp_weights"]),
                 _f32(fn_weights=fn_weights, fp_weights=fp_weights))


def competing_ratio(cfg, num_classes):
  return _linear(num_classes, lambda logits, labels, h: losses.competing_ratio_loss(
      logits, labels, cfg.alpha, cfg.beta))


def cc_loss(cfg, num_classes):

  def loss(outputs, labels, where, hparams):
    del hparams
    return losses.cc_loss(outputs["logits"], outputs["attention"], labels, cfg.cc_weight,
                          where=where)

  return Objective(heads.ChannelAttentionHead(num_classes, cfg.reduction), loss, _logits)


def camri(cfg, num_classes):
  return _angular(num_classes, losses.margin_vector(
      num_classes, cfg.important_classes, cfg.margin), cfg.scale)


def arcface(cfg, num_classes):
  return _angular(num_classes, [cfg.margin[0]] * num_classes, cfg.scale)


def cosface(cfg, num_classes):
  return _angular(num_classes, [cfg.margin[0]] * num_classes, cfg.scale, "additive_cosine")


def class_sensitive_cosface(cfg, num_classes):
  margins = losses.margin_vector(num_classes, cfg.important_classes, cfg.margin,
                                 default=losses.NO_MARGIN["additive_cosine"])
  return _angular(num_classes, margins, cfg.scale, "additive_cosine")


def normface(cfg, num_classes):
  return _angular(num_classes, [0.0] * num_classes, cfg.scale)


def nirvana(cfg, num_classes):
  if cfg.hinge:
    margin = (cfg.hinge_margin if cfg.hinge_margin is not None
              else losses.default_hinge_margin(num_classes, cfg.radius))
    loss = lambda o, labels, h: losses.nirvana_hinge_loss(
        o["features"], o["centers"], labels, margin)
  else:
    loss = lambda o, labels, h: losses.nirvana_loss(o["features"], o["centers"], labels)
  return Objective(heads.SimplexHead(num_classes, cfg.radius), _per_example(loss),
                   lambda o: losses.nearest_center_scores(o["features"], o["centers"]))


def lgm(cfg, num_classes):

  def loss(outputs, labels, hparams):
    del hparams
    return losses.lgm_loss(outputs["features"], outputs["means"], labels, cfg.alpha,
                           cfg.likelihood_weight)

  return Objective(heads.GaussianMeansHead(num_classes), _per_example(loss),
                   lambda o: losses.lgm_scores(o["features"], o["means"]))


def em_softmax(cfg, num_classes):

  def loss(outputs, labels, hparams):
    del hparams
    return losses.em_softmax_loss(outputs["features"], outputs["weights"], labels,
                                  cfg.margin[0], cfg.hsic_weight)

  return Objective(heads.EnsembleHead(num_classes, cfg.num_heads), _per_example(loss),
                   lambda o: losses.em_softmax_scores(o["features"], o["weights"]))


# name -> (constructor, the config.loss fields it reads beyond the name). The
# fields' defaults are in `config_lib.LOSS_DEFAULTS`; docs/losses.md has the table.
OBJECTIVES: dict[str, tuple[Callable[..., Objective], tuple[str, ...]]] = {
    "cross_entropy": (cross_entropy, ()),
    "wce": (wce, ("important_classes", "important_weight")),
    "rwwce": (rwwce, ("important_classes", "fn_weight", "fp_weight")),
    "camri": (camri, ("important_classes", "margin", "scale")),
    "arcface": (arcface, ("margin", "scale")),
    "cosface": (cosface, ("margin", "scale")),
    "class_sensitive_cosface": (class_sensitive_cosface,
                                ("important_classes", "margin", "scale")),
    "normface": (normface, ("scale",)),
    "nirvana": (nirvana, ("radius", "hinge", "hinge_margin")),
    "cc_loss": (cc_loss, ("cc_weight", "reduction")),
    "competing_ratio": (competing_ratio, ("alpha", "beta")),
    "lgm": (lgm, ("alpha", "likelihood_weight")),
    "em_softmax": (em_softmax, ("num_heads", "margin", "hsic_weight")),
}


def make_objective(loss_config, num_classes: int, *,
                   head_kernel_init: nn.initializers.Initializer | None = None) -> Objective:
  """The objective named by `loss_config.name`, with its (validated) hyperparameters.

  Args:
    loss_config: `config.loss`.
    num_classes: K.
    head_kernel_init: the initialiser of the head's class-weight matrix, for
      the heads that learn one (those with a `kernel_init` field: linear,
      angular); None: the head's default. The other heads' class parameters
      are fixed (Nirvana) or start as their own papers say (L-GM, EM-Softmax).
  """
  if loss_config.name not in OBJECTIVES:
    raise ValueError(f"config.loss.name={loss_config.name!r} is unknown: "
                     f"choose one of {sorted(OBJECTIVES)}")
  make, _ = OBJECTIVES[loss_config.name]
  objective = make(loss_config, num_classes)
  if head_kernel_init is not None and hasattr(objective.head, "kernel_init"):
    objective = dataclasses.replace(objective,
                                    head=objective.head.clone(kernel_init=head_kernel_init))
  return objective
