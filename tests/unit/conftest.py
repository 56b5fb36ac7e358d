"""Fixtures every unit test gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nonstop.backends.head import forget_heads


@pytest.fixture(autouse=True)
def no_heads_kept() -> Iterator[None]:
    """Each test starts with no request head kept (backends/head.py's caches outlive a test)."""
    forget_heads()
    yield
    forget_heads()
