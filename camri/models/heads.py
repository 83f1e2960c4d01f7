"""Classification heads: they own the class weights.

A head maps the feature z (N, D) to a dict of outputs that the objective's loss
and prediction rule read. Every head with one weight vector per class also
returns `cosine`, the (N, K) cosines between features and class weights, from
which the angle statistics are computed.
"""

import flax.linen as nn

from camri.losses import cosine_logits


class AngularHead(nn.Module):
  """Class weights W (D, K), no bias; outputs cos(theta_k) for the margin losses."""
  num_classes: int

  @nn.compact
  def __call__(self, z):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (z.shape[-1], self.num_classes))
    return {"cosine": cosine_logits(z, kernel)}


class LinearHead(nn.Module):
  """Dense layer with bias for cross-entropy and its weighted variants."""
  num_classes: int

  @nn.compact
  def __call__(self, z):
    dense = nn.Dense(self.num_classes)
    logits = dense(z)
    return {"logits": logits,
            "cosine": cosine_logits(z, dense.variables["params"]["kernel"])}
