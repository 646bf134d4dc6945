import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
