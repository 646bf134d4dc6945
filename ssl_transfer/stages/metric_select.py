"""Retrieval on the embeddings of task metric, and choosing a stage's weights on validation classes.

**Retrieval** (:func:`split_metrics`): the embeddings (n, d) of a split's un-augmented images
(``bundle.eval_loader``), ranked by cosine similarity, each image a query against all others
(:func:`linear_eval.retrieval_metrics`, chunked: memory ~ 8·n·d + 16·chunk·n bytes, about 1.3 GiB
for SOP's 60,502 test images at chunk 1024): Recall@K for ``eval.recall_ks``, MAP@R,
R-precision, and NMI (k-means, one cluster per class) when ``metric.nmi``.

**Choosing on validation classes** (``metric.select_every`` = E > 0): :class:`ValSelector`
evaluates the model in training on the validation split (``data.val_classes`` whole classes of
the training split, never trained on) every E epochs and at the last step (in global rank 0,
the score broadcast to every process; the random state is left as it was), logs
``val_<metric>`` in logs/<stage>/metrics.csv and keeps a copy of the weights with the best
``metric.select_metric`` (the earliest on a tie). After training the stage continues with those
weights (:meth:`MetricContext.fit`) and logs/<stage>/selection.json records the curve and the
choice. The test split is never read while training. The selector's state (curve, best score
and weights) travels in last.ckpt, so ``--resume`` chooses as an uninterrupted run would.
With E = 0 a stage ends with its final weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch import nn

from linear_eval import extract_features, nmi, retrieval_metrics

from ..io import atomic_write_text
from ..monitor import Cast
from ..runtime import fit, stage_outputs, steps_for
from .base import StageContext


def embedding_net(model: nn.Module) -> nn.Module:
    """The embedding function (n, C, H, W) -> (n, d) of a metric model: a transfer
    :class:`~ssl_transfer.stages.transfer.Student`, a LightningModule holding one (``student``) or
    a Proxy-Anchor module (``net``); float32 in and out whatever the network's dtype."""
    net = getattr(model, "student", None) or getattr(model, "net", None) or model
    embed = nn.Sequential(net.backbone, net.head)
    dtype = next(embed.parameters()).dtype
    return embed if dtype == torch.float32 else Cast(embed, dtype)


def split_metrics(net: nn.Module, bundle, cfg, split: str, device=None, with_nmi: bool | None = None) -> dict:
    """Retrieval metrics (fractions) of ``net``'s embeddings of one split (``val`` or ``test``)."""
    device = device or next(net.parameters()).device
    x, y = extract_features(net, bundle.eval_loader(split), device, channels_last=cfg.trainer.channels_last)
    out = retrieval_metrics(x, y, ks=tuple(cfg.eval.recall_ks), chunk_size=cfg.metric.chunk_size)
    if cfg.metric.nmi if with_nmi is None else with_nmi:
        out["nmi"] = nmi(x, y, seed=cfg.seed)
    out.update(n=int(len(y)), classes=int(torch.unique(y).numel()), embed_dim=int(x.shape[1]))
    return out


def _trained(module: nn.Module) -> nn.Module:
    """The part of a LightningModule that training changes: the transfer student, else all of it."""
    return getattr(module, "student", None) or module


class ValSelector(L.Callback):
    """Every ``every`` steps and at step ``total``: ``score(module)`` on the validation split;
    keeps the weights with the highest score (the first one on a tie)."""

    def __init__(self, score: Callable[[nn.Module], float], every: int, total: int, steps_per_epoch: int,
                 metric: str):
        self.score, self.every, self.total = score, every, total
        self.steps_per_epoch, self.metric = steps_per_epoch, metric
        self.history: list[dict] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "ValSelector"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step < self.total:
            return
        rng = torch.get_rng_state()  # choosing leaves the training run as it would be without it
        try:
            value = float(self.score(pl_module)) if trainer.is_global_zero else 0.0
        finally:
            torch.set_rng_state(rng)
        value = float(trainer.strategy.broadcast(value, src=0))  # every process keeps the same weights
        self.history.append({"step": step, "epoch": step / self.steps_per_epoch, self.metric: value})
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"val_{self.metric}": value}, step=step)
        if value > self.best_score:
            self.best_score, self.best_step = value, step
            self.best_state = {k: v.detach().cpu().clone() for k, v in _trained(pl_module).state_dict().items()}

    def state_dict(self) -> dict:
        return {"history": self.history, "best_step": self.best_step, "best_score": self.best_score,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_step = list(state["history"]), state["best_step"]
        self.best_score, self.best_state = state["best_score"], state["best_state"]

    def restore(self, module: nn.Module) -> None:
        """Put the chosen weights into ``module``."""
        if self.best_state is not None:
            _trained(module).load_state_dict(self.best_state)

    def summary(self) -> dict:
        return {"metric": f"val_{self.metric}", "every_steps": self.every, "total_steps": self.total,
                "chosen_step": self.best_step, "chosen_epoch": None if self.best_step is None else
                self.best_step / self.steps_per_epoch, "chosen_score": self.best_score, "history": self.history}


class MetricContext(StageContext):
    """The runner's :class:`StageContext` whose ``fit`` chooses the weights on the validation
    classes when ``metric.select_every`` > 0 (the stages of task metric train through it)."""

    @classmethod
    def of(cls, ctx: StageContext) -> MetricContext:
        return ctx if isinstance(ctx, cls) else cls(ctx.cfg, ctx.bundle, ctx.run_dir, ctx.resume)

    def fit(self, stage: str, module: L.LightningModule, loader, epochs: float, seed: int) -> float:
        m = self.cfg.metric
        if m.select_every <= 0:
            return super().fit(stage, module, loader, epochs, seed)
        per_epoch = len(loader)

        def score(pl_module: nn.Module) -> float:  # on the training device
            return split_metrics(embedding_net(pl_module), self.bundle, self.cfg, "val", with_nmi=False)[m.select_metric]

        selector = ValSelector(score, steps_for(m.select_every, per_epoch), steps_for(epochs, per_epoch), per_epoch,
                               m.select_metric)
        self.run_dir.register(*stage_outputs(stage))
        seconds = fit(self.cfg, self.run_dir.work, stage, module, loader, epochs, seed, self.resume, selector)
        selector.restore(module)
        atomic_write_text(self.path(f"logs/{stage}/selection.json"), json.dumps(selector.summary(), indent=1))
        return seconds


def read_selection(result) -> dict | None:
    """The selection record of a stage result (logs/<name>/selection.json beside its model file)."""
    if result.path is None:
        return None
    path = Path(result.path).parent / "logs" / result.name / "selection.json"
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = ["MetricContext", "ValSelector", "embedding_net", "read_selection", "split_metrics"]
