"""What the store tests share: a request log in a fresh state folder, and a private
redis-server for the fleet's shared state."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.store.db import Store
from tests.support.redis_server import redis_server

__all__ = ["redis_server"]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nonstop"


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    s = Store(state_dir)
    s.open()
    yield s
    s.close()
