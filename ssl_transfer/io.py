"""Atomic file writes, the one checkpoint reader, and the portable model format (backbone + spec).

Every output of a run goes through these writers; in DDP worker processes (global rank > 0)
they write nothing, so processes never race on a file: global rank 0 writes every output.
Every checkpoint the project reads (its own model files, Lightning checkpoints, other tools'
weights, torchvision state dicts) goes through :func:`read_checkpoint`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import is_global_zero
from .errors import CheckpointError
from .models import BackboneSpec, build_from_spec

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, renamed into place; the file gets the
    permissions of an ordinary new file (0666 minus the umask, not mkstemp's 0600)."""
    if not is_global_zero():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_model(path: str | os.PathLike, backbone: nn.Module, spec: BackboneSpec,
               extra: dict[str, Any] | None = None) -> None:
    """Save a backbone with the spec needed to rebuild it (architecture, stem, channels, dim)."""
    payload = {"format_version": FORMAT_VERSION, "spec": spec.to_dict(),
               "backbone": backbone.state_dict(), **(extra or {})}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def read_checkpoint(path: str | os.PathLike, unsafe: bool = False) -> Any:
    """``torch.load`` a file on the CPU; a one-line :class:`CheckpointError` if it is missing,
    unreadable, or (unless ``unsafe``) holds pickled Python objects besides tensors.

    Read with ``weights_only=True`` (tensors and plain Python values only); ``unsafe=True``
    (``--unsafe-load``) allows full unpickling of a file you trust.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist; pass a teacher.pt, a Lightning .ckpt or a "
                              "state dict (.pth)")
    try:
        return torch.load(p, map_location="cpu", weights_only=not unsafe)
    except Exception as e:
        if not unsafe and "Unsupported global" in str(e):  # the weights-only unpickler met a class
            raise CheckpointError(f"checkpoint '{p}' holds Python objects besides tensors and cannot be read "
                                  "safely; if you trust its source, pass --unsafe-load") from None
        raise CheckpointError(f"checkpoint '{p}' cannot be read ({type(e).__name__}); it is truncated or "
                              "not a torch file, re-create it") from None


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone saved by :func:`save_model`; returns ``(backbone, payload)``."""
    p = Path(path)
    payload = read_checkpoint(p)
    if not isinstance(payload, dict) or "spec" not in payload or "backbone" not in payload:
        raise CheckpointError(f"checkpoint '{p}' is not an ssl-transfer model file (no spec/backbone)")
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint '{p}' has format version {version}, newer than this "
                              f"ssl-transfer ({FORMAT_VERSION}); upgrade ssl-transfer")
    try:
        net = build_from_spec(payload["spec"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{p}' has a malformed spec {payload['spec']!r} ({e}); it was not written "
                              "by ssl-transfer's save_model, re-create it") from None
    from .models.weights import state_dict_mismatch

    state = payload["backbone"]
    problem = state_dict_mismatch(net.state_dict(), state) if isinstance(state, dict) else "not a state dict"
    if problem:
        raise CheckpointError(f"checkpoint '{p}' does not match its spec {payload['spec']}: {problem}; re-create it")
    net.load_state_dict(state)
    return net, payload
