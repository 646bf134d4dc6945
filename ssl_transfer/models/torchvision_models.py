"""One entry point for the networks we evaluate: ssl-transfer checkpoints and torchvision models.

``load_backbone(spec, weights=None) -> (backbone, info)``; the backbone maps images
(n, C, H, W) to penultimate features (n, info["feat_dim"]) and is returned in eval mode on CPU.
It is what ``ssl-transfer eval torchvision:NAME --weights FILE`` evaluates; the features then go
to :func:`linear_eval.extract_features` and the probes.

Accepted specs:

- a path to an ssl-transfer ``teacher.pt`` / ``student.pt`` (the backbone and the spec that
  rebuilds it, written by :func:`ssl_transfer.io.save_model`); read by
  :func:`ssl_transfer.io.load_model`. ``weights`` must be None (the file holds them).
- ``"torchvision:<name>"`` with ``<name>`` one of ``torchvision.models.list_models()`` that ends
  in a linear classifier (ResNets, ResNeXts, RegNets, ViTs, Swin, ConvNeXt, EfficientNets,
  MobileNets, VGG, DenseNet, ...). The model is built with ``weights=None`` (nothing is ever
  downloaded); its last ``nn.Linear`` (the 1000-way classifier) is replaced by ``nn.Identity``
  so it outputs the features that classifier would have seen. ``weights`` optionally names a
  state-dict file (``torch.save(model.state_dict())``, read by
  :func:`ssl_transfer.io.read_checkpoint`, i.e. ``weights_only=True``) for either the full
  model (classifier keys included; the classifier is dropped after loading) or the headless
  model (no classifier keys). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a
  ``module.`` prefix on every key (DDP) are unwrapped; anything else must match exactly:
  loading is always strict, and a mismatch raises listing the missing, unexpected and wrongly
  shaped keys.

Errors raise :class:`BackboneError` (a ``CheckpointError``, so the CLI prints one line, and a
``ValueError``); a bad ssl-transfer checkpoint raises ``load_model``'s ``CheckpointError``.

Example:
    >>> net, info = load_backbone("runs/cifar10/student.pt")
    >>> net, info = load_backbone("torchvision:resnet50", weights="resnet50_supervised.pth")
    >>> info["feat_dim"]   # 2048
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import load_model, read_checkpoint
from .weights import state_dict_mismatch

TORCHVISION_PREFIX = "torchvision:"


class BackboneError(CheckpointError, ValueError):
    """A backbone spec or weights file cannot be turned into a feature extractor."""


def torchvision_names() -> list[str]:
    """Classification model names torchvision can build (the ``<name>`` of ``torchvision:<name>``)."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def _classifier(net: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """(qualified name, module) of the last ``nn.Linear``, checked to be the 1000-way classifier."""
    linears = [(k, m) for k, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != 1000:
        raise BackboneError(f"torchvision model '{name}' does not end in a linear 1000-way classifier, so "
                            "its penultimate features are not defined here; use a model such as resnet50")
    return linears[-1]


def _set_submodule(net: nn.Module, qualified: str, module: nn.Module) -> None:
    parent, _, child = qualified.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        sd = read_checkpoint(path)
    except CheckpointError as e:
        raise BackboneError(str(e)) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"weights file '{path}' is not a state_dict (a dict of tensors); "
                            "save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_strict(net: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    problem = state_dict_mismatch(net.state_dict(), sd, file_word="")
    if problem:
        raise BackboneError(f"weights do not match {what}: {problem}; pass the state_dict of this exact architecture")
    net.load_state_dict(sd, strict=True)


def _torchvision_backbone(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, dict]:
    from torchvision import models

    names = torchvision_names()
    if name not in names:
        raise BackboneError(f"unknown torchvision model '{name}'; use one of {', '.join(names)}")
    net = models.get_model(name, weights=None)  # random init, never a download
    head_name, head = _classifier(net, name)
    sd = _read_state_dict(weights) if weights is not None else None
    has_head = sd is not None and any(k.startswith(head_name + ".") for k in sd)
    if has_head:  # a full-model state dict: load, then drop the classifier
        _load_strict(net, sd, f"torchvision:{name}")
    _set_submodule(net, head_name, nn.Identity())
    if sd is not None and not has_head:  # a headless state dict
        _load_strict(net, sd, f"torchvision:{name} without its classifier '{head_name}'")
    info = {"source": "torchvision", "spec": f"{TORCHVISION_PREFIX}{name}", "arch": name,
            "feat_dim": int(head.in_features), "weights": None if weights is None else str(weights),
            "removed_classifier": head_name}
    return net, info


def load_backbone(spec: str | os.PathLike, weights: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a frozen-feature extractor; returns ``(backbone in eval mode on CPU, info)``.

    Args:
        spec: path to an ssl-transfer ``teacher.pt`` / ``student.pt``, or ``"torchvision:<name>"``.
        weights: optional state-dict file for a torchvision model (None: random init).

    ``info`` has ``source`` ("checkpoint" or "torchvision"), ``spec``, ``feat_dim`` and, for
    checkpoints, ``path``; for torchvision models ``arch``, ``weights`` and ``removed_classifier``.
    """
    s = os.fspath(spec)
    if s.startswith(TORCHVISION_PREFIX):
        net, info = _torchvision_backbone(s[len(TORCHVISION_PREFIX):], weights)
    elif Path(s).suffix in (".pt", ".pth") or Path(s).exists():
        if weights is not None:
            raise BackboneError(f"'{s}' is an ssl-transfer checkpoint that holds its own weights; "
                                "drop the weights argument")
        net, payload = load_model(s)
        info = {"source": "checkpoint", "path": s, "spec": dict(payload["spec"]),
                "feat_dim": int(payload["spec"]["feat_dim"])}
    else:
        raise BackboneError(f"unknown backbone '{s}'; pass a teacher.pt / student.pt path or "
                            "'torchvision:<name>' (e.g. torchvision:resnet50)")
    return net.eval(), info
