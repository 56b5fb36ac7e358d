"""A PDF read earlier in a Claude Code session (a `document` block in a tool result) goes to
the cloud untouched, and to a local stand-in as its text: the stand-in can answer about
it. Real processes: the fake cloud, nonstop, a recording local server, the anthropic SDK."""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.support import procs
from tests.support.config import nonstop_config
from tests.support.pdfs import pdf_block

pytestmark = pytest.mark.integration


def session(block: dict) -> list[dict]:
    return [
        {"role": "user", "content": "Read docs/spec.pdf and tell me what it says about releases."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01Pdf", "name": "Read",
                                           "input": {"file_path": "docs/spec.pdf"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01Pdf", "content": [block]}]},
    ]


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_a_pdf_in_the_history_reaches_the_local_model_as_text(cloud, recorder_proc, nonstop_factory, api):
    ns = nonstop_factory(nonstop_config(cloud.url, local=[{"name": "rec", "url": recorder_proc.url, "api": api}]))
    block = pdf_block(["Release policy", f"Releases ship on Tuesdays ({api})."])
    client = anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=60)

    # The cloud serves: it gets the document as the client sent it.
    procs.set_mode(cloud, "ok")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=session(block))
    sent = procs.cloud_requests(cloud)[-1]
    got = sent["body"] if isinstance(sent.get("body"), dict) else json.loads(sent["body"])
    assert got["messages"][2]["content"][0]["content"][0] == block

    # The cloud is out: the local model gets the PDF's text, page by page.
    procs.set_mode(cloud, "subscription_limit")
    before = len(procs.answered(recorder_proc))
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=50, messages=session(block))
    assert raw.headers["x-nonstop-backend"] == "rec"
    assert raw.parse().content
    seen = procs.answered(recorder_proc)[before:]
    assert seen, "nothing reached the local server"
    body = seen[-1]["body"]
    assert f"Releases ship on Tuesdays ({api})." in body and "--- page 2 ---" in body
    assert block["source"]["data"][:40] not in body  # the PDF itself is not sent to a model that cannot read it
