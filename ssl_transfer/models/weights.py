"""Backbone weights from other tools: read a checkpoint, find the backbone's keys, load strictly.

Accepted files (all read by :func:`ssl_transfer.io.read_checkpoint`, i.e.
``torch.load(weights_only=True)``: tensors and plain Python values only; ``unsafe=True`` /
``--unsafe-load`` allows full unpickling of a file you trust):

=====================================  ===========================================================
this project's teacher.pt / student.pt  ``{"spec", "backbone", ...}``: the ``backbone`` entry
Lightning checkpoint (lightly,          ``{"state_dict": {...}}``: e.g. ``backbone.conv1.weight``
solo-learn, this project's .ckpt)
MoCo / DINO style                       ``{"state_dict" | "model" | "net": {...}}``, e.g.
                                        ``module.encoder_q.conv1.weight``
torchvision / plain state dict          ``{"conv1.weight": ..., "fc.weight": ...}``
=====================================  ===========================================================

**Prefix.** The target is the torchvision key set of the backbone built from the spec
(``conv1.weight`` ... ``layer4.1.bn2.num_batches_tracked``; the classifier ``fc`` is replaced by
an identity). Every prefix P such that ``P + key`` is in the file is a candidate; the one that
covers the most target keys wins (ties: the query/online encoder over the momentum one, i.e.
``backbone.`` over ``backbone_momentum.``/``momentum_backbone.``, ``encoder_q.`` over
``encoder_k.``; then the shortest). ``prefix=...`` (``--prefix``) forces one (``""``: none).
lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` backbones number the children
(``backbone.0.weight`` = ``conv1.weight``, ``backbone.4.0.conv1.weight`` =
``layer1.0.conv1.weight``); those numbers are mapped to torchvision's names.

**Strict.** Under the chosen prefix every target key must be present with the same shape and no
other key may remain, except the classifier ``fc.*`` (torchvision's ``fc.weight``/``fc.bias``,
MoCo's MLP ``fc.0``/``fc.2``), which the backbone replaces by an identity and which is dropped
(reported in ``info["dropped"]``). Keys outside the prefix (projection heads, momentum
encoders, optimiser state) belong to other modules and are ignored. Any mismatch raises one
:class:`CheckpointError` line listing the missing, unexpected and mis-shaped keys and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_write, read_checkpoint

#: Entries under which checkpoints nest their weights, tried in this order.
NESTED = ("state_dict", "model", "net", "backbone")
#: Children of torchvision's ResNet in order, as numbered by ``nn.Sequential(*children[:-1])``.
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
#: Prefix words of momentum / key encoders, never preferred over the online encoder on a tie.
_SECONDARY = re.compile(r"(momentum|encoder_k|_k\.|key|ema|target|teacher)")


def is_project_model(payload: Any) -> bool:
    """True for this project's teacher.pt / student.pt payloads (spec + backbone)."""
    return isinstance(payload, dict) and "spec" in payload and isinstance(payload.get("backbone"), dict)


def flat_state_dict(payload: Any, path: str | os.PathLike = "") -> dict[str, torch.Tensor]:
    """The tensor dict of a checkpoint: this project's ``backbone``, a nested ``state_dict`` /
    ``model`` / ``net`` entry, or the payload itself."""
    if is_project_model(payload):
        return dict(payload["backbone"])
    if isinstance(payload, dict):
        for key in NESTED:
            inner = payload.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in payload.items() if isinstance(k, str) and torch.is_tensor(v)}
        if tensors:
            return tensors
    raise CheckpointError(f"checkpoint '{path}' holds no state dict (a dict of tensors, or one under "
                          f"{', '.join(NESTED)}); pass backbone weights")


def _rename(key: str) -> str:
    """lightly's numbered Sequential children → torchvision names (``4.0.conv1`` → ``layer1.0.conv1``)."""
    head, _, rest = key.partition(".")
    if head.isdigit() and int(head) < len(_RESNET_CHILDREN) and rest:
        return f"{_RESNET_CHILDREN[int(head)]}.{rest}"
    return key


