"""Requests validate_messages_request accepts, in shapes and depths no client sends:
sizing and fitting them for a local model, and explaining their plan, never raises or
stalls.

Nested requests are built with orjson.loads, the server's own parser (asgi.parse_json_body),
to show each one gets past the door: orjson reads up to 1024 levels of nesting.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from nonstop.config import parse_config
from nonstop.routing.fit import fit_request, fitted_size, local_size
from nonstop.server.explain import explain_offline
from nonstop.wire.anthropic import estimate_tokens, to_local_request
from nonstop.wire.validate import validate_messages_request

BIG = "lorem ipsum dolor sit amet. " * 1500  # ~40 KB: over a 4k window


def _small_window() -> Any:
    return parse_config({"log": {"enabled": False}, "local": [
        {"name": "small", "url": "http://127.0.0.1:1", "context_window": 4096}]})


def _all_paths(req: dict[str, Any]) -> None:
    assert validate_messages_request(req) == ""
    local_size(req)
    fitted_size(req)
    for budget in (200, 1000, 4000):
        fit_request(to_local_request(req, model="m", max_tokens=100), budget, estimate_tokens, drop_turns=True)
    explain_offline(_small_window(), req, {}, None, time.time())


def _parsed(text: str) -> dict[str, Any]:
    doc = orjson.loads(text)
    assert isinstance(doc, dict)
    return doc


# --- tool_choice.name of any type (the validator never looks at tool_choice) ------------------

@pytest.mark.parametrize("req", [
    {"model": "x", "max_tokens": 100, "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
     "tool_choice": {"type": "tool", "name": ["Read"]},
     "messages": [{"role": "user", "content": BIG}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "hi"}]},
    {"model": "x", "max_tokens": 100, "tool_choice": {"type": "tool", "name": {}},
     "messages": [{"role": "user", "content": "hi"}]},
], ids=["list-name-with-tools", "dict-name-no-tools"])
def test_tool_choice_with_an_unhashable_name_does_not_raise(req: dict[str, Any]) -> None:
    _all_paths(req)


# --- tools nested deeper than orjson writes (255 levels; it reads 1024) ------------------------

def test_a_tool_schema_nested_300_levels_does_not_raise() -> None:
    schema = '{"a":' * 300 + "1" + "}" * 300
    req = _parsed('{"model":"x","max_tokens":100,"tools":[{"name":"Read","input_schema":' + schema + '}],'
                  '"messages":[{"role":"user","content":"hi"}]}')
    _all_paths(req)


# --- nesting deeper than Python recurses ---------------------------------------------------------

def test_a_tool_use_input_nested_1000_levels_does_not_raise() -> None:
    # estimate_tokens' walk() recurses once per level (wire/anthropic.py, walk).
    deep = "[" * 1000 + "1" + "]" * 1000
    req = _parsed('{"model":"x","max_tokens":100,"messages":[{"role":"user","content":"hi"},'
                  '{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Read","input":' + deep + '}]},'
                  '{"role":"user","content":"go on"}]}')
    _all_paths(req)


def test_tool_results_nested_500_deep_do_not_raise() -> None:
    # _clean_block recurses into a tool_result's content (two frames a level).
    inner = '"x"'
    for _ in range(500):
        inner = '[{"type":"tool_result","tool_use_id":"t1","content":' + inner + "}]"
    req = _parsed('{"model":"x","max_tokens":100,"messages":[{"role":"user","content":' + inner + "}]}")
    _all_paths(req)


# --- explain sizes a body nested deeper than orjson writes ----------------------------------------

def test_explain_of_a_request_with_deep_metadata_does_not_raise() -> None:
    deep = '{"a":' * 300 + "1" + "}" * 300
    req = _parsed('{"model":"x","max_tokens":100,"metadata":' + deep + ','
                  '"messages":[{"role":"user","content":"hi"}]}')
    assert validate_messages_request(req) == ""
    local_size(req)  # fine: metadata is not sent to a local model
    explain_offline(_small_window(), req, {}, None, time.time())


# --- markup left open costs one pass, not one per opening tag ------------------------------------
# An `<example>` or `<env>` with no closing tag ahead: the fitting tiers run inside the
# event loop (the local backend's _fit, plan()), so a scan per opener would stall it.

@pytest.mark.parametrize("req", [
    {"model": "x", "max_tokens": 100, "system": "# A\n" + "<env>" * 11000,
     "messages": [{"role": "user", "content": "hi"}]},
    {"model": "x", "max_tokens": 100, "tools": [{"name": "Read", "description": "<example>" * 6000}],
     "messages": [{"role": "user", "content": "hi"}]},
], ids=["unclosed-env-in-system", "unclosed-example-in-description"])
def test_fitted_size_is_not_quadratic_in_unclosed_markup(req: dict[str, Any]) -> None:
    assert validate_messages_request(req) == ""
    t0 = time.perf_counter()
    fitted_size(req)
    assert time.perf_counter() - t0 < 0.5
