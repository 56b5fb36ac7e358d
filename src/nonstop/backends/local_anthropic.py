"""A local server with a native Anthropic /v1/messages (llama.cpp's llama-server, Ollama
>= 0.14, LM Studio >= 0.4.1): the request goes as it is, after sanitising."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from nonstop.backends.base import read_capped
from nonstop.backends.local import CALIBRATION_REQUEST, Call, LocalBackend, capped

# How long a server may take to count a request before the estimate is used: one known
# to count (it may be busy behind a long generation), and one not known to yet (counting
# even a long prompt takes a real server well under it). A server not known to count
# whose count times out UNKNOWN_COUNT_TIMEOUTS times is not asked again: one that hangs on
# an endpoint it lacks (Ollama can) costs the start-up calibration and then one request
# this wait, while a server slow only once (a model loaded on first use: LM Studio's JIT,
# llama-swap) is still asked.
COUNT_TIMEOUT = 30.0
FIRST_COUNT_TIMEOUT = 5.0
UNKNOWN_COUNT_TIMEOUTS = 2
# Keys a count_tokens endpoint does not take.
_NOT_COUNTED = ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k")


class AnthropicLocalBackend(LocalBackend):
    _count_timeouts = 0  # counts that timed out while the server was not known to count

    async def calibrate(self) -> None:
        """Measure how this server's tokens compare with nonstop's estimate, so the
        planner can trust sizes before the first real request."""
        if self._server_counts is not False:
            await self.count_tokens(CALIBRATION_REQUEST)

    async def _count(self, local_req: dict, estimate: int) -> int:
        """The server's own count where it has one (llama-server does), else the estimate."""
        if self._server_counts is False:
            return self.in_server_tokens(estimate)
        body = {k: v for k, v in local_req.items() if k not in _NOT_COUNTED}
        try:
            async with self.session.post(
                self.base + "/v1/messages/count_tokens", data=orjson.dumps(body), headers=self.headers(),
                timeout=aiohttp.ClientTimeout(total=COUNT_TIMEOUT if self._server_counts else FIRST_COUNT_TIMEOUT,
                                              connect=self.cfg.connect_timeout),
            ) as r:
                if r.status == 200:
                    data = orjson.loads(await read_capped(r))
                    n = data.get("input_tokens") if isinstance(data, dict) else None
                    if isinstance(n, int) and n > 0:
                        self._server_counts = True
                        self.state.counted(estimate, n)
                        return n
                if r.status in (404, 405, 501) and self._server_counts is None:
                    self._server_counts = False
        except (ValueError, aiohttp.ClientPayloadError):  # not JSON, or too large
            pass
        except aiohttp.ConnectionTimeoutError:  # the request itself will find out, and say so
            pass
        except TimeoutError:  # a server that hangs on an endpoint it lacks (Ollama can)
            if self._server_counts is None:  # one that has counted may just have been busy
                self._count_timeouts += 1
                if self._count_timeouts >= UNKNOWN_COUNT_TIMEOUTS:
                    self._server_counts = False  # not asked again: each request would wait as long
        except (aiohttp.ClientError, OSError):  # the request itself will find out, and say so
            pass
        return self.in_server_tokens(estimate)

    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Call:
        return Call("/v1/messages", local_req, local_req["model"], tokens, capped(local_req, original))

    def message_from(self, doc: Any, call: Call) -> dict | None:
        """The reply as a message; None for anything else (an error sent with a 200, an
        empty object), which is then a broken reply and the next backend is tried."""
        if not isinstance(doc, dict) or doc.get("type") == "error" or doc.get("error"):
            return None
        content = doc.get("content")
        if isinstance(content, str):  # a server that answers text as a plain string
            return {**doc, "content": [{"type": "text", "text": content}]}
        return doc if isinstance(content, list) else None
