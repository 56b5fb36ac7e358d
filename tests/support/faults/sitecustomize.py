"""Faults injected into a running nonstop, for tests only.

A test starts nonstop with this folder on PYTHONPATH and NONSTOP_TEST_FAULTS=1; Python
imports this module at start-up, and it patches the functions below before nonstop
serves. A request then asks for a fault with the header `x-test-fault: <stage>`; every
other request is served as usual. nonstop itself has no such switch.

The stages, by what the client has received when the exception is raised:

  before_head   nothing: the pipeline fails while planning (Pipeline.facts), or the
                cloud call of a passthrough fails (CloudBackend.request)
  at_head       nothing: the reply fails as the relay asks it for its first bytes
  after_head    nothing either: the reply's first bytes are empty, and the relay sends
                no head without bytes, so this is a fault before the head too
  mid_stream    the head and the first part of the body (for a JSON reply: all of it,
                but not its end)
  after_reply   the whole response: a fault in the bookkeeping after it (relay.changes_of)
"""

from __future__ import annotations

import os

HEADER = b"x-test-fault"
STAGES = ("before_head", "at_head", "after_head", "mid_stream", "after_reply")


class InjectedFault(RuntimeError):
    pass


def _install() -> None:
    from collections.abc import AsyncIterator
    from contextvars import ContextVar
    from typing import Any

    from nonstop.backends.cloud import CloudBackend
    from nonstop.server import relay
    from nonstop.server.app import App
    from nonstop.server.pipeline import Pipeline

    stage: ContextVar[str] = ContextVar("test_fault", default="")

    def fail_at(name: str) -> None:
        if stage.get() == name:
            raise InjectedFault(f"injected at {name}")

    dispatch = App.dispatch

    async def dispatch_with_fault(self: App, scope: Any, receive: Any, send: Any) -> None:
        asked = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER), "")
        stage.set(asked if asked in STAGES else "")
        await dispatch(self, scope, receive, send)

    facts = Pipeline.facts

    def facts_with_fault(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        fail_at("before_head")
        return facts(self, *args, **kwargs)

    request = CloudBackend.request

    async def request_with_fault(self: CloudBackend, *args: Any, **kwargs: Any) -> Any:
        fail_at("before_head")
        return await request(self, *args, **kwargs)

    class FaultyWriter:
        """The door's writer, whose output fails at the stage asked for."""

        def __init__(self, writer: Any, at: str):
            self.writer = writer
            self.at = at

        def __getattr__(self, name: str) -> Any:
            return getattr(self.writer, name)

        async def body(self, reply: Any) -> AsyncIterator[bytes]:
            if self.at == "at_head":
                raise InjectedFault("injected at at_head")
            if self.at == "after_head":
                yield b""  # the relay sends the head for it, and no body
                raise InjectedFault("injected at after_head")
            async for chunk in self.writer.body(reply):
                if self.at == "mid_stream" and chunk:
                    # The first event only, so that the stream is surely not over yet.
                    end = chunk.find(b"\n\n") + 2
                    yield chunk[:end] if 2 <= end < len(chunk) else chunk
                    raise InjectedFault("injected at mid_stream")
                yield chunk

    pump = relay.Relay._pump

    async def pump_with_fault(self: Any, ctx: Any, reply: Any, writer: Any, *args: Any) -> tuple[bool, bool]:
        if stage.get() in ("at_head", "after_head", "mid_stream"):
            writer = FaultyWriter(writer, stage.get())
        return await pump(self, ctx, reply, writer, *args)

    changes_of = relay.changes_of

    def changes_of_with_fault(*args: Any) -> list[str]:
        fail_at("after_reply")
        return changes_of(*args)

    App.dispatch = dispatch_with_fault  # type: ignore[method-assign]
    Pipeline.facts = facts_with_fault  # type: ignore[method-assign]
    CloudBackend.request = request_with_fault  # type: ignore[method-assign]
    relay.Relay._pump = pump_with_fault  # type: ignore[method-assign]
    relay.changes_of = changes_of_with_fault


if os.environ.get("NONSTOP_TEST_FAULTS") == "1":
    _install()
