"""Run configuration: nested dataclasses loaded from YAML, validated, with dotted overrides.

- :mod:`.sections`: the sections (data, source, transfer, eval, controls, trainer), one
  :class:`OptimizerConfig` type for every training stage, each field's default, doc and range;
- :mod:`.fields`: ``opt`` (a field with its range) and the checks every value goes through
  (finite floats, bounded integers, non-empty strings);
- :mod:`.loading`: YAML, ``--set`` overrides, type coercion, unknown-key suggestions.
"""

from .fields import flatten
from .loading import apply_overrides, build, coerce, config_from_dict, load_config, load_yaml, type_name
from .sections import (
    ControlsConfig,
    DataConfig,
    EvalConfig,
    OptimizerConfig,
    RunConfig,
    SourceConfig,
    TrainerConfig,
    TransferConfig,
)

__all__ = [
    "ControlsConfig", "DataConfig", "EvalConfig", "OptimizerConfig", "RunConfig", "SourceConfig", "TrainerConfig",
    "TransferConfig", "apply_overrides", "build", "coerce", "config_from_dict", "flatten", "load_config",
    "load_yaml", "type_name",
]
