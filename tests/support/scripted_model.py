"""A local model server whose answers to the eval suite are scripted, so the scores the
eval must give are known in advance.

It imitates llama-server where the eval looks (`/props`, `/v1/models`, `/apply-template`,
a streamed `/v1/messages`), recognises each task of nonstop.quality.tasks by the text of
the request's last message, and answers it as the script says:

    app = scripted_app("perfect")     # every task answered right: every category 100%
    app = scripted_app("flawed")      # FLAWED_SCORES below, worked out by hand

POST /_script {"script": ..., "model_path": ...} changes the script or the model file
the server reports (a model swap, for drift); GET /_requests (or app[STATE]["answered"])
lists the task ids answered.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from nonstop.quality.tasks import CWD, suite

Reply = tuple[str, Any]  # ("text", str) | ("tool", (name, input)) | ("runaway", str)

PERFECT: dict[str, Reply] = {
    "choice.read": ("tool", ("Read", {"file_path": f"{CWD}/src/app.py"})),
    "choice.bash_tests": ("tool", ("Bash", {"command": "pytest -q", "description": "Run the tests"})),
    "choice.grep": ("tool", ("Grep", {"pattern": "def parse_invoice", "output_mode": "content", "-n": True})),
    "choice.glob": ("tool", ("Glob", {"pattern": "config/**/*.yaml"})),
    "choice.edit": ("tool", ("Edit", {"file_path": f"{CWD}/src/config.py", "old_string": "DEFAULT_TIMEOUT = 30",
                                      "new_string": "DEFAULT_TIMEOUT = 60"})),
    "choice.write": ("tool", ("Write", {"file_path": f"{CWD}/notes/todo.md", "content": "- ship v2\n"})),
    "choice.git": ("tool", ("Bash", {"command": "git branch --show-current"})),
    "choice.read_range": ("tool", ("Read", {"file_path": f"{CWD}/src/server.py", "offset": 40, "limit": 21})),
    "loop.version": ("text", "requirements.txt pins requests==2.31.7."),
    "loop.failures": ("text", "17 tests failed (230 passed)."),
    "loop.next_read": ("tool", ("Read", {"file_path": f"{CWD}/src/billing/invoice.py"})),
    "loop.port": ("text", "The default PORT is 8437."),
    "stop.no_tool": ("text", "It means the server could not find the requested resource: not found."),
    "format.number": ("text", "42"),
    "format.path": ("text", "src/web/app.py"),
    "format.json": ("text", '{"name": "web", "port": 8080}'),
    "format.word": ("text", "READY"),
    "long.fact": ("text", "{fact}"),
}

FLAWED: dict[str, Reply] = {
    **PERFECT,
    "choice.read": ("tool", ("Bash", {"command": "cat src/app.py"})),  # wrong tool, valid input
    "choice.grep": ("tool", ("Grep", {"path": "src"})),  # right tool, pattern missing
    "choice.glob": ("text", "I cannot list files."),  # no call at all
    "loop.failures": ("text", "Some tests failed."),  # ignores the result
    "stop.no_tool": ("runaway", "404 means not found. " * 8),  # right, but never stops
    "format.json": ("text", '```json\n{"name": "web", "port": 8080}\n```'),  # close: fenced
    "format.word": ("text", "READY."),  # close: a full stop
    "long.fact": ("text", "I could not find it."),
}

# What the eval must say about FLAWED (the full suite), category by category.
FLAWED_SCORES = {
    "tool_choice": 6 / 8,  # read and glob wrong
    "tool_input": 6 / 8,  # grep's input breaks the schema, glob made no call
    "tool_loop": 3 / 4,  # failures
    "stop": 16 / 18,  # glob ended its turn, stop.no_tool ran to the limit
    "format": 3 / 4,  # json and word are half right
    "long_context": 0.0,
}
FLAWED_OVERALL = sum(FLAWED_SCORES.values()) / len(FLAWED_SCORES)

SCRIPTS = {"perfect": PERFECT, "flawed": FLAWED}
STATE = web.AppKey("state", dict)
_FACT = re.compile(r'RELEASE_CODENAME = "([^"]+)"')


def _signature(message: dict[str, Any]) -> str:
    """The last block of a message, as text: what tells one task from another."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    block = content[-1] if isinstance(content, list) and content else {}
    value = block.get("text") if block.get("type") == "text" else block.get("content")
    if isinstance(value, list):  # a tool result's content as blocks
        value = "".join(str(b.get("text", "")) for b in value if isinstance(b, dict))
    return value if isinstance(value, str) else ""


_KEYS = {t.id: _signature(t.messages[-1])[-60:] for t in suite()}


def task_of(req: dict[str, Any]) -> str:
    messages = req.get("messages") or []
    last = _signature(messages[-1]) if messages else ""
    if "RELEASE_CODENAME" in last:
        return "long.fact"
    return next((tid for tid, key in _KEYS.items() if key in last), "")


def _events(reply: Reply, fact: str, model: str) -> list[tuple[str, dict[str, Any]]]:
    kind, value = reply
    start = {"type": "message_start", "message": {
        "id": "msg_scripted", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 100, "output_tokens": 1}}}
    out: list[tuple[str, dict[str, Any]]] = [("message_start", start)]
    if kind == "tool":
        name, args = value
        raw = json.dumps(args)
        out.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_01Scripted000000000000000", "name": name, "input": {}}}))
        out += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "input_json_delta", "partial_json": raw[i:i + 12]}})
                for i in range(0, len(raw), 12)]
        stop, tokens = "tool_use", 24
    else:
        text = value.replace("{fact}", fact)
        out.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}))
        out += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": text[i:i + 8]}})
                for i in range(0, len(text), 8)]
        stop, tokens = ("max_tokens", 1024) if kind == "runaway" else ("end_turn", 16)
    out.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": tokens}}))
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def scripted_app(script: str = "perfect", model_path: str = "/models/scripted-coder-7b.Q4_K_M.gguf",
                 n_ctx: int = 8192) -> web.Application:
    state: dict[str, Any] = {"script": script, "model_path": model_path, "answered": []}

    async def messages(request: web.Request) -> web.StreamResponse:
        req = await request.json()
        tid = task_of(req)
        state["answered"].append(tid)
        state["headers"] = dict(request.headers)
        state["models"] = [*state.get("models", []), req.get("model")]
        reply = SCRIPTS[state["script"]].get(tid, ("text", "?"))
        found = _FACT.search(_signature((req.get("messages") or [{}])[-1]))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for name, data in _events(reply, found.group(1) if found else "", str(req.get("model", ""))):
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            await asyncio.sleep(0.002)
        return resp

    async def props(_: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": 1,
                                  "model_path": state["model_path"], "model_ftype": "Q4_K_M"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": state["model_path"], "object": "model", "owned_by": "llamacpp",
            "meta": {"n_params": 7_615_616_512, "n_ctx_train": 32768, "size": 4_683_071_488, "ftype": "Q4_K_M"}}]})

    async def apply_template(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": " ".join(t["function"]["name"] for t in body.get("tools", []))})

    async def change(request: web.Request) -> web.Response:
        state.update({k: v for k, v in (await request.json()).items() if k in ("script", "model_path")})
        return web.json_response({"ok": True})

    async def answered(_: web.Request) -> web.Response:
        return web.json_response(state["answered"])

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/_script", change)
    app.router.add_get("/_requests", answered)
    return app
