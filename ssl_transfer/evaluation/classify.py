"""Evaluation of classifiers (task classify): each model's own top-1 accuracy.

The headline of classification transfer is the test top-1 of the trained classifier itself
(backbone + its linear classifier; for an SSL teacher, backbone + the probe fitted on the
labelled images). **Which weights:** the model after its last training step; no epoch or
checkpoint is chosen, so nothing is selected on test. The validation top-1 is reported beside it;
choices between runs (lambda, sigma, the KD temperature: ``bench.classify``) read that only.
``test=False`` does not read the test split.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from linear_eval import extract_features

from ..runtime import eval_device


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    if k == 1:
        return float((logits.argmax(1) == labels).float().mean())
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def top1(model: nn.Module, bundle, cfg, test: bool = True) -> dict[str, Any]:
    """``{"val_top1_acc", "top1_acc", "top5_acc", "eval_s"}`` of ``model`` (images -> logits)
    on the validation and (``test``) test splits, un-augmented; fractions in [0, 1]. ``top1_acc``
    and ``top5_acc`` (more than 10 classes only) are None with ``test=False``."""
    start = time.perf_counter()
    dev = eval_device(cfg)
    model.to(dev)
    val_z, val_y = extract_features(model, bundle.eval_loader("val"), dev, channels_last=cfg.trainer.channels_last)
    out: dict[str, Any] = {"val_top1_acc": _accuracy(val_z, val_y), "top1_acc": None, "top5_acc": None}
    if test:  # every choice is made: the test split is read once, here
        te_z, te_y = extract_features(model, bundle.eval_loader("test"), dev,
                                      channels_last=cfg.trainer.channels_last)
        out["top1_acc"] = _accuracy(te_z, te_y)
        if te_z.shape[1] > 10:
            out["top5_acc"] = _accuracy(te_z, te_y, k=5)
    model.cpu()
    out["eval_s"] = time.perf_counter() - start
    return out


def evaluate_classify(cfg, bundle, teacher, student, controls: dict, test: bool = True) -> dict[str, Any]:
    """The model blocks of a classify run's results.json: ``teacher`` (its classifier: supervised,
    external ``fc`` or the probe), ``student`` and ``controls`` (``ce_only``, ``teacher_finetuned``),
    each with :func:`top1`'s numbers; ``labels`` (labelled / unlabelled pool sizes); ``eval_s`` sums
    their times."""
    t = teacher.model
    results: dict[str, Any] = {
        "teacher": {**top1(t.model(), bundle, cfg, test), "classifier": t.classifier_kind,
                    **({"probe": t.info} if t.info else {})},
        "student": top1(student.model, bundle, cfg, test),
        "controls": {name: top1(r.model, bundle, cfg, test) for name, r in controls.items()},
    }
    blocks = [results["teacher"], results["student"], *results["controls"].values()]
    results["selection"] = "final step of every model (no checkpoint chosen); val top-1 reported beside"
    from ..stages.classify_data import pools

    labelled, unlabelled = pools(bundle)
    results["labels"] = {"label_fraction": cfg.data.label_fraction, "labelled": int(len(labelled)),
                         "unlabelled": int(len(unlabelled)), "unlabelled_used": bool(cfg.classify.unlabelled)}
    results["eval_s"] = sum(b["eval_s"] for b in blocks)
    return results


__all__ = ["evaluate_classify", "top1"]
