"""to_local_request: a Claude Code request made fit for a local Anthropic-compatible server."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from nonstop.wire.anthropic import (
    LOCAL_REQUEST_KEYS,
    estimate_text_tokens,
    estimate_tokens,
    new_message_id,
    to_local_request,
)
from nonstop.wire.openai.backend_request import anthropic_to_openai_request
from nonstop.wire.tool_ids import ServerToolIds

CC = {"type": "ephemeral"}


def claude_code_request() -> dict[str, Any]:
    """The shape of a captured 2.1.x request, shrunk."""
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 128000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_abc"},
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": CC},
            {"type": "text", "text": "Tool rules.", "cache_control": CC},
            {"type": "text", "text": "Env info.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "tools": [
            {
                "name": "Read",
                "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
                "cache_control": CC,
            },
            {
                "name": "ToolSearch",
                "description": "find tools",
                "input_schema": {"type": "object"},
                "defer_loading": True,
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read a.py", "cache_control": CC}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "let me think", "signature": "sig=="},
                    {"type": "redacted_thinking", "data": "abc"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"path": "a.py"}, "cache_control": CC},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "print(1)", "cache_control": CC}],
                        "is_error": False,
                        "cache_control": CC,
                    }
                ],
            },
            {"role": "system", "content": "Reminder: be brief."},
            {"role": "user", "content": "now explain it"},
        ],
    }


def local(req: dict[str, Any], model: str = "qwen3-coder", max_tokens: int = 4096) -> dict[str, Any]:
    return to_local_request(req, model=model, max_tokens=max_tokens)


def contains_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(contains_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(contains_key(v, key) for v in node)
    return False


# --- the captured shape as a whole --------------------------------------------------------


def test_claude_code_request() -> None:
    req = claude_code_request()
    before = copy.deepcopy(req)
    out = local(req)
    assert req == before, "the input must not be modified"
    assert set(out) <= LOCAL_REQUEST_KEYS
    assert out["model"] == "qwen3-coder"
    assert out["max_tokens"] == 4096
    assert out["stream"] is True
    for dropped in ("thinking", "context_management", "output_config", "metadata"):
        assert dropped not in out
    assert not contains_key(out, "cache_control")
    assert not contains_key(out, "defer_loading")
    assert not contains_key(out, "signature")
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert all(m["role"] != "system" for m in out["messages"])
    assert out["system"][-1] == {"type": "text", "text": "Reminder: be brief."}
    orjson.dumps(out)  # plain JSON all the way down


# --- system ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "system"),
    [
        ({"system": "plain"}, [{"type": "text", "text": "plain"}]),
        ({"system": ""}, None),
        ({"system": []}, None),
        (
            {"system": [{"type": "text", "text": "a", "cache_control": CC}, {"type": "text", "text": "b"}]},
            [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        ),
        (
            {"system": "s", "messages": [{"role": "system", "content": "t"}, {"role": "user", "content": "u"}]},
            [{"type": "text", "text": "s"}, {"type": "text", "text": "t"}],
        ),
        (
            {"messages": [
                {"role": "user", "content": "u"},
                {"role": "system", "content": [{"type": "text", "text": "t", "cache_control": CC}]},
            ]},
            [{"type": "text", "text": "t"}],
        ),
    ],
    ids=["string", "empty-string", "empty-list", "blocks", "system-message-appended", "system-message-only"],
)
def test_system(req: dict[str, Any], system: list[dict] | None) -> None:
    req.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = local(req)
    if system is None:
        assert "system" not in out
    else:
        assert out["system"] == system
    assert all(m["role"] in ("user", "assistant") for m in out["messages"])


def test_system_message_between_user_turns_merges_them() -> None:
    out = local({"messages": [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "two"},
    ]})
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
    ]


# --- dropped top-level keys --------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["thinking", "context_management", "output_config", "metadata", "service_tier", "container", "mcp_servers", "betas"],
)
def test_unknown_top_level_keys_dropped(key: str) -> None:
    out = local({key: {"x": 1}, "messages": [{"role": "user", "content": "hi"}]})
    assert key not in out


@pytest.mark.parametrize("key", ["temperature", "top_p", "top_k", "stop_sequences", "stream"])
def test_sampling_keys_kept(key: str) -> None:
    value: Any = ["\n\nHuman:"] if key == "stop_sequences" else 0.5
    out = local({key: value, "messages": [{"role": "user", "content": "hi"}]})
    assert out[key] == value


# --- cache_control and block cleaning ------------------------------------------------------


SERVER_T1 = ServerToolIds()("t1")  # a local server gets history ids in its own form


@pytest.mark.parametrize(
    ("block", "cleaned"),
    [
        ({"type": "text", "text": "t", "cache_control": CC, "citations": None}, {"type": "text", "text": "t"}),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}, "cache_control": CC},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        ),
        (
            {"type": "tool_result", "tool_use_id": "t1", "content": "ok", "is_error": True, "cache_control": CC},
            {"type": "tool_result", "tool_use_id": SERVER_T1, "content": "ok", "is_error": True},
        ),
        (
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "text", "text": "x", "cache_control": CC},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "B"}},
            ]},
            {"type": "tool_result", "tool_use_id": SERVER_T1, "content": [
                {"type": "text", "text": "x"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "B"}},
            ]},
        ),
        (
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc body"}, "cache_control": CC},
            {"type": "text", "text": "doc body"},
        ),
        (
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]}},
            {"type": "text", "text": "p1\np2"},
        ),
        (
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "text", "text": "[document block omitted]"},
        ),
        ({"type": "server_tool_use", "id": "srv_1", "name": "web_search"}, {"type": "text", "text": "[server_tool_use block omitted]"}),
        ("bare string", {"type": "text", "text": "bare string"}),
    ],
    ids=["text", "image", "tool-result-string", "tool-result-blocks", "document-text", "document-content", "document-pdf", "server-tool", "string"],
)
def test_user_block_cleaning(block: Any, cleaned: dict) -> None:
    out = local({"messages": [{"role": "user", "content": [block]}]})
    assert out["messages"][0]["content"] == [cleaned]


def test_tool_use_block_keeps_only_its_fields() -> None:
    block = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": 1}, "cache_control": CC, "caller": "x"}
    out = local({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": [block]}]})
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": ServerToolIds()("toolu_1"), "name": "Read", "input": {"p": 1}}]


def test_a_server_gets_the_historys_tool_ids_as_nine_letters_and_digits_paired_up() -> None:
    """Mistral-family templates and mistral_common refuse any other id; Claude Code's are
    30 characters. The same history gives the same ids (the server's prompt cache)."""
    history = {"messages": [
        {"role": "user", "content": "fix it"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "Read", "input": {"p": "a"}},
            {"type": "tool_use", "id": "toolu_01Bq8v9gLgaQ8sd8sDHd8A2K", "name": "Read", "input": {"p": "b"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01Bq8v9gLgaQ8sd8sDHd8A2K", "content": "b"},
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": [
                {"type": "text", "text": "a"}]}]},
    ]}
    out = local(history)
    calls = [b["id"] for b in out["messages"][1]["content"]]
    results = [b["tool_use_id"] for b in out["messages"][2]["content"]]
    assert all(len(i) == 9 and i.isalnum() and i.isascii() for i in calls) and calls[0] != calls[1]
    assert results == [calls[1], calls[0]]
    assert local(copy.deepcopy(history)) == out
    chat = anthropic_to_openai_request(out, model="m", max_tokens=64, stream=False)
    assert [c["id"] for c in chat["messages"][1]["tool_calls"]] == calls
    assert [m["tool_call_id"] for m in chat["messages"][2:4]] == results


