"""Proxy-Anchor loss (Kim et al., CVPR 2020): the metric-learning teacher's loss.

One learnable proxy p_c ∈ R^d per training class. With s(x, p) the cosine similarity of an
embedding and a proxy, P the set of all C proxies, P⁺ the proxies of the classes present in
the batch, X_p⁺ the batch embeddings of p's class and X_p⁻ the others (the paper's eq. 4)::

    L = 1/|P⁺| Σ_{p∈P⁺} log(1 + Σ_{x∈X_p⁺} exp(-α (s(x, p) - δ)))
      + 1/|P|  Σ_{p∈P}  log(1 + Σ_{x∈X_p⁻} exp( α (s(x, p) + δ)))

Defaults δ = 0.1 (margin), α = 32, as in the paper. Proxies are initialised as in the authors'
code: ``kaiming_normal_(proxies, mode='fan_out')``, i.e. N(0, 2 / C). The paper trains them
with a 100× larger learning rate than the network: give ``loss.proxies`` its own parameter
group.

The value is computed by pytorch-metric-learning's ``ProxyAnchorLoss`` (pml ≥ 2.5), which is
exactly eq. 4: embeddings and proxies are L2-normalised (``F.normalize``, eps 1e-12: an all-zero
embedding has similarity 0 with every proxy, where the formula is undefined), the log(1 + Σ exp)
terms are evaluated as a log-sum-exp with an appended 0 (stable for large α; a proxy without
positives, or with no negatives, contributes log 1 = 0), the positive sum is divided by the
number of proxies with positives in the batch and the negative sum by the number of classes
C, including the classes absent from the batch (tests/test_proxy_anchor.py checks value and
gradients against a direct implementation of the formula). This wrapper differs from calling pml
directly in three ways:

- pml moves its proxies to the dtype and device of the embeddings *in place* (``proxies.data =
  ...``): half-precision embeddings would turn the float32 proxies into float16 for good. Here
  the embeddings are cast to the proxies' dtype instead, and a device mismatch is an error.
- It runs outside autocast, in the proxies' dtype: α = 32 times a float16 cosine is too coarse.
- Inputs are checked (shapes, label range) with one-line errors; the state dict holds only
  ``proxies``, whatever pml keeps inside.

Example::

    loss = ProxyAnchorLoss(num_classes=100, embed_dim=512)
    value = loss(embeddings, labels)          # (n, 512), (n,) in 0..99 -> scalar
    optim = torch.optim.AdamW([{"params": model.parameters(), "lr": 1e-4},
                               {"params": [loss.proxies], "lr": 1e-2}])
"""

from __future__ import annotations

import torch
from torch import nn


def _keep_types(dtype, device) -> None:
    """Stands in for pml's ``cast_types``, which casts the proxies in place to the embeddings'
    dtype and device (a module-level function, so the loss still copies and pickles)."""


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor loss over ``num_classes`` learnable proxies of size ``embed_dim``.

    ``forward(embeddings (n, d), labels (n,) int in [0, num_classes)) -> scalar``. Embeddings
    need not be normalised. ``proxies``: nn.Parameter (num_classes, embed_dim).
    """

    def __init__(self, num_classes: int, embed_dim: int, margin: float = 0.1, alpha: float = 32.0):
        super().__init__()
        if int(num_classes) < 1 or int(embed_dim) < 1:
            raise ValueError(f"num_classes and embed_dim must be at least 1, got {num_classes} and {embed_dim}")
        if not alpha > 0:
            raise ValueError(f"alpha (the scale of the similarities) must be > 0, got {alpha}")
        self.num_classes, self.embed_dim = int(num_classes), int(embed_dim)
        self.margin, self.alpha = float(margin), float(alpha)
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embed_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        # imported here: pytorch-metric-learning imports scipy.stats (0.7 s), which every config check
        # would pay, since the loss registry is read when a config is validated
        from pytorch_metric_learning.losses import ProxyAnchorLoss as _PMLProxyAnchorLoss

        pml = _PMLProxyAnchorLoss(self.num_classes, self.embed_dim, margin=self.margin, alpha=self.alpha)
        pml.cast_types = _keep_types  # an instance attribute: shadows the method
        del pml.proxies  # pml's own proxies are replaced by ours at every call
        # kept in a tuple: not a submodule, so parameters() and state_dict() hold only our proxies
        self._pml = (pml,)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, margin={self.margin}, alpha={self.alpha}"

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim or embeddings.shape[0] == 0:
            raise ValueError(
                f"embeddings must be (n, {self.embed_dim}) with n >= 1, got {tuple(embeddings.shape)}; "
                f"the loss was built for embed_dim = {self.embed_dim}"
            )
        if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be ({embeddings.shape[0]},), one per embedding, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if embeddings.device != self.proxies.device:
            raise ValueError(
                f"embeddings are on {embeddings.device} but the proxies on {self.proxies.device}; move the loss "
                "module with the model (loss.to(device))"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) (one proxy per training class), got values in "
                f"[{low}, {high}]; build the loss with num_classes = the number of training classes and "
                "remap labels to 0..num_classes-1"
            )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=embeddings.device)
        self._check(embeddings, labels)
        pml = self._pml[0]
        pml.proxies = self.proxies  # registered in pml's (hidden) module only
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return pml(embeddings.to(self.proxies.dtype), labels.long())
