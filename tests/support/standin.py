"""Running a stand-in server (the fake cloud, the recorder, the fake OpenAI server) as its
own process: `python -m tests.support.<name> --port N`, on loopback unless --host says
otherwise."""

from __future__ import annotations

import argparse

from aiohttp import web


def serve(app: web.Application, *, default_port: int | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=default_port, required=default_port is None)
    args = p.parse_args()
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
