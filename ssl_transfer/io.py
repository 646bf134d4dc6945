"""Atomic file writes and the portable model checkpoint format (backbone + spec).

Every output of a run goes through these writers; in DDP worker processes (global rank > 0)
they write nothing, so processes never race on a file: global rank 0 writes every output.
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


def _atomic_replace(path: Path, write) -> None:
    if not is_global_zero():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    _atomic_replace(Path(path), lambda f: f.write(text.encode()))


def save_model(path: str | os.PathLike, backbone: nn.Module, spec: BackboneSpec,
               extra: dict[str, Any] | None = None) -> None:
    """Save a backbone with the spec needed to rebuild it (architecture, stem, channels, dim)."""
    payload = {"format_version": FORMAT_VERSION, "spec": spec.to_dict(),
               "backbone": backbone.state_dict(), **(extra or {})}
    _atomic_replace(Path(path), lambda f: torch.save(payload, f))


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone saved by :func:`save_model`; returns ``(backbone, payload)``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist; pass the teacher.pt or student.pt of a run")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{p}' cannot be read ({type(e).__name__}); it is truncated "
                              "or not a torch file, re-create it") from None
    if not isinstance(payload, dict) or "spec" not in payload or "backbone" not in payload:
        raise CheckpointError(f"checkpoint '{p}' is not an ssl-transfer model file (no spec/backbone)")
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint '{p}' has format version {version}, newer than this "
                              f"ssl-transfer ({FORMAT_VERSION}); upgrade ssl-transfer")
    net = build_from_spec(payload["spec"])
    try:
        net.load_state_dict(payload["backbone"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"checkpoint '{p}' does not match its spec {payload['spec']}: {first}") from None
    return net, payload
