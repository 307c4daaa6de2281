import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import SHARED_REASON, SHARED_SERIES  # noqa: E402


@pytest.fixture(scope="session")
def shared_series() -> Path:
    if not SHARED_SERIES.is_dir():
        pytest.skip(SHARED_REASON)
    return SHARED_SERIES