# --- thinking in history --------------------------------------------------------------------


def test_thinking_blocks_removed_from_assistant_history() -> None:
    out = local({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "answer"},
        ]},
        {"role": "user", "content": "more"},
    ]})
    assert out["messages"][1]["content"] == [{"type": "text", "text": "answer"}]


def test_assistant_turn_of_only_thinking_keeps_a_placeholder() -> None:
    out = local({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
        {"role": "user", "content": "more"},
    ]})
    assert out["messages"][1]["role"] == "assistant"
    content = out["messages"][1]["content"]
    assert content and all(b["type"] == "text" for b in content)


# --- tools ----------------------------------------------------------------------------------


def test_tools_cleaned() -> None:
    out = local(claude_code_request())
    assert out["tools"] == [
        {
            "name": "Read",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
        {"name": "ToolSearch", "description": "find tools", "input_schema": {"type": "object"}},
    ]
    assert out["tool_choice"] == {"type": "auto"}


def test_custom_typed_tool_kept() -> None:
    out = local({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "custom", "name": "X", "input_schema": {"type": "object"}}],
    })
    assert out["tools"] == [{"name": "X", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    "tools",
    [
        [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        [{"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}],
        [],
        [{"description": "no name"}],
    ],
    ids=["web-search", "anthropic-defined", "empty", "nameless"],
)
def test_no_tools_left_removes_tool_choice(tools: list[dict]) -> None:
    out = local({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools,
        "tool_choice": {"type": "any"},
    })
    assert "tools" not in out
    assert "tool_choice" not in out


def test_tool_choice_keeps_type_and_name_only() -> None:
    out = local({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "Read", "disable_parallel_tool_use": True},
    })
    assert out["tool_choice"] == {"type": "tool", "name": "Read"}


# --- max_tokens and model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "cap", "expected"),
    [
        (128000, 4096, 4096),
        (100, 4096, 100),
        (4096, 4096, 4096),
        (None, 2048, 2048),
        (0, 2048, 2048),
        (-5, 2048, 2048),
        ("lots", 2048, 2048),
    ],
)
def test_max_tokens_capped(asked: Any, cap: int, expected: int) -> None:
    req: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if asked is not None:
        req["max_tokens"] = asked
    assert local(req, max_tokens=cap)["max_tokens"] == expected


def test_model_replaced() -> None:
    out = local({"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "hi"}]}, model="local-model")
    assert out["model"] == "local-model"


def test_model_set_even_when_missing() -> None:
    assert local({"messages": []}, model="m")["model"] == "m"


# --- message shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a1"},
                {"role": "assistant", "content": [{"type": "text", "text": "a2"}]},
            ],
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "text", "text": "a1"}, {"type": "text", "text": "a2"}]},
            ],
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
            [{"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"},
            ]}],
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}, "junk", {"role": "assistant", "content": "a"}],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        ),
        (
            [{"role": "user", "content": []}],
            [{"role": "user", "content": [{"type": "text", "text": "(no content)"}]}],
        ),
        (
            [{"role": "user", "content": [None, 5, {"type": "text", "text": "ok"}]}],
            [{"role": "user", "content": [{"type": "text", "text": "ok"}]}],
        ),
    ],
    ids=["two-users", "two-assistants", "three-users", "unknown-roles", "empty-content", "junk-blocks"],
)
def test_messages(messages: list[Any], expected: list[dict]) -> None:
    assert local({"messages": messages})["messages"] == expected


