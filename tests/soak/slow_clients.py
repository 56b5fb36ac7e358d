"""Clients that send their request slowly, in part or not at all, for the soak.

Each kind is a way to hold a connection without finishing a request: a head sent a byte
at a time, half a head and then silence, nothing at all, a complete head whose body
trickles, half a body and then silence. nonstop must close every one within its deadline
(`head_timeout` for heads, `body_timeout` plus the body's allowance for bodies), answering
a 408 in the client's own protocol when a request had begun, and nothing when none had.

They speak from their own loopback addresses (all of 127/8 reaches nonstop on Linux), so
that the cap on slow heads per address does not touch the soak's ordinary traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.support import wirecheck

KINDS = ("slow_head", "partial_head", "silent", "slow_body", "partial_body")
DOORS = (("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai"))
# Seconds between the bytes of a trickle: slow enough that neither a ~200-byte head nor a
# 2,000-byte body can arrive within a few seconds.
TRICKLE = 0.25
# Room beyond a deadline for a loaded machine to close the connection.
SLACK = 3.0


@dataclass
class SlowClientReport:
    counts: dict[str, int] = field(default_factory=dict)
    answers: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> "408" / "none" -> n
    longest_s: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


class SlowClients:
    def __init__(self, port: int, head_timeout: float, body_timeout: float, workers: int = 6, seed: int = 0):
        self.port = port
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.workers = workers
        self.rng = random.Random(seed)
        self.report = SlowClientReport()
        self._answers: dict[str, Counter] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> SlowClientReport:
        await asyncio.gather(*(self._worker(f"127.0.2.{i + 1}") for i in range(self.workers)))
        self.report.answers = {k: dict(v) for k, v in sorted(self._answers.items())}
        return self.report

    async def _worker(self, source: str) -> None:
        while not self.stopping.is_set():
            kind = self.rng.choice(KINDS)
            path, door = self.rng.choice(DOORS)
            try:
                await self.one(kind, path, door, source)
            except OSError as exc:  # the soak's machine itself is in trouble: say so
                self.report.violations.append(f"{kind} {path}: could not connect: {exc}")
                await asyncio.sleep(1.0)

    def bound(self, kind: str) -> float:
        return (self.head_timeout if kind.endswith("head") or kind == "silent" else self.body_timeout) + SLACK

    async def one(self, kind: str, path: str, door: str, source: str) -> None:
        body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [
            {"role": "user", "content": "slow " * 390}]}).encode()[:2000]
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Anthropic-Version: 2023-06-01\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        t0 = time.monotonic()
        sending = asyncio.ensure_future(self._send(kind, head, body, writer))
        answer = bytearray()
        try:
            try:
                async with asyncio.timeout(self.bound(kind)):
                    while chunk := await reader.read(65536):
                        answer += chunk
            except TimeoutError:
                self.report.violations.append(f"{kind} {path}: still open after {self.bound(kind):.0f} s")
                return
            except ConnectionResetError:
                pass  # a byte sent after nonstop closed is answered with a reset: keep what came before it
        finally:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
            writer.close()
        took = time.monotonic() - t0
        self.report.counts[kind] = self.report.counts.get(kind, 0) + 1
        self.report.longest_s[kind] = round(max(self.report.longest_s.get(kind, 0.0), took), 2)
        self._answers.setdefault(kind, Counter())["none" if not answer else answer[9:12].decode("latin-1", "replace")] += 1
        problem = self.check(kind, door, bytes(answer))
        if problem:
            self.report.violations.append(f"{kind} {path}: {problem}")

    async def _send(self, kind: str, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if kind == "silent":
                return
            if kind == "partial_head":
                writer.write(head[: len(head) // 2])
                return
            if kind == "slow_head":
                for i in range(len(head)):
                    writer.write(head[i : i + 1])
                    await asyncio.sleep(TRICKLE)
                return
            writer.write(head)
            if kind == "partial_body":
                writer.write(body[: len(body) // 2])
                return
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await asyncio.sleep(TRICKLE)

    def check(self, kind: str, door: str, answer: bytes) -> str:
        """What is wrong with how nonstop ended this connection ("" if nothing)."""
        if kind == "silent":
            return f"a client that sent nothing got an answer: {answer[:80]!r}" if answer else ""
        if not answer.startswith(b"HTTP/1.1 408 "):
            return f"expected a 408 and the close, got {answer[:120]!r}"
        head, _, content = answer.partition(b"\r\n\r\n")
        lines = [line.lower() for line in head.split(b"\r\n")[1:]]
        if b"connection: close" not in lines:
            return "the 408 did not say `connection: close`"
        if kind.endswith("head"):
            return ""  # the head guard answers in plain text: the request's protocol is unknown
        ctype = next((line.split(b":", 1)[1].strip().decode() for line in lines if line.startswith(b"content-type:")), "")
        v = wirecheck.check(door, 408, ctype, content, stream=False)
        return "" if v.outcome == "error" else f"the 408 is not an error in the {door} protocol: {v.problem}"
