"""The suite sent through the gateway's own backends to a server whose answers are
scripted: the scores come out as worked out by hand."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from nonstop.backends.cloud import CloudBackend
from nonstop.backends.registry import make_local_backend
from nonstop.config import CloudConfig, LocalBackendConfig
from nonstop.quality.runner import (
    CloudTarget,
    LocalTarget,
    evaluate_backend,
    run_suite,
    sized_long_context,
)
from nonstop.quality.score import scorecard
from nonstop.quality.tasks import suite
from tests.support.scripted_model import FLAWED_OVERALL, FLAWED_SCORES, STATE, scripted_app


def local(url: str, **kw: Any) -> LocalBackendConfig:
    return LocalBackendConfig("scripted", url, context_window=8192, max_output_tokens=2048, **kw)


async def test_a_model_that_answers_everything_right_scores_100_everywhere(serve: Any) -> None:
    app = scripted_app("perfect")
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        ident, card = await evaluate_backend(make_local_backend(local(url), session), session)
    assert card is not None
    assert card.categories == dict.fromkeys(card.categories, 1.0) and card.overall == 1.0
    assert app[STATE]["answered"] == [t.id for t in suite()] + ["long.fact"]
    assert ident.label() == "scripted-coder-7b q4_k_m, 8k"
    assert card.tokens_per_s and card.first_token_s is not None
    assert all(not t.notes for t in card.tasks)


async def test_a_flawed_model_gets_the_scores_worked_out_by_hand(serve: Any) -> None:
    url = await serve(scripted_app("flawed"))
    async with aiohttp.ClientSession() as session:
        _, card = await evaluate_backend(make_local_backend(local(url), session), session)
    assert card is not None
    assert card.categories == pytest.approx(FLAWED_SCORES)
    assert card.overall == pytest.approx(FLAWED_OVERALL)
    assert {t.id for t in card.tasks if not t.passed} == {
        "choice.read", "choice.glob", "loop.failures", "stop.no_tool", "format.json", "format.word", "long.fact"}


async def test_quick_leaves_out_the_long_context_task(serve: Any) -> None:
    app = scripted_app("perfect")
    url = await serve(app)
    async with aiohttp.ClientSession() as session:
        _, card = await evaluate_backend(make_local_backend(local(url), session), session, quick=True)
    assert card is not None and card.categories["long_context"] is None
    assert app[STATE]["answered"] == [t.id for t in suite(quick=True)]


async def test_the_long_context_prompt_fills_most_of_the_window_the_server_reports(serve: Any) -> None:
    url = await serve(scripted_app("perfect", n_ctx=4096))  # configured 8192, the server runs 4096
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(local(url), session)
        await evaluate_backend(backend, session, quick=True)  # learns the server's window first
        target = LocalTarget(backend)
        task = await sized_long_context(target)
        size = await target.prompt_tokens(task.request())
    assert 0.6 * 4096 < size < 0.75 * 4096


async def test_a_run_stops_when_the_backend_gets_real_work(serve: Any) -> None:
    app = scripted_app("perfect")
    url = await serve(app)
    asked = 0

    def keep_going() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 3

    async with aiohttp.ClientSession() as session:
        results = await run_suite(LocalTarget(make_local_backend(local(url), session)), suite(), long_context=False,
                                  keep_going=keep_going)
    assert results is None and len(app[STATE]["answered"]) == 3


async def test_an_unreachable_backend_scores_zero_with_the_reason(serve: Any) -> None:
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(local("http://127.0.0.1:9"), session)
        results = await run_suite(LocalTarget(backend), suite(quick=True), long_context=False)
    assert results is not None
    card = scorecard(results)
    assert card.overall == 0.0 and "connection refused" in results[0].notes[0]


async def test_the_cloud_baseline_goes_with_the_users_own_credentials_to_the_cloud_only(serve: Any) -> None:
    cloud_app, local_app = scripted_app("perfect"), scripted_app("perfect")
    cloud_url, local_url = await serve(cloud_app), await serve(local_app)
    cloud = CloudBackend(CloudConfig(url=cloud_url), CloudBackend.make_session(CloudConfig(url=cloud_url)))
    try:
        results = await run_suite(CloudTarget(cloud, {"x-api-key": "sk-ant-test"}, "claude-sonnet-4-5"),
                                  suite(quick=True), long_context=False)
    finally:
        await cloud.session.close()
    assert results is not None and scorecard(results).overall == 1.0
    headers = cloud_app[STATE]["headers"]
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"] == "2023-06-01"
    assert set(cloud_app[STATE]["models"]) == {"claude-sonnet-4-5"}
    async with aiohttp.ClientSession() as session:
        await run_suite(LocalTarget(make_local_backend(local(local_url), session)), suite(quick=True)[:1],
                        long_context=False)
    assert "x-api-key" not in {k.lower() for k in local_app[STATE]["headers"]}