def test_merged_messages_do_not_share_lists_with_the_input() -> None:
    first = [{"type": "text", "text": "a"}]
    req = {"messages": [{"role": "user", "content": first}, {"role": "user", "content": "b"}]}
    local(req)
    assert first == [{"type": "text", "text": "a"}]


# --- estimates ------------------------------------------------------------------------------


def test_estimate_tokens_is_positive() -> None:
    assert estimate_tokens({}) >= 1
    assert estimate_tokens({"messages": []}) >= 1
    assert estimate_tokens({"messages": [{"role": "user", "content": ""}]}) >= 1


def test_estimate_tokens_grows_with_content() -> None:
    sizes = [
        estimate_tokens({"messages": [{"role": "user", "content": "word " * n}]})
        for n in (0, 10, 100, 1000, 10000)
    ]
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == len(sizes)


@pytest.mark.parametrize(
    "extra",
    [
        {"system": "x" * 1000},
        {"tools": [{"name": "T", "description": "d" * 1000, "input_schema": {"type": "object"}}]},
        {"messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "A"}}]},
        ]},
        {"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {"p": "v" * 500}}]},
        ]},
    ],
    ids=["system", "tools", "image", "tool-input"],
)
def test_estimate_tokens_counts_every_part(extra: dict[str, Any]) -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert estimate_tokens({**base, **extra}) > estimate_tokens(base)


def test_estimate_ignores_cache_control_and_signatures() -> None:
    plain = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    marked = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral" * 50}}]}]}
    assert estimate_tokens(plain) == estimate_tokens(marked)


def test_claude_code_request_estimate_shrinks_locally() -> None:
    req = claude_code_request()
    assert 0 < estimate_tokens(local(req)) <= estimate_tokens(req)


@pytest.mark.parametrize(("text", "expected"), [("", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_estimate_text_tokens(text: str, expected: int) -> None:
    assert estimate_text_tokens(text) == expected


@pytest.mark.parametrize(("text", "per_char"), [
    ("漢字を読む" * 2000, 1.0),  # CJK: a token a character, as tokenizers read it
    ("Привет, мир " * 1000, 0.55),  # Cyrillic with spaces: two-byte letters weigh 2.25 characters
    ("def f(x):\n    return x\n" * 500, 1 / 3.5),  # code and English: 3.5 characters a token
])
def test_the_estimate_weighs_text_by_its_script(text: str, per_char: float) -> None:
    """Counted as plain characters, text outside ASCII read two to four times short of
    what a tokenizer makes of it, and overflowed a local window that seemed to hold it."""
    got = estimate_tokens({"messages": [{"role": "user", "content": text}]}) - 4
    assert got == pytest.approx(len(text) * per_char, rel=0.06)
    # In a block, as a tool result's text, or as the system prompt: the same weight.
    assert estimate_tokens({"system": [{"type": "text", "text": text}],
                            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}) == pytest.approx(2 * got + 4, abs=2)
    assert estimate_tokens({"messages": [{"role": "user", "content": "\ud800" + text}]}) >= got  # a lone surrogate


def test_new_message_id_is_unique_and_safe() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("msg_") and i.replace("_", "").isalnum() for i in ids)


def test_tool_choice_naming_a_dropped_tool_is_not_forwarded() -> None:
    out = local({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"name": "Read", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        "tool_choice": {"type": "tool", "name": "web_search"},
    })
    names = {t["name"] for t in out["tools"]}
    choice = out.get("tool_choice")
    assert choice is None or choice.get("name") in names | {None}
