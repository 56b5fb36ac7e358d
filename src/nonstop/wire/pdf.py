"""The text of the PDF documents in a request, for a local model, which cannot read a PDF.

Claude Code's Read tool gives a PDF to the model as a `document` block (base64, in a
tool result), and it stays in the history from then on. The cloud reads it; a local
model gets its text instead, extracted by pypdf (`extract_text`), with each page marked.
Extraction is CPU work (a second or more for a long PDF), so backends/pdfs.py does it
once per document, on a worker thread, before a local backend converts the request, and
the text is kept here (`remember`) for the turns that send the same document again. The
conversion itself (`wire.anthropic.local_block`) only looks the text up (`known_text`):
a document not read yet is left out with a note, as a PDF always was.

What cannot be read (not base64, not a PDF, encrypted, broken, over the API's own limits
of MAX_PDF_BYTES and MAX_PAGES) is left out with a note that says why.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

# The API's own limits for a PDF (32 MB a request, 100 pages): nothing larger is sent.
MAX_PDF_BYTES = 32 * 1024 * 1024
MAX_PAGES = 100
# The most text kept of one document; the fit to the local window trims from there.
MAX_TEXT = 400_000
# Documents whose text is kept (a session sends the same few again on every turn).
KEPT = 32

_TEXT: OrderedDict[tuple[int, int], str] = OrderedDict()


def _key(data: str) -> tuple[int, int]:
    return len(data), hash(data)


def pdf_data(block: Any) -> str | None:
    """The base64 data of a PDF `document` block; None for any other block."""
    if not isinstance(block, dict) or block.get("type") != "document":
        return None
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64" or source.get("media_type") != "application/pdf":
        return None
    data = source.get("data")
    return data if isinstance(data, str) else None


def known_text(block: Any) -> str | None:
    """A PDF document block's text as a local model gets it, once `read_pdfs` has read it;
    None when it has not (or the block is not a PDF)."""
    data = pdf_data(block)
    if data is None:
        return None
    text = _TEXT.get(_key(data))
    if text is None:
        return None
    title = block.get("title")
    return f"[PDF document: {title}]\n{text}" if isinstance(title, str) and title else text


def _pdfs(req: dict[str, Any]) -> Iterator[str]:
    """The PDFs' data in a request's messages, tool results included."""
    messages = req.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        content = msg.get("content") if isinstance(msg, dict) else None
        for block in content if isinstance(content, list) else ():
            data = pdf_data(block)
            if data is not None:
                yield data
            elif isinstance(block, dict) and block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                for inner in block["content"]:
                    data = pdf_data(inner)
                    if data is not None:
                        yield data


def unread(req: dict[str, Any]) -> Iterator[tuple[tuple[int, int], str]]:
    """The request's PDFs whose text is not kept yet: each one's key and data (those that
    are kept move to the back of the line, as used)."""
    for data in _pdfs(req):
        key = _key(data)
        if key in _TEXT:
            _TEXT.move_to_end(key)
        else:
            yield key, data


def remember(key: tuple[int, int], text: str) -> None:
    """Keep a document's text (its key from `unread`), for KEPT documents at most."""
    _TEXT[key] = text
    while len(_TEXT) > KEPT:
        _TEXT.popitem(last=False)


def extract_text(data: str) -> str:
    """A base64 PDF's text, page by page; or a note of why it cannot be read."""
    if len(data) > (MAX_PDF_BYTES + 2) // 3 * 4 + 4:
        return f"[PDF document omitted: larger than {MAX_PDF_BYTES // (1024 * 1024)} MB]"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "[PDF document omitted: its data is not base64]"
    if b"%PDF-" not in raw[:1024]:  # where the format lets its header be
        return "[PDF document omitted: its data is not a PDF]"
    import pypdf  # only when a PDF comes: it costs nothing to a server that never sees one

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # what it repairs as it reads is not nonstop's news

    try:
        reader = pypdf.PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            try:
                reader.decrypt("")  # encrypted, but with no password to open it: readable
            except Exception:  # pypdf raises its own kinds, and crypto's, for what it cannot decrypt
                return "[PDF document omitted: it is encrypted]"
        count = len(reader.pages)
        parts = [f"[PDF document, {count} page{'s' if count != 1 else ''}]"]
        size = found = 0
        for i, page in enumerate(reader.pages):
            if i == MAX_PAGES:
                parts.append(f"[pages {MAX_PAGES + 1}-{count} omitted: more than {MAX_PAGES} pages]")
                break
            text = (page.extract_text() or "").strip()
            found += len(text)
            if size + len(text) > MAX_TEXT:
                parts.append(f"--- page {i + 1} ---\n{text[:max(0, MAX_TEXT - size)]}")
                parts.append(f"[the rest omitted: more than {MAX_TEXT} characters of text]")
                break
            parts.append(f"--- page {i + 1} ---\n{text}")
            size += len(text)
    except Exception as exc:  # a broken PDF: pypdf's errors are many, and it is only text for a local model
        return f"[PDF document omitted: it cannot be read ({type(exc).__name__})]"
    if not found:
        return parts[0][:-1] + ", with no text to extract: scanned pages, perhaps]"
    return "\n".join(parts)
