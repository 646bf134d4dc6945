"""ssl-transfer: embedding transfer with label relaxation for self-supervised teachers."""

__version__ = "0.1.0"

from .config import RunConfig, load_config  # noqa: E402
from .errors import SSLTransferError  # noqa: E402

__all__ = ["RunConfig", "SSLTransferError", "__version__", "load_config", "run"]


def run(*args, **kwargs):
    """Run the whole pipeline; see :func:`ssl_transfer.pipeline.run`."""
    from .pipeline import run as _run

    return _run(*args, **kwargs)
