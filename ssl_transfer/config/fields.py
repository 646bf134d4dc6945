"""Config fields with their checks beside them, and the one walker that applies the checks.

A section field is declared with :func:`opt`, which stores its allowed range next to it::

    lr: float = opt(0.06, gt=0)                          # > 0, finite
    val_size: int = opt(5000, ge=1)                      # >= 1
    min_scale: float | None = opt(None, gt=0, le=1)      # None, or in (0, 1]
    root: str | None = opt(None, empty=False)            # None, or a non-empty string

:func:`check_values` walks a config and checks every value against its field's metadata, and
the rules that hold for every field whatever its metadata:

- floats (also inside lists) are finite: NaN and ±inf are refused (``allow_inf=True`` would let
  infinity through where it means something; no field needs it today);
- integers fit in a signed 32-bit value unless the field sets its own bounds (``seed``);
- strings are not empty unless the field says ``empty=True``.

Each failure is a one-line :class:`ConfigError` naming the key, the value, the rule and the fix.
The fuzz test (tests/test_fuzz_config.py) derives its bad values from the same metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from typing import Any

from ..errors import ConfigError

INT_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Rule:
    """The allowed values of one field (None bounds are open)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allow_inf: bool = False
    empty: bool = False  # strings: may be ""
    hint: str = ""  # appended to the error: how to fix it

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        bounds = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
        return " and ".join(f"{op} {num(b)}" for op, b in bounds if b is not None)

    def violated(self, x: float) -> bool:
        return ((self.gt is not None and not x > self.gt) or (self.ge is not None and not x >= self.ge)
                or (self.lt is not None and not x < self.lt) or (self.le is not None and not x <= self.le))


def opt(default: Any = MISSING, *, factory: Any = MISSING, gt=None, ge=None, lt=None, le=None,
        allow_inf: bool = False, empty: bool = False, hint: str = "") -> Any:
    """A dataclass field with its :class:`Rule` in ``metadata["rule"]``."""
    rule = Rule(gt=gt, ge=ge, lt=lt, le=le, allow_inf=allow_inf, empty=empty, hint=hint)
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule", Rule())


def _fail(key: str, value: Any, why: str, rule: Rule) -> None:
    fix = f"; {rule.hint}" if rule.hint else ""
    raise ConfigError(f"{key} = {value!r} {why}{fix}")


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Raise a one-line ConfigError unless ``value`` obeys ``rule`` and the rules of every field."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, rule)
        return
    if isinstance(value, dict):  # options of another object (loss_args): checked once typed by their owner
        return
    if isinstance(value, str):
        if not value and not rule.empty:
            _fail(key, value, "is empty", rule if rule.hint else Rule(hint="give a value or remove the key"))
        return
    if isinstance(value, float) and math.isnan(value):
        _fail(key, value, "is not a number", rule if rule.hint else Rule(hint="give a finite number"))
    if isinstance(value, float) and math.isinf(value) and not rule.allow_inf:
        _fail(key, value, "is infinite", rule if rule.hint else Rule(hint="give a finite number"))
    bounded = any(b is not None for b in (rule.gt, rule.ge, rule.lt, rule.le))
    if isinstance(value, int) and not (rule.le is not None or rule.lt is not None) and abs(value) > INT_LIMIT:
        _fail(key, value, f"is too large (at most {INT_LIMIT})", rule)
    if bounded and rule.violated(value):
        _fail(key, value, f"must be {rule.describe()}", rule)


def check_values(section: Any, prefix: str = "") -> None:
    """Apply :func:`check_value` to every field of a config dataclass, recursively."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_values(value, key + ".")
        else:
            check_value(key, value, rule_of(f))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
