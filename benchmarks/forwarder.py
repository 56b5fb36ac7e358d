"""The floor of nonstop's own stack: a bare forwarder on the same server and client.

    python benchmarks/forwarder.py --listen 127.0.0.1:9300 --upstream http://127.0.0.1:9100

uvicorn with httptools and uvloop (as `nonstop serve` runs), one pooled aiohttp session
(as nonstop's cloud backend), and nothing else: the request's bytes and headers go up,
the reply's head and chunks come back as they arrive. No parsing, no routing, no log.
What nonstop adds over this is nonstop's own work; what this adds over calling the
upstream directly is the cost of the libraries both are built on.

    python benchmarks/forwarder.py ... --outline

does one thing more, and only that: it decodes each request's outline
(`nonstop.wire.outline`, the one parse of the body nonstop's decisions need on the cloud
path) before forwarding the bytes as they came. `benchmarks/floor.py` measures what that
parse alone costs a request.

    python benchmarks/forwarder.py ... --relay-reader

reads each reply's body as nonstop does (`nonstop.backends.reader.RelayReader`: what has
come, at once, without aiohttp's per-chunk work), and nothing else differs: the floor of
a forwarder that reads its replies so (`benchmarks/floor.py --relay-reader`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import uvicorn

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"upgrade", b"te"}


class Forwarder:
    def __init__(self, upstream: str, parse: Callable[[bytes], object] | None = None,
                 on_reply: Callable[[aiohttp.ClientResponse], None] | None = None):
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.parse = parse
        self.on_reply = on_reply

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                    cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None))
                await send({"type": "lifespan.startup.complete"})
            assert self.session is not None
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        url, body = await self.read(scope, receive)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP]
        assert self.session is not None
        async with self.session.request(scope["method"], url, headers=headers, data=body) as resp:
            if self.on_reply is not None:
                self.on_reply(resp)
            out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def read(self, scope, receive) -> tuple[str, bytes]:
        """The request's upstream URL and its body, read whole (and parsed with --outline)."""
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        if self.parse is not None:
            self.parse(body)
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        return url, body


class ReqwestForwarder(Forwarder):
    """The same forwarder with pyreqwest as its client: one pooled client, the reply's
    chunks relayed as pyreqwest reads them."""

    client: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            from pyreqwest.client import ClientBuilder

            while (await receive())["type"] != "lifespan.shutdown":
                self.client = ClientBuilder().http1_only().tcp_nodelay(True).build()
                await send({"type": "lifespan.startup.complete"})
            await self.client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        url, body = await self.read(scope, receive)
        req = self.client.request(scope["method"], url)
        for k, v in scope["headers"]:
            if k not in HOP:
                req = req.header(k.decode("latin-1"), v.decode("latin-1"))
        async with req.body_bytes(body).build_streamed() as resp:
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items() if k.encode("latin-1") not in HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            while (chunk := await resp.body_reader.read_chunk()) is not None:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


CLIENTS = {"aiohttp": Forwarder, "pyreqwest": ReqwestForwarder}


def app() -> Forwarder:
    """The forwarder for an ASGI server that imports its app (granian's --factory):
    FORWARDER_UPSTREAM, and FORWARDER_CLIENT (aiohttp by default)."""
    return CLIENTS[os.environ.get("FORWARDER_CLIENT", "aiohttp")](os.environ["FORWARDER_UPSTREAM"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    p.add_argument("--upstream", required=True)
    p.add_argument("--outline", action="store_true", help="decode each request's outline as nonstop does, and nothing else")
    p.add_argument("--relay-reader", action="store_true", help="read each reply's body as nonstop does, and nothing else")
    p.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp", help="the HTTP client")
    args = p.parse_args()
    parse = on_reply = None
    if args.outline:
        from nonstop.wire.outline import outline  # the caller puts nonstop's src on the path

        parse = outline
    if args.relay_reader:
        from nonstop.backends.reader import relay_reader  # (as the outline: from nonstop's src)

        on_reply = relay_reader
    host, _, port = args.listen.rpartition(":")
    if on_reply is not None and args.client != "aiohttp":
        p.error("--relay-reader reads aiohttp's replies")
    uvicorn.run(CLIENTS[args.client](args.upstream, parse, on_reply), host=host, port=int(port), http="httptools", loop="uvloop",
                lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False,
                proxy_headers=False)  # as nonstop runs it (server/run.py)


if __name__ == "__main__":
    main()
