"""Fitting a request to a local window when the server counts it differently from
nonstop's estimate (backends/local.py LocalBackend._fit)."""

from __future__ import annotations

import asyncio
from typing import Any

from nonstop.backends.local import LocalBackend
from nonstop.config.model import LocalBackendConfig
from nonstop.wire.anthropic import estimate_tokens


class TemplateWithoutTools(LocalBackend):
    """A server whose chat template leaves the tools out (as SmolLM2's does): it counts
    everything but them, at a steady rate."""

    def __init__(self, window: int) -> None:
        super().__init__(LocalBackendConfig(name="small", url="http://127.0.0.1:9", context_window=window,
                                            max_output_tokens=64, count_tokens="server"), session=None)  # type: ignore[arg-type]
        self.counted: list[int] = []

    async def count_tokens(self, local_req: dict) -> int:
        n = estimate_tokens({k: v for k, v in local_req.items() if k != "tools"})
        self.counted.append(n)
        return n


def claude_code_like(turns: int) -> dict[str, Any]:
    tools = [{"name": f"Tool{i}", "description": "d " * 400, "input_schema": {"type": "object", "properties": {}}}
             for i in range(30)]
    messages: list[dict[str, Any]] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 300})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 300})
    messages.append({"role": "user", "content": "the last question"})
    return {"model": "m", "max_tokens": 64, "system": "You are a coding agent. " + "rule " * 1500,
            "tools": tools, "messages": messages}


def test_a_template_that_leaves_tools_out_is_fitted_deeper_not_refused() -> None:
    backend = TemplateWithoutTools(4096)
    req = backend.local_request(claude_code_like(12))
    tokens = asyncio.run(backend.count_tokens(req))
    assert tokens > 4096  # too long as sent, even without its tools
    fitted = asyncio.run(backend._fit(req, tokens, 4096, req))
    assert fitted is not None, backend.counted
    assert fitted.tokens == backend.counted[-1] <= 4096 - 64
    # The first fitting, by the scale the whole request gave, cut tools that the server
    # never counted: it was counted again, and fitted further.
    assert len(backend.counted) >= 3
    assert {t.tier for t in fitted.tiers} >= {"system", "history"}


class CountsLikeTheEstimate(TemplateWithoutTools):
    async def count_tokens(self, local_req: dict) -> int:
        n = estimate_tokens(local_req)
        self.counted.append(n)
        return n


def test_a_server_that_counts_like_the_estimate_is_asked_once_more() -> None:
    backend = CountsLikeTheEstimate(4096)
    req = backend.local_request(claude_code_like(12))
    tokens = asyncio.run(backend.count_tokens(req))
    fitted = asyncio.run(backend._fit(req, tokens, 4096, req))
    assert fitted is not None and fitted.tokens <= 4096 - 64
    assert len(backend.counted) == 2  # the request as sent, and the fitted one
