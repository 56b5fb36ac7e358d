"""A PDF in the history reaches a local model as its text (wire/pdf.py, backends/pdfs.py)."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator

import pytest

from nonstop.backends import pdfs
from nonstop.backends.pdfs import read_pdfs
from nonstop.wire import pdf
from nonstop.wire.anthropic import to_local_request
from nonstop.wire.openai.backend_request import anthropic_to_openai_request
from tests.support.pdfs import make_pdf, pdf_block


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    pdf._TEXT.clear()
    pdfs._READING.clear()
    yield
    pdf._TEXT.clear()
    pdfs._READING.clear()


def request(*blocks: dict) -> dict:
    """A Claude Code turn: the Read tool's result holds the PDF, then the user asks on."""
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [
        {"role": "user", "content": "read the spec"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/s.pdf"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": list(blocks)},
                                     {"type": "text", "text": "what does page 2 say?"}]},
    ]}


def result_text(local: dict) -> str:
    return str(local["messages"][2]["content"][0]["content"])


def test_extracts_each_page_marked() -> None:
    text = pdf.extract_text(pdf_block(["Hello nonstop (one)", "The answer is 42."])["source"]["data"])
    assert text == "[PDF document, 2 pages]\n--- page 1 ---\nHello nonstop (one)\n--- page 2 ---\nThe answer is 42."


@pytest.mark.parametrize(("data", "why"), [
    ("not base64!", "not base64"),
    (base64.b64encode(b"just some text").decode(), "not a PDF"),
    (base64.b64encode(b"%PDF-1.4\n1 0 obj\n<< /Type /Cat").decode(), "cannot be read"),
    (base64.b64encode(make_pdf([""])).decode(), "no text to extract"),
], ids=["not-base64", "not-pdf", "broken", "no-text"])
def test_what_cannot_be_read_says_why(data: str, why: str) -> None:
    text = pdf.extract_text(data)
    assert text.startswith("[PDF document") and why in text


def test_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "MAX_PAGES", 2)
    text = pdf.extract_text(pdf_block(["a", "b", "c"])["source"]["data"])
    assert "--- page 2 ---\nb" in text and "page 3 ---" not in text and "[pages 3-3 omitted: more than 2 pages]" in text
    monkeypatch.setattr(pdf, "MAX_TEXT", 5)
    text = pdf.extract_text(pdf_block(["abcd", "efgh"])["source"]["data"])
    assert text.endswith("--- page 2 ---\ne\n[the rest omitted: more than 5 characters of text]")
    monkeypatch.setattr(pdf, "MAX_PDF_BYTES", 10)
    assert "larger than" in pdf.extract_text(pdf_block(["a"])["source"]["data"])


async def test_the_local_model_gets_the_text_once_read() -> None:
    req = request(pdf_block(["Intro", "Page two says: ship it."], title="spec.pdf"))
    assert result_text(to_local_request(req, model="m", max_tokens=100)) == str([{"type": "text", "text": "[document block omitted]"}])
    await read_pdfs(req)
    text = result_text(to_local_request(req, model="m", max_tokens=100))
    assert "[PDF document: spec.pdf]" in text and "Page two says: ship it." in text
    # The same through the OpenAI-compatible translation.
    body = anthropic_to_openai_request(req, model="m", max_tokens=100, stream=False)
    assert "Page two says: ship it." in str(body["messages"])


async def test_a_pdf_beside_the_text_of_a_turn_too() -> None:
    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [pdf_block(["top level"]), {"type": "text", "text": "?"}]}]}
    await read_pdfs(req)
    assert "top level" in str(to_local_request(req, model="m", max_tokens=10)["messages"])


async def test_each_document_is_read_once_and_kept_for_later_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pdf.extract_text
    monkeypatch.setattr(pdf, "extract_text", lambda data: calls.append(1) or real(data))
    block = pdf_block(["same document"])
    # Two requests at once, then a later turn that sends it again (a copy, as parsed anew).
    await asyncio.gather(read_pdfs(request(block)), read_pdfs(request(dict(block))))
    await read_pdfs(request({**block, "source": dict(block["source"])}))
    assert len(calls) == 1


async def test_a_slow_document_does_not_hold_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(pdf, "extract_text", lambda data: release.wait(10) and "the slow text")
    req = request(pdf_block(["x"]))
    await asyncio.wait_for(read_pdfs(req, timeout=0.2), 5)
    assert "[document block omitted]" in result_text(to_local_request(req, model="m", max_tokens=10))
    release.set()  # it goes on reading: the next turn has it
    await asyncio.wait_for(read_pdfs(req, timeout=5), 6)
    assert "the slow text" in result_text(to_local_request(req, model="m", max_tokens=10))


async def test_kept_texts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf, "KEPT", 2)
    blocks = [pdf_block([f"doc {i}"]) for i in range(3)]
    for b in blocks:
        await read_pdfs(request(b))
    assert len(pdf._TEXT) == 2
    assert pdf.known_text(blocks[0]) is None and "doc 2" in (pdf.known_text(blocks[2]) or "")


async def test_other_documents_are_left_as_they_were() -> None:
    url = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}}
    req = request(url, text)
    await read_pdfs(req)
    assert result_text(to_local_request(req, model="m", max_tokens=10)) == str(
        [{"type": "text", "text": "[document block omitted]"}, {"type": "text", "text": "plain"}])