def _candidates(keys: list[str], target: set[str]) -> dict[str, dict[str, str]]:
    """prefix → {target key: file key} for every prefix under which some target key is found."""
    found: dict[str, dict[str, str]] = {}
    for k in keys:
        for i in [0] + [m.end() for m in re.finditer(r"\.", k)]:
            prefix, rest = k[:i], k[i:]
            for name in {rest, _rename(rest)}:
                if name in target:
                    found.setdefault(prefix, {})[name] = k
    return found


def _rank(prefix: str) -> tuple[int, int, str]:
    return (1 if _SECONDARY.search(prefix) else 0, len(prefix), prefix)


def _short(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_dict_mismatch(target: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                        mapping: dict[str, str] | None = None, unexpected: list[str] | None = None,
                        file_word: str = " in the file") -> str:
    """One-line description of how ``state`` fails to fit ``target`` strictly ("" when it fits):
    ``N missing (...)``, ``N unexpected (...)``, ``N of another shape (...)``.

    ``mapping`` maps target keys to the keys of ``state`` that fill them (default: the same key);
    ``unexpected`` lists the keys of ``state`` that fill nothing (default: those not in target).
    Shared by the teacher loader here and :func:`ssl_transfer.models.torchvision_models.load_backbone`.
    """
    mapping = {k: k for k in target if k in state} if mapping is None else mapping
    if unexpected is None:
        unexpected = [k for k in state if k not in target]
    missing = [k for k in target if k not in mapping]
    shapes = [f"{n} {tuple(state[k].shape)}{file_word} vs {tuple(target[n].shape)}"
              for n, k in mapping.items() if tuple(state[k].shape) != tuple(target[n].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_short(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({_short(shapes, 2)})")
    return "; ".join(parts)


def match_backbone(state: dict[str, torch.Tensor], backbone: nn.Module, prefix: str | None = None,
                   where: str = "checkpoint", what: str = "the backbone") -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state dict with the backbone's own keys, info)``; strict as the module docstring says.

    ``info``: ``prefix`` used, ``dropped`` (classifier keys), ``ignored`` (keys outside the prefix).
    """
    target = backbone.state_dict()
    names = set(target)
    keys = list(state)
    if prefix is None:
        cands = _candidates(keys, names)
        if not cands:
            raise CheckpointError(f"no key of {where} matches {what} (its first keys: {_short(keys, 3)}); check "
                                  "source.backbone/stem, or pass --prefix")
        best = max(len(m) for m in cands.values())
        prefix = min((p for p, m in cands.items() if len(m) == best), key=_rank)
    under = [k for k in keys if k.startswith(prefix)]
    mapped: dict[str, str] = {}  # backbone key → file key
    unexpected, dropped = [], []
    for k in under:
        rest = k[len(prefix):]
        name = rest if rest in names else _rename(rest)
        if name in names:
            mapped[name] = k
        elif name.startswith("fc."):
            dropped.append(k)
        else:
            unexpected.append(k)
    if not mapped:
        raise CheckpointError(f"no key of {where} under prefix '{prefix}' matches {what} (its first keys: "
                              f"{_short(keys, 3)}); omit --prefix to detect it, or pass the right one")
    problem = state_dict_mismatch(target, state, mapped, unexpected)
    if problem:
        missing = len(mapped) < len(target)
        hint = "check source.backbone/stem and the dataset's channels"
        hint += "" if missing and not unexpected else ", or pass --prefix"
        raise CheckpointError(f"{where} does not fit {what} under prefix '{prefix}': {problem}; {hint}")
    out = {n: state[k].to(target[n].dtype) if target[n].is_floating_point() else state[k] for n, k in mapped.items()}
    return out, {"prefix": prefix, "dropped": dropped, "ignored": len(keys) - len(under)}


def describe(spec: Any) -> str:
    d = spec if isinstance(spec, dict) else spec.to_dict()
    return f"a {d['arch']} ({d['stem']} stem, {d['in_channels']} input channels)"


def load_backbone_weights(path: str | os.PathLike, backbone: nn.Module, spec: Any, prefix: str | None = None,
                          unsafe: bool = False) -> dict:
    """Load the weights of ``path`` (any accepted format) into ``backbone`` in place; returns info.

    For this project's model files the saved spec must equal ``spec``.
    """
    payload = read_checkpoint(path, unsafe)
    where = f"checkpoint '{path}'"
    if is_project_model(payload):
        saved = payload["spec"]
        want = spec if isinstance(spec, dict) else spec.to_dict()
        if saved != want:
            raise CheckpointError(f"{where} holds {describe(saved)} but the config asks for {describe(want)}; set "
                                  "source.backbone/stem to match")
        prefix = ""
    state, info = match_backbone(flat_state_dict(payload, path), backbone, prefix, where, describe(spec))
    backbone.load_state_dict(state)
    return {**info, "format": "ssl-transfer" if is_project_model(payload) else "external"}


def _spec_hint(payload: Any) -> dict[str, Any]:
    """Architecture recorded in the file: this project's spec, or its Lightning source-stage
    hyper-parameters (``source.backbone/stem``, ``in_channels``)."""
    if is_project_model(payload):
        return dict(payload["spec"])
    hp = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    if isinstance(hp, dict) and isinstance(hp.get("source"), dict) and "in_channels" in hp:
        return {"arch": hp["source"].get("backbone"), "stem": hp["source"].get("stem"),
                "in_channels": hp["in_channels"]}
    return {}


def resolve_backbone(path: str | os.PathLike, arch: str | None = None, stem: str | None = None,
                     in_channels: int | None = None, prefix: str | None = None, unsafe: bool = False):
    """Build the backbone the file holds and load it: ``(backbone, spec, info)``.

    Unknown architecture details come from the file (this project's spec or hyper-parameters),
    else are inferred: input channels and stem kind from ``conv1.weight`` ((64, C, 7, 7):
    ``imagenet``; (64, C, 3, 3): ``cifar``, which has the same weights as ``small``), the
    architecture as the ResNet whose keys match exactly.
    """
    from .backbones import build_backbone

    payload = read_checkpoint(path, unsafe)
    hint = _spec_hint(payload)
    arch, stem = arch or hint.get("arch"), stem or hint.get("stem")
    in_channels = in_channels or hint.get("in_channels")
    if is_project_model(payload):
        prefix = ""
    state = flat_state_dict(payload, path)
    where = f"checkpoint '{path}'"
    archs = [arch] if arch else ["resnet18", "resnet34", "resnet50"]
    first_error: CheckpointError | None = None
    for a in archs:
        probe, _ = build_backbone(a, "imagenet", 3)
        p = prefix
        if p is None:
            cands = _candidates(list(state), set(probe.state_dict()))
            if not cands:
                first_error = first_error or CheckpointError(
                    f"no key of {where} matches a {a} backbone (its first keys: {_short(list(state), 3)}); pass "
                    "--arch or --prefix")
                continue
            best = max(len(m) for m in cands.values())
            p = min((q for q, m in cands.items() if len(m) == best), key=_rank)
        conv1 = state.get(p + "conv1.weight", state.get(p + "0.weight"))
        s = stem or ("imagenet" if conv1 is not None and conv1.shape[-1] == 7 else "cifar")
        c = in_channels or (int(conv1.shape[1]) if conv1 is not None else 3)
        backbone, spec = build_backbone(a, s, c)
        try:
            clean, info = match_backbone(state, backbone, p, where, describe(spec))
        except CheckpointError as e:
            first_error = first_error or e
            continue
        backbone.load_state_dict(clean)
        return backbone, spec, info
    assert first_error is not None
    raise first_error


def export_backbone(path: str | os.PathLike, out: str | os.PathLike, **kw) -> dict[str, Any]:
    """Write the backbone of ``path`` as a plain state dict with torchvision's key names (no
    ``fc``); never overwrites ``out``. Returns the spec and matching info."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"'{out}' already exists; choose another --out or delete it")
    backbone, spec, info = resolve_backbone(path, **kw)
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    atomic_write(out, lambda f: torch.save(state, f))
    return {"spec": spec.to_dict(), "keys": len(state), **info}
