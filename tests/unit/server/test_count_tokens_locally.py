"""A count_tokens request the cloud cannot serve is counted by a local server, on the
request as that server would get it: folded for a template that refuses text beside tool
results (a count of the unfolded one would be refused too), with a PDF's text in place."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from nonstop.backends.cloud import CloudBackend
from nonstop.backends.pdfs import read_pdfs
from nonstop.backends.registry import make_local_backend
from nonstop.config import parse_config
from nonstop.server.app import App
from tests.support.fake_cloud import make_app as fake_cloud_app
from tests.support.inprocess import exchange
from tests.support.pdfs import pdf_block

HEADERS = [(b"x-api-key", b"sk-ant-test"), (b"anthropic-version", b"2023-06-01"), (b"x-fake-mode", b"subscription_limit")]
REQUEST = {"model": "claude-sonnet-4-5", "messages": [
    {"role": "user", "content": "read it"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "a.pdf"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": [pdf_block(["Counted as text."])]},
        {"type": "text", "text": "and summarise it"}]},
]}


async def test_a_local_count_is_of_the_request_the_server_would_get(serve, tmp_path: Path) -> None:
    counted: list[dict] = []

    async def count(request: web.Request) -> web.Response:
        counted.append(await request.json())
        return web.json_response({"input_tokens": 777})

    local = web.Application()
    local.router.add_post("/v1/messages/count_tokens", count)
    cfg = parse_config({"state_dir": str(tmp_path), "log": {"enabled": False},
                        "cloud": {"url": await serve(fake_cloud_app()), "default_cooldown": 0},
                        "local": [{"name": "llama", "url": await serve(local), "api": "anthropic", "model": "m"}]})
    app = App(cfg)
    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(cfg.local[0], session)
        app.rt.use_backends([backend], cloud=cloud)
        backend.fold_turns = True  # learned from a template that refused text beside results
        try:
            status, headers, body = await exchange(app, "POST", "/v1/messages/count_tokens",
                                                   body=orjson.dumps(REQUEST), headers=HEADERS)
        finally:
            await cloud.session.close()
    assert status == 200 and orjson.loads(body) == {"input_tokens": 777}
    assert headers[b"x-nonstop-backend"] == b"local"
    await read_pdfs(REQUEST)
    expected = {k: v for k, v in backend.local_request(REQUEST).items() if k not in ("max_tokens", "stream")}
    assert counted[-1] == expected
    sent = orjson.dumps(counted[-1]).decode()
    assert "Counted as text." in sent and "and summarise it" in sent
