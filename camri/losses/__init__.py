"""Losses for class-sensitive classification: pure functions, per-example values.

Every function returns one loss value per example (no reduction), in the style
of `optax.losses`; each documents its formula and source.
"""

from camri.losses.margin import (
    MARGIN_KINDS,
    arcface_loss,
    camri_loss,
    cosine_logits,
    margin_logits,
    margin_softmax_loss,
    margin_target_logit,
    margin_vector,
    normface_loss,
)
