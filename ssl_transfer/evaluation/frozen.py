"""Evaluation of trained models on frozen features: what the runner and ``ssl-transfer eval`` read.

Every selection (the probe's regularisation C) reads the validation split; the test split is
read once per model, last. :func:`evaluate` returns one model block of results.json
(``linear_acc``, ``knn_acc``, ``val_linear_acc``, ``val_knn_acc``, ``linear``, ``knn``, and
``retrieval`` when ``eval.retrieval``). :func:`evaluate_checkpoint` evaluates a saved model file
(a run's teacher.pt / student.pt, a student's embedding, or a torchvision model).
"""

from __future__ import annotations

import os
import time
from typing import Any

from torch import nn

from linear_eval import extract_features, knn_accuracy, linear_probe

from ..config import RunConfig
from ..data import DataBundle
from ..errors import CheckpointError
from ..runtime import eval_device, setup_runtime


def evaluate(model: nn.Module, bundle: DataBundle, cfg: RunConfig, test: bool = True) -> dict[str, Any]:
    """Linear probe and kNN on frozen features of ``model``. Selection uses val; test once, last.

    ``test=False`` (while choosing: sweeps, studies) never reads the test split: its images are
    not even loaded, and ``linear_acc`` / ``knn_acc`` are None.
    """
    start = time.perf_counter()
    dev = eval_device(cfg)
    model.to(dev)
    splits = ("eval_train", "val", "test") if test else ("eval_train", "val")
    feats = {split: extract_features(model, bundle.eval_loader(split), dev, channels_last=cfg.trainer.channels_last)
             for split in splits}
    (tr_x, tr_y), (va_x, va_y) = feats["eval_train"], feats["val"]
    te_x, te_y = feats.get("test", (None, None))
    e = cfg.eval
    if e.protocol == "standard":
        probe = standard_probe(model, bundle, cfg, test, int(tr_x.shape[1]))
    else:
        probe = linear_probe(tr_x, tr_y, va_x, va_y, te_x, te_y, Cs=e.linear_Cs, max_iter=e.linear_max_iter,
                             tol=e.linear_tol, device=dev)
    knn_val = knn_accuracy(tr_x, tr_y, va_x, va_y, k=e.knn_k, temperature=e.knn_temperature)
    knn_test = knn_accuracy(tr_x, tr_y, te_x, te_y, k=e.knn_k, temperature=e.knn_temperature) if test else None
    out: dict[str, Any] = {}
    if e.retrieval and test:
        from linear_eval import retrieval_metrics

        out["retrieval"] = {"split": "test", "ks": list(e.recall_ks),
                            **retrieval_metrics(te_x, te_y, ks=tuple(e.recall_ks))}
    return {
        **out,
        "linear_acc": probe["test_acc"],
        "knn_acc": knn_test,
        "val_linear_acc": probe["val_acc_best"],
        "val_knn_acc": knn_val,
        "feat_dim": int(tr_x.shape[1]),
        "linear": probe,
        "knn": {"k": e.knn_k, "temperature": e.knn_temperature, "n_bank": int(len(tr_y)), "similarity": "cosine"},
        "eval_s": time.perf_counter() - start,
    }


def standard_probe(model: nn.Module, bundle: DataBundle, cfg: RunConfig, test: bool, feat_dim: int) -> dict:
    """``eval.protocol: standard``: lightly's LinearClassifier trained on the labelled eval_train
    images with random crops and flips, the epoch chosen on val, test read once after."""
    from .standard import standard_linear_probe, standard_transforms

    e = cfg.eval
    train_tf, _ = standard_transforms(bundle.image_size, bundle.raw.mean, bundle.raw.std,
                                      crop_scale=(e.standard_min_scale, 1.0))
    accelerator = "cpu" if eval_device(cfg).type == "cpu" else "gpu"
    return standard_linear_probe(
        model, bundle.labelled_loader("eval_train", train_tf, cfg.seed), bundle.eval_loader("val"),
        bundle.eval_loader("test") if test else None, num_classes=bundle.num_classes, feat_dim=feat_dim,
        epochs=e.standard_epochs, lr=e.standard_lr, batch_size=cfg.data.batch_size, seed=cfg.seed,
        trainer_kwargs={"accelerator": accelerator, "devices": 1, "logger": False, "enable_checkpointing": False,
                        "enable_progress_bar": False, "enable_model_summary": False})


def evaluates_embedding(cfg: RunConfig, student) -> bool:
    """Whether ``eval.student_embedding`` asks for the student's embedding to be evaluated too."""
    mode = cfg.eval.student_embedding
    if mode == "auto":
        return cfg.transfer.student_head != "none" and student.embed_dim != student.spec.feat_dim
    return mode == "always" and cfg.transfer.student_head != "none"


def evaluate_run(cfg: RunConfig, bundle: DataBundle, teacher, student, controls: dict) -> dict[str, Any]:
    """The model blocks of a run's results.json: teacher, student, every control and, when asked
    for, the student's embedding (backbone + head); ``eval_s`` sums their evaluation times."""
    results: dict[str, Any] = {"teacher": evaluate(teacher.backbone, bundle, cfg),
                               "student": evaluate(student.backbone, bundle, cfg),
                               "controls": {name: evaluate(r.backbone, bundle, cfg) for name, r in controls.items()}}
    if evaluates_embedding(cfg, student.model):
        embed = nn.Sequential(student.model.backbone, student.model.head)
        results["student_embedding"] = {**evaluate(embed, bundle, cfg), "features": "embedding (backbone + head)"}
    blocks = [results["teacher"], results["student"], *results["controls"].values()]
    results["eval_s"] = sum(b["eval_s"] for b in blocks + ([results["student_embedding"]]
                                                           if "student_embedding" in results else []))
    return results


def evaluate_checkpoint(path: str | os.PathLike, cfg: RunConfig, embedding: bool = False) -> dict[str, Any]:
    """Evaluate any saved backbone (teacher.pt / student.pt) on the config's dataset; with
    ``embedding`` a student's embedding (backbone + head)."""
    from ..io import load_model
    from ..stages.transfer import load_embedding

    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    setup_runtime(cfg)
    model, payload = load_embedding(path, cfg.transfer.student_head) if embedding else load_model(path)
    if payload["spec"]["in_channels"] != bundle.channels:
        raise CheckpointError(f"checkpoint '{path}' expects {payload['spec']['in_channels']} input channels "
                              f"but {cfg.data.name} has {bundle.channels}; evaluate it on a matching dataset")
    result = evaluate(model, bundle, cfg)
    if embedding:
        result["features"] = "embedding (backbone + head)"
    return {"checkpoint": str(path), "spec": payload["spec"], "data": {"name": cfg.data.name,
            "sizes": bundle.sizes()}, "eval": cfg.to_dict()["eval"], **result}


__all__ = ["evaluate", "evaluate_checkpoint", "evaluate_run", "evaluates_embedding"]
