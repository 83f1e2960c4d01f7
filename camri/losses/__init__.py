"""Losses for class-sensitive classification: pure functions, per-example values.

Every function returns one loss value per example (no reduction), in the style
of `optax.losses`; each documents its formula and source. Batch-level terms
(CC-Loss's pairwise term, EM-Softmax's HSIC term) are added to every
example's value, so the batch mean is the batch loss. Each loss family has
its prediction rule: argmax of the (N, K) scores named in docs/losses.md.
"""

from camri.losses.channel_correlation import (
    ChannelAttention,
    cc_loss,
    channel_correlation_term,
)
from camri.losses.class_vectors import important_class_vector
from camri.losses.competing_ratio import competing_ratio_loss
from camri.losses.distances import squared_distances
from camri.losses.ensemble import (
    em_softmax_loss,
    em_softmax_scores,
    ensemble_logits,
    linear_hsic,
    pairwise_hsic,
    soft_margin_softmax_loss,
)
from camri.losses.gaussian_mixture import lgm_logits, lgm_loss, lgm_scores
from camri.losses.margin import (
    MARGIN_KINDS,
    NO_MARGIN,
    arcface_loss,
    camri_loss,
    class_sensitive_cosface_loss,
    cosface_loss,
    cosine_logits,
    margin_cross_entropy,
    margin_logits,
    margin_softmax_loss,
    margin_target_logit,
    margin_vector,
    normface_loss,
)
from camri.losses.simplex import (
    default_hinge_margin,
    nearest_center_scores,
    nirvana_hinge_loss,
    nirvana_loss,
    simplex_centers,
    simplex_edge_length,
)
from camri.losses.weighted import (
    class_weights,
    cross_entropy,
    rwwce_loss,
    rwwce_weights,
    weighted_cross_entropy,
)
