"""Config section ``classify`` (task: classify): read only by the classification-transfer stages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClassifyConfig:
    """Classification transfer: a student classifier trained with CE + lambda x relational loss (+ KD)."""

    def validate(self, root) -> None:
        pass
