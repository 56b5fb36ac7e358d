"""Translation between Anthropic Messages (the internal form) and OpenAI Chat
Completions, in the four directions. Pure functions and sans-IO state machines over
parsed JSON; no I/O.

Local backends that speak only OpenAI (`api = "openai"`):
    backend_request   Anthropic request -> Chat Completions request
                      (anthropic_to_openai_request)
    backend_reply     Chat Completions reply or chunks -> Anthropic message or events
                      (openai_to_anthropic_response, OpenAIStreamTranslator)

The OpenAI front door (clients that speak OpenAI):
    client_request    Chat Completions request -> Anthropic request
                      (openai_request_to_anthropic)
    client_reply      Anthropic message or events -> Chat Completions reply or chunks
                      (anthropic_response_to_openai, AnthropicToOpenAIStream)

Tool-call arguments that arrive as JSON text, whole or in fragments, are read by
wire/arguments.py, which the Anthropic local stream (wire/local_stream.py) uses too.
docs/compatibility.md lists what each direction maps and what it drops, and why.
"""

from __future__ import annotations

from nonstop.wire.arguments import parse_arguments
from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE
from nonstop.wire.openai.backend_reply import (
    OpenAIStreamTranslator,
    cut_tool_call,
    finish_reason_of,
    openai_to_anthropic_response,
)
from nonstop.wire.openai.backend_request import (
    TOOL_ERROR_PREFIX,
    TOOL_NAME_MAP_KEY,
    anthropic_to_openai_request,
    offered_tool_names,
    openai_tool_name,
    tool_name_map_for,
)
from nonstop.wire.openai.client_reply import (
    AnthropicToOpenAIStream,
    anthropic_response_to_openai,
)
from nonstop.wire.openai.client_request import (
    TranslationError,
    legacy_functions,
    openai_request_to_anthropic,
)

__all__ = [
    "LOCAL_THINKING_SIGNATURE",
    "TOOL_ERROR_PREFIX",
    "TOOL_NAME_MAP_KEY",
    "AnthropicToOpenAIStream",
    "OpenAIStreamTranslator",
    "TranslationError",
    "anthropic_response_to_openai",
    "anthropic_to_openai_request",
    "cut_tool_call",
    "finish_reason_of",
    "legacy_functions",
    "offered_tool_names",
    "openai_request_to_anthropic",
    "openai_to_anthropic_response",
    "openai_tool_name",
    "parse_arguments",
    "tool_name_map_for",
]
