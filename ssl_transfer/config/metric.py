"""Config section ``metric`` (task: metric): read only by the metric-learning stages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MetricConfig:
    """Metric learning: the Proxy-Anchor source stage and the retrieval evaluation."""

    def validate(self, root) -> None:
        pass
