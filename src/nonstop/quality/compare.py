"""Did the local model do what the cloud did? A mechanical comparison of two answers to
the same request, for the shadow comparison (server/shadow.py).

An answer is summarised as its tool calls (name and input), its stop reason, its length
in output tokens and its latency. Two answers agree when the local one called the same
tool (the first one, by name) with an input valid against that tool's schema, or, when
the cloud called no tool, when neither did; and when they stopped for the same reason.
Length and latency are reported, not judged.

Pure: summaries in, a comparison out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nonstop.wire.anthropic import Event
from nonstop.wire.repair import schema_problem


@dataclass
class Answer:
    tools: list[tuple[str, Any]] = field(default_factory=list)  # (name, input) per call
    stop_reason: str = ""
    output_tokens: int = 0
    ms: float = 0.0


@dataclass(frozen=True)
class Comparison:
    cloud_tool: str
    local_tool: str
    same_tool: bool
    valid_input: bool
    cloud_stop: str
    local_stop: str
    same_stop: bool
    length_ratio: float | None
    cloud_ms: float
    local_ms: float

    @property
    def agreed(self) -> bool:
        return self.same_tool and self.valid_input and self.same_stop

    def as_dict(self) -> dict[str, Any]:
        return {
            "cloud_tool": self.cloud_tool, "local_tool": self.local_tool, "same_tool": self.same_tool,
            "valid_input": self.valid_input, "cloud_stop": self.cloud_stop, "local_stop": self.local_stop,
            "same_stop": self.same_stop, "length_ratio": self.length_ratio, "cloud_ms": self.cloud_ms,
            "local_ms": self.local_ms, "agreed": self.agreed,
        }


def answer_of_message(msg: Mapping[str, Any], ms: float = 0.0) -> Answer:
    """The summary of a whole Messages reply."""
    tools = [(str(b.get("name", "")), b.get("input")) for b in msg.get("content") or []
             if isinstance(b, Mapping) and b.get("type") == "tool_use"]
    usage = msg.get("usage") if isinstance(msg.get("usage"), Mapping) else {}
    out = usage.get("output_tokens") if isinstance(usage, Mapping) else 0
    return Answer(tools, str(msg.get("stop_reason") or ""), out if isinstance(out, int) else 0, ms)


class StreamAnswer:
    """The summary of a Messages stream, built event by event."""

    def __init__(self) -> None:
        self.answer = Answer()
        self._tools: dict[int, list[str]] = {}  # index -> [name, partial json]
        # A whole answer: its stream ended (message_stop) and no error event came.
        self.ended = False
        self.failed = False

    def feed(self, events: Sequence[Event]) -> None:
        import orjson

        for name, data in events:
            t = data.get("type", name)
            idx = data.get("index")
            if t == "content_block_start" and isinstance(idx, int):
                block = data.get("content_block") or {}
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    self._tools[idx] = [str(block.get("name", "")), ""]
            elif t == "content_block_delta" and idx in self._tools:
                delta = data.get("delta") or {}
                if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
                    self._tools[idx][1] += str(delta.get("partial_json", ""))
            elif t == "content_block_stop" and idx in self._tools:
                tool_name, raw = self._tools.pop(idx)
                try:
                    value = orjson.loads(raw) if raw else {}
                except orjson.JSONDecodeError:
                    value = None
                self.answer.tools.append((tool_name, value))
            elif t == "message_delta":
                delta = data.get("delta") or {}
                usage = data.get("usage") or {}
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    self.answer.stop_reason = delta["stop_reason"]
                if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                    self.answer.output_tokens = usage["output_tokens"]
            elif t == "message_stop":
                self.ended = True
            elif t == "error":
                self.failed = True

    @property
    def whole(self) -> bool:
        return self.ended and not self.failed


def compare(cloud: Answer, local: Answer, tools: Sequence[Mapping[str, Any]]) -> Comparison:
    """`tools`: the request's offered tools (for the schema of the local call's input)."""
    cloud_tool = cloud.tools[0][0] if cloud.tools else ""
    local_tool, local_input = local.tools[0] if local.tools else ("", None)
    schemas = {str(t.get("name")): t.get("input_schema") for t in tools if isinstance(t, Mapping)}
    valid = True
    if local_tool:
        valid = local_tool in schemas and isinstance(local_input, dict) and not schema_problem(local_input, schemas[local_tool], "input")
    ratio = local.output_tokens / cloud.output_tokens if cloud.output_tokens else None
    return Comparison(
        cloud_tool=cloud_tool, local_tool=local_tool, same_tool=cloud_tool == local_tool, valid_input=valid,
        cloud_stop=cloud.stop_reason, local_stop=local.stop_reason, same_stop=cloud.stop_reason == local.stop_reason,
        length_ratio=round(ratio, 3) if ratio is not None else None, cloud_ms=round(cloud.ms, 1), local_ms=round(local.ms, 1),
    )
