"""Translation between Anthropic Messages (the internal form) and OpenAI Chat
Completions, in both directions. Pure functions and sans-IO state machines over parsed
JSON; no I/O.

Local backends that speak only OpenAI (`api = "openai"`):
    anthropic_to_openai_request   Anthropic request -> Chat Completions request
    openai_to_anthropic_response  Chat Completions reply -> Anthropic message
    OpenAIStreamTranslator        Chat Completions chunks -> Anthropic stream events

The OpenAI front door (clients that speak OpenAI):
    openai_request_to_anthropic   Chat Completions request -> Anthropic request
    anthropic_response_to_openai  Anthropic message -> Chat Completions reply
    AnthropicToOpenAIStream       Anthropic stream events -> Chat Completions chunks

docs/compatibility.md lists what each direction maps and what it drops, and why.
"""

from __future__ import annotations

from nonstop.wire.local_stream import LOCAL_THINKING_SIGNATURE
from nonstop.wire.openai_args import parse_arguments
from nonstop.wire.openai_frontdoor import TranslationError, openai_request_to_anthropic
from nonstop.wire.openai_frontdoor_reply import (
    AnthropicToOpenAIStream,
    anthropic_response_to_openai,
)
from nonstop.wire.openai_request import (
    TOOL_ERROR_PREFIX,
    TOOL_NAME_MAP_KEY,
    anthropic_to_openai_request,
    openai_tool_name,
    tool_name_map_for,
)
from nonstop.wire.openai_stream import OpenAIStreamTranslator, openai_to_anthropic_response

__all__ = [
    "LOCAL_THINKING_SIGNATURE",
    "TOOL_ERROR_PREFIX",
    "TOOL_NAME_MAP_KEY",
    "AnthropicToOpenAIStream",
    "OpenAIStreamTranslator",
    "TranslationError",
    "anthropic_response_to_openai",
    "anthropic_to_openai_request",
    "openai_request_to_anthropic",
    "openai_to_anthropic_response",
    "openai_tool_name",
    "parse_arguments",
    "tool_name_map_for",
]
