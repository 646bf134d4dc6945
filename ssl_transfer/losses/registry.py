"""The embedding-transfer losses by config name, built from ``loss_args`` checked against their
constructors.

A stage names a loss (``transfer.loss: rkd``) and its options (``transfer.loss_args:
{angle_weight: 2}``). :func:`resolve_loss_args` checks the options against the loss's constructor
when the config is loaded (unknown names, types from the annotations, finiteness, and the
constructor's own range checks), and returns them with the defaults filled in;
:func:`build_loss` then builds the loss in the stage, adding the arguments only the stage knows
(:data:`RUNTIME_ARGS`: embedding widths, the number of views).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from torch import nn

from ..errors import ConfigError
from .darkrank import DarkRankLoss
from .pkt import PKTLoss
from .regression import RegressionLoss
from .relaxed import RelaxedContrastiveLoss
from .relaxed_ms import RelaxedMSLoss
from .rkd import RKDLoss

LOSSES: dict[str, type[nn.Module]] = {
    "relaxed_contrastive": RelaxedContrastiveLoss,
    "relaxed_ms": RelaxedMSLoss,
    "rkd": RKDLoss,
    "pkt": PKTLoss,
    "darkrank": DarkRankLoss,
    "regression": RegressionLoss,
}
#: Constructor arguments a stage supplies (never in ``loss_args``), with stand-ins for the check.
RUNTIME_ARGS = {"student_dim": 8, "teacher_dim": 8, "views": 2}
#: Losses that accept the cross-batch memory (any rows, no view structure, quadratic cost).
MEMORY_LOSSES = ("relaxed_contrastive", "pkt", "darkrank")


def loss_options(name: str) -> dict[str, tuple[Any, Any]]:
    """``{argument: (type, default)}`` of the user-facing constructor arguments of loss ``name``."""
    cls = LOSSES[name]
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls.__init__).parameters
    return {p: (hints.get(p, Any), params[p].default) for p in params
            if p != "self" and p not in RUNTIME_ARGS and params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)}


def resolve_loss_args(name: str, args: dict[str, Any], section: str) -> dict[str, Any]:
    """``args`` checked against loss ``name``'s constructor, with its defaults filled in.

    One-line ConfigError for an unknown or runtime-only argument, a wrong type, a non-finite
    number (``section.loss_args.<arg>``), or a value the constructor refuses.
    """
    from ..config import coerce
    from ..config.fields import Rule, check_value

    options = loss_options(name)
    key = f"{section}.loss_args"
    out: dict[str, Any] = {}
    for arg, value in args.items():
        if arg not in options:
            what = "is set by the stage" if arg in RUNTIME_ARGS else "is not an option of"
            valid = ", ".join(options) or "none"
            raise ConfigError(f"{key}.{arg} {what} {section}.loss = {name} ({LOSSES[name].__name__} takes: {valid}); "
                              f"remove it, e.g. --set {key}={{}}")
        tp, _ = options[arg]
        out[arg] = coerce(value, tp, f"{key}.{arg}")
        check_value(f"{key}.{arg}", out[arg], Rule())
    resolved = {arg: out.get(arg, default) for arg, (_, default) in options.items()}
    try:
        build_loss(name, resolved, **RUNTIME_ARGS)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key} = {resolved} is refused by {LOSSES[name].__name__}: {e}; fix {key}") from None
    return resolved


def build_loss(name: str, args: dict[str, Any], student_dim: int, teacher_dim: int, views: int) -> nn.Module:
    """The loss ``name`` built from ``args`` (as resolved) and the runtime arguments it takes."""
    cls = LOSSES[name]
    params = inspect.signature(cls.__init__).parameters
    runtime = {"student_dim": student_dim, "teacher_dim": teacher_dim, "views": views}
    return cls(**args, **{k: v for k, v in runtime.items() if k in params})
