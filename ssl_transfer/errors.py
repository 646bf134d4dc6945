"""Project exceptions.

Every error a user can cause (bad config, missing data, unusable checkpoint, an output
directory that already exists) is raised as a subclass of :class:`SSLTransferError` with a
one-line message naming the cause and the fix. The CLI prints that line and exits with
status 2; ``--debug`` shows the traceback.
"""


class SSLTransferError(Exception):
    """Base class of all errors raised for bad user input."""


class ConfigError(SSLTransferError):
    """A config file, key or value is missing or invalid."""


class DataError(SSLTransferError):
    """A dataset is missing, malformed or unsuitable."""


class CheckpointError(SSLTransferError):
    """A checkpoint is missing, truncated or does not match the model."""


class OutputExistsError(SSLTransferError):
    """An output directory already exists and would be overwritten."""


class NonFiniteError(SSLTransferError):
    """A loss or embedding became NaN or infinite during training."""
