"""Keep a local model's prompt cache warm: the request a local server gets, without the
parts Claude Code changes on every request that mean nothing to a local model.

A local server (llama.cpp, Ollama, LM Studio, vLLM) reuses the computed prefix of the
previous prompt only while the new prompt starts with the same tokens. Claude Code's
system prompt starts with an attribution line whose fields change per request (`cch=`,
`cc_prompt_id=`, `cc_turn_index=`, a per-session suffix on `cc_version`: docs/wire.md §6),
and can end with a `<total_tokens>` countdown: either one makes every turn reprocess the
whole prompt, system and tools included. Both are removed here. What else a turn changes
is appended after the earlier turns (two consecutive captured requests differ only in
the new turns and in where `cache_control` sits, which to_local_request drops), so the
prefix stays byte-identical.

Only the local request passes through here, never the cloud's bytes.
"""

from __future__ import annotations

from typing import Any

from nonstop.wire.claude_prompt import drop_attribution, drop_total_tokens


def normalize_for_prompt_cache(req: dict[str, Any]) -> dict[str, Any]:
    """`req` (the output of `to_local_request`) with the per-request noise removed from
    its system prompt. Returns `req` itself when there is none; otherwise a shallow copy
    (messages and tools are shared)."""
    system = req.get("system")
    if isinstance(system, str):
        text = _quiet(system)
        if text == system:
            return req
        out = {**req, "system": text}
        if not text:
            out.pop("system")
        return out
    if not isinstance(system, list):
        return req
    blocks: list[Any] = []
    changed = False
    for block in system:
        original = block.get("text") if isinstance(block, dict) else None
        if not isinstance(original, str):
            blocks.append(block)
            continue
        quiet = _quiet(original)
        if quiet == original:
            blocks.append(block)
            continue
        changed = True
        if quiet.strip():
            blocks.append({**block, "text": quiet})
    if not changed:
        return req
    out = {**req, "system": blocks}
    if not blocks:
        out.pop("system")
    return out


def _quiet(text: str) -> str:
    return drop_total_tokens(drop_attribution(text))
