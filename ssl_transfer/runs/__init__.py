"""The run directory and the run state: what the runner owns besides the stages."""

from .directory import RunDirectory, foreign_files, read_manifest
from .state import RunState, run_metadata, versions

__all__ = ["RunDirectory", "RunState", "foreign_files", "read_manifest", "run_metadata", "versions"]
