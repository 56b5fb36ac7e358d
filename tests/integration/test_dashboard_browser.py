"""The dashboard in a real (headless) Chromium: it follows a failover live, without a
reload. Needs /usr/bin/chromium and the playwright package (never `playwright install`)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by _need_browser
    expect = sync_playwright = None  # type: ignore[assignment]

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = procs.ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _need_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if sync_playwright is None:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        what = " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI: install Debian's chromium and the dev extras")
        pytest.skip(f"{what} is missing")


def config(cloud: procs.Proc, local: procs.Proc, **settings) -> str:
    return nonstop_config(cloud.url, local=[{"name": "rec", "url": local.url}], **settings)


def ask(ns: procs.Proc, token: str = "") -> dict[str, str]:
    extra = {"x-nonstop-token": token} if token else {}
    status, headers, body = rawhttp.request(
        "POST", ns.url + "/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello."}]},
        headers={"x-api-key": procs.PLANTED_KEY, "anthropic-version": "2023-06-01", **extra},
    )
    assert status == 200, body
    return headers


def test_dashboard_follows_a_failover_live(cloud, recorder_proc, nonstop_factory):
    _need_browser()
    ns = nonstop_factory(config(cloud, recorder_proc))
    assert ask(ns)["x-nonstop-backend"] == "cloud"

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}") if "/api/events" not in r.url else None)
            page.goto(ns.url + "/_nonstop/")

            # Before: the cloud serves; the quota it reported is drawn.
            state = page.locator("#cloud-state")
            expect(page.locator("#cloud-state")).to_contain_text("serving", timeout=10_000)
            assert state.get_attribute("data-state") == "serving"
            assert page.locator("#countdown").text_content() == ""
            expect(page.locator("#util-5h")).to_have_attribute("data-value", re.compile(r"."), timeout=10_000)
            assert float(page.locator("#util-5h").get_attribute("data-value")) == pytest.approx(0.42)
            assert page.locator("#util-5h-text").text_content() == "42%"
            assert page.locator("#util-7d-text").text_content() == "17%"
            assert page.locator("#backends li[data-backend='rec']").count() == 1
            page.wait_for_selector("#requests tr[data-backend='cloud']", timeout=10_000)
            expect(page.locator("#conn")).to_have_attribute("data-mode", "live", timeout=10_000)

            # The failover, driven from outside the page.
            procs.set_mode(cloud, "subscription_limit", reset_in=600)
            headers = ask(ns)
            assert headers["x-nonstop-backend"] == "rec"

            expect(page.locator("#cloud-state")).to_contain_text("local", timeout=10_000)
            assert state.get_attribute("data-state") == "out"
            assert "subscription" in page.locator("#cloud-reason").text_content()
            page.wait_for_selector("#requests tr[data-backend='rec']", timeout=10_000)
            row = page.locator("#requests tr[data-backend='rec']").first
            assert "subscription_limit" in row.text_content()
            assert page.locator("#requests tr").first.get_attribute("data-backend") == "rec", "newest first"
            assert page.locator("#switches li").count() >= 1

            countdown = page.locator("#countdown")
            first_text = countdown.text_content()
            assert re.fullmatch(r"\d+:\d\d", first_text or ""), first_text
            first_left = int(countdown.get_attribute("data-remaining"))
            assert 500 < first_left <= 600
            time.sleep(2.2)
            second_left = int(countdown.get_attribute("data-remaining"))
            assert second_left < first_left, (first_left, second_left)
            assert countdown.text_content() != first_text
            assert float(page.locator("#util-5h").get_attribute("data-value")) == pytest.approx(1.02)
            assert page.locator("#util-5h").get_attribute("data-level") == "full"

            # Every decision is explained: the local answer names the rule that chose it and
            # why the cloud was skipped.
            decision = page.locator("#decisions li[data-backend='rec']").first
            expect(decision).to_be_visible(timeout=10_000)
            text = decision.text_content() or ""
            assert "main" in text and "rec" in text
            assert re.search(r"skipped cloud|subscription", text), text
            # The quota forecast: 5h past 100 %, so deferrable work is being conserved.
            expect(page.locator("#forecast")).to_have_attribute("data-conserving", "yes", timeout=10_000)
            assert "5h 102%" in page.locator("#forecast .fc-line[data-window='5h']").text_content()
            expect(page.locator("#backends li[data-backend='rec'] .load")).to_contain_text("0 in flight", timeout=10_000)

            # Charts are drawn from the rows.
            assert page.locator("#chart-latency svg rect").count() >= 2
            assert page.locator("#chart-tokens svg rect").count() >= 2

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert page.url.endswith("/_nonstop/")
        finally:
            browser.close()
    assert not problems, problems
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_dashboard_polls_when_the_event_stream_is_blocked(cloud, recorder_proc, nonstop_factory):
    """Some proxies break server-sent events: the page falls back to polling every 5 s."""
    _need_browser()
    ns = nonstop_factory(config(cloud, recorder_proc))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/_nonstop/api/events", lambda route: route.abort())
            page.goto(ns.url + "/_nonstop/")
            expect(page.locator("#conn")).to_have_attribute("data-mode", "polling", timeout=10_000)
            expect(page.locator("#cloud-state")).to_contain_text("serving", timeout=10_000)
            procs.set_mode(cloud, "subscription_limit", reset_in=600)
            ask(ns)
            expect(page.locator("#cloud-state")).to_contain_text("local", timeout=12_000)
            page.wait_for_selector("#requests tr[data-backend='rec']", timeout=12_000)
            assert int(page.locator("#countdown").get_attribute("data-remaining")) > 500
        finally:
            browser.close()


def test_dashboard_with_an_access_token(cloud, recorder_proc, nonstop_factory):
    """The token given once in the address becomes a cookie and leaves the address bar."""
    _need_browser()
    token = "dash-token-123"
    ns = nonstop_factory(config(cloud, recorder_proc, token=token))
    ask(ns, token)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            response = page.goto(ns.url + "/_nonstop/")
            assert response is not None and response.status == 401

            page.goto(ns.url + f"/_nonstop/?token={token}")
            expect(page.locator("#cloud-state")).to_contain_text("serving", timeout=10_000)
            expect(page.locator("#conn")).to_have_attribute("data-mode", "live", timeout=10_000)
            page.wait_for_selector("#requests tr[data-backend='cloud']", timeout=10_000)
            assert token not in page.url
        finally:
            browser.close()
    ns.stop()
    out = ns.output()
    assert "Traceback" not in out and procs.PLANTED_KEY not in out and token not in out
