"""Finding local model servers on well-known ports.

A port is identified by what it answers, never by its number alone: Ollama has
`/api/version`, llama.cpp has `/props`, LM Studio has `/api/v0/models`, vLLM has
`/version` plus `max_model_len` in `/v1/models`, and anything else with `/v1/models` is
a generic OpenAI-compatible server. Anything that does not answer JSON is skipped.

Probes never send credentials and never raise: a closed port, a port speaking another
protocol, or a server that hangs all come back as "nothing here" within the timeout.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from nonstop.backends.base import positive_int, read_capped
from nonstop.config import DiscoveryConfig, LocalBackendConfig

# Claude Code's first request is 12-15k tokens, 16-27k with MCP servers and skills.
CLAUDE_CODE_MIN_CONTEXT = 16384
DEFAULT_CONTEXT = 8192
# The context Ollama gives a request that sets no num_ctx (nonstop's never do) when the
# model's Modelfile sets none and OLLAMA_CONTEXT_LENGTH is not known: 4096 since 0.6.7
# (from 0.15.5 it depends on the GPU's memory, never less), 2048 before.
OLLAMA_DEFAULT_CONTEXT = 4096
OLLAMA_OLD_DEFAULT_CONTEXT = 2048
OLLAMA_4K_DEFAULT = (0, 6, 7)
# What LM Studio loads a model with unless the user set another context length.
LMSTUDIO_DEFAULT_CONTEXT = 4096
OLLAMA_NATIVE_API = (0, 14)

_PROBE_TOOL = "nonstop_probe_tool"

_LABELS = {
    "llamacpp": "llama.cpp",
    "ollama": "Ollama",
    "lmstudio": "LM Studio",
    "vllm": "vLLM",
    "openai": "OpenAI-compatible server",
}


@dataclass
class DiscoveredServer:
    kind: str  # "llamacpp" | "ollama" | "lmstudio" | "vllm" | "openai"
    url: str  # base URL without /v1
    api: str  # "anthropic" if it serves /v1/messages natively, else "openai"
    models: list[str] = field(default_factory=list)
    model: str = ""
    context_window: int | None = None
    tools: bool | None = None
    notes: list[str] = field(default_factory=list)
    # The window is Ollama's stock one, guessed while the model is not loaded: the
    # server's own reading, once it is loaded, replaces it (up or down).
    window_guessed: bool = False
    # The context the model was trained on, where the server says (Ollama's /api/show):
    # no window the server reports later can be larger.
    trained_context: int | None = None
    # Why the window is assumed rather than said (a guessed or unknown one).
    assumed_why: str = ""


async def discover(cfg: DiscoveryConfig, session: aiohttp.ClientSession) -> list[DiscoveredServer]:
    """Probe every configured port at once; the servers found, in port order."""
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    urls = [f"http://{host}:{port}" for port in cfg.ports]
    results = await asyncio.gather(
        *(probe_server(session, url, cfg.timeout) for url in urls), return_exceptions=True
    )
    return [r for r in results if isinstance(r, DiscoveredServer)]


async def probe_server(
    session: aiohttp.ClientSession, url: str, timeout: float, model: str = ""
) -> DiscoveredServer | None:
    """What serves `url`, or None. Finishes within `timeout` seconds: identification
    comes first, and details that do not arrive in time are left unknown. `model`: the
    model a backend is configured with (on a server with several, the one described)."""
    base = url.rstrip("/")
    base = base.removesuffix("/v1")
    probe = _Probe(session, base, timeout, model)
    try:
        async with asyncio.timeout(timeout + 0.5):
            return await probe.run()
    except Exception:  # a probe must never take discovery down
        return None


def planned_window(d: DiscoveredServer) -> int:
    """The window nonstop plans with for `d`: the one it says or is guessed to run, else
    DEFAULT_CONTEXT (a server that says none refuses what is over its own, or its count
    corrects nonstop's)."""
    return d.context_window if d.context_window and d.context_window >= 256 else DEFAULT_CONTEXT


def window_said(d: DiscoveredServer) -> bool:
    """Whether the server said the window nonstop plans with (else it is assumed)."""
    return bool(d.context_window and d.context_window >= 256 and not d.window_guessed)


def to_backend_config(d: DiscoveredServer, name: str | None = None) -> LocalBackendConfig:
    """A backend entry for a discovered server, with a window it can actually serve."""
    ctx = planned_window(d)
    port = urlsplit(d.url).port
    return LocalBackendConfig(
        name=name or (f"{d.kind}-{port}" if port else d.kind),
        url=d.url,
        api="anthropic" if d.api == "anthropic" else "openai",
        model=d.model,
        context_window=ctx,
        max_output_tokens=max(1, min(4096, ctx // 4)),
    )


def describe(d: DiscoveredServer) -> str:
    """One line for people: what was found and what it can do."""
    model = d.model or "none"
    if "/" in model or "\\" in model:
        model = PurePath(model.replace("\\", "/")).name
    tools = {True: "yes", False: "no", None: "unknown"}[d.tools]
    line = f"{_LABELS.get(d.kind, d.kind)} at {d.url}: model {model}, {context_words(d)}, tools {tools}"
    if d.api != "anthropic":
        line += ", OpenAI API"
    return line


def context_words(d: DiscoveredServer) -> str:
    """"context 32768", or the window nonstop plans with and why it is assumed."""
    if window_said(d):
        return f"context {d.context_window}"
    return f"context {planned_window(d)} (assumed: {d.assumed_why or 'the server does not say'})"


# --- probing ----------------------------------------------------------------------------

_Answer = tuple[int, Any]  # status, parsed JSON body


class _Probe:
    def __init__(self, session: aiohttp.ClientSession, base: str, timeout: float, model: str = ""):
        self.session = session
        self.model = model
        self.base = base
        self.port = urlsplit(base).port
        self.timeout = timeout
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.answers: dict[str, _Answer | None] = {}
        # Paths that did not answer in time (a server that takes the connection and
        # stalls, its head or its body): what they would have said is assumed.
        self.silent: set[str] = set()

    async def run(self) -> DiscoveredServer | None:
        await self._identify()
        a = self.answers
        if _is_ollama(a.get("/api/version")):
            return await self._ollama()
        if _is_llamacpp(a.get("/props")) or _llamacpp_models(a.get("/v1/models")):
            return await self._llamacpp()  # (still loading its model: /props says 503 meanwhile)
        if _model_list(a.get("/api/v0/models")) is not None:
            return await self._lmstudio()
        models = _model_list(a.get("/v1/models"))
        if models is None:
            return None
        if _is_vllm(a.get("/version"), models):
            return self._vllm(models)
        if self.port == 1234:
            return await self._lmstudio()
        return self._openai(models)

    async def _identify(self) -> None:
        """Ask the identifying questions at once. An answer that settles the kind ends the
        round: Ollama has been seen to hang on paths it does not know."""
        paths = ["/api/version", "/props", "/api/v0/models", "/version", "/v1/models"]
        tasks = {asyncio.ensure_future(self._get(p)): p for p in paths}
        try:
            for done in asyncio.as_completed(list(tasks)):
                await done
                if _is_ollama(self.answers.get("/api/version")) or _is_llamacpp(
                    self.answers.get("/props")
                ):
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- one request ---

    async def _get(self, path: str) -> _Answer | None:
        return await self._request("GET", path)

    async def _post(self, path: str, body: Any) -> _Answer | None:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: Any = None) -> _Answer | None:
        """(status, JSON) for one request, or None for anything that is not a JSON
        answer in time. Records GET answers for the classification."""
        answer: _Answer | None = None
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining > 0.01:
            try:
                answer = await self._fetch(method, path, body, remaining)
            except TimeoutError:
                self.silent.add(path)
            except Exception:  # closed, garbage, non-JSON: all mean "no answer"
                answer = None
        else:
            self.silent.add(path)
        if method == "GET":
            self.answers[path] = answer
        return answer

    async def _fetch(self, method: str, path: str, body: Any, remaining: float) -> _Answer | None:
        data = orjson.dumps(body) if body is not None else None
        headers = {"accept": "application/json"}
        if data is not None:
            headers["content-type"] = "application/json"
        async with self.session.request(
            method,
            self.base + path,
            data=data,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=remaining),
        ) as resp:
            return resp.status, orjson.loads(await read_capped(resp))

    # --- per kind ---

    async def _llamacpp(self) -> DiscoveredServer:
        props = _ok(self.answers.get("/props")) or {}
        if "/v1/models" not in self.answers:
            await self._get("/v1/models")
        entries = _model_list(self.answers.get("/v1/models")) or []
        models = _ids(entries)
        settings = props.get("default_generation_settings")
        # n_ctx at the top level is the total; each of the slots gets a share of it.
        ctx = positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if ctx is None:
            total, slots = positive_int(props.get("n_ctx")), positive_int(props.get("total_slots"))
            ctx = total // slots if total and slots else total
        if ctx is None and entries:
            meta = entries[0].get("meta")
            ctx = positive_int(meta.get("n_ctx")) if isinstance(meta, dict) else None
        model = models[0] if models else str(props.get("model_alias") or props.get("model_path") or "")
        d = DiscoveredServer("llamacpp", self.base, "anthropic", models, model, ctx)
        if ctx is None:  # not said yet (the model still loading): a guess, which the server's reading replaces
            d.window_guessed = True
            d.assumed_why = ("llama-server did not answer /props in time" if "/props" in self.silent
                             else "llama-server has not said its window yet")
            d.notes.append(f"{d.assumed_why}: nonstop plans with {planned_window(d)} tokens until it does")
        d.tools = await self._llamacpp_tools(props)
        if d.tools is False:
            d.notes.append(
                "tool calls will not work: run llama-server with --jinja and a model whose "
                "chat template renders tools"
            )
        return _finish(d)

    async def _llamacpp_tools(self, props: dict[str, Any]) -> bool | None:
        """Whether tools reach the model: render a chat with one tool and look for it.
        Without --jinja llama-server refuses tools; some templates silently drop them."""
        tool = {
            "type": "function",
            "function": {
                "name": _PROBE_TOOL,
                "description": "probe",
                "parameters": {"type": "object", "properties": {}},
            },
        }
        body = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
        answer = await self._post("/apply-template", body)
        if answer is not None and answer[0] != 404:
            prompt = answer[1].get("prompt") if isinstance(answer[1], dict) else None
            if answer[0] == 200 and isinstance(prompt, str):
                return _PROBE_TOOL in prompt
            if 400 <= answer[0] < 600:
                return False
        caps = props.get("chat_template_caps")
        if isinstance(caps, dict) and isinstance(caps.get("supports_tool_calls"), bool):
            return bool(caps["supports_tool_calls"])
        return None

    async def _ollama(self) -> DiscoveredServer:
        version_answer = _ok(self.answers.get("/api/version")) or {}
        version = str(version_answer.get("version", ""))
        tags, running = await asyncio.gather(self._get("/api/tags"), self._get("/api/ps"))
        models = _names((_ok(tags) or {}).get("models"))
        loaded = (_ok(running) or {}).get("models")
        loaded = [m for m in loaded if isinstance(m, dict)] if isinstance(loaded, list) else []
        loaded_names = _names(loaded)
        # The configured model; else a loaded one, else the first pulled; never one that
        # cannot chat (an embedding model a RAG tool keeps loaded): /api/show says.
        candidates = [self.model] if self.model else [n for n in loaded_names if n in models] + models
        model, show = "", {}
        for name in list(dict.fromkeys(candidates))[:MAX_SHOWN]:
            answer = _ok(await self._post("/api/show", {"model": name})) or {}
            caps = answer.get("capabilities")
            if self.model or not isinstance(caps, list) or "completion" in caps:
                model, show = name, answer
                break
        native = _version_tuple(version) >= OLLAMA_NATIVE_API
        d = DiscoveredServer("ollama", self.base, "anthropic" if native else "openai", models, model)
        if not native:
            d.notes.append(
                f"Ollama {version or '(unknown version)'} has no native Anthropic API (0.14 "
                "added it); using its OpenAI-compatible API"
            )
        if not model:
            d.notes.append("no pulled model can chat (embedding models only): run `ollama pull <model>`" if models
                           else "no models pulled yet: run `ollama pull <model>`")
            return _finish(d)
        caps = show.get("capabilities")
        if isinstance(caps, list):
            d.tools = "tools" in caps
        trained = None
        info = show.get("model_info")
        if isinstance(info, dict):
            trained = next(
                (positive_int(v) for k, v in info.items() if k.endswith(".context_length") and positive_int(v)), None
            )
        num_ctx = _num_ctx(show.get("parameters"))
        running_ctx = next(
            (positive_int(m.get("context_length")) for m in loaded if any(same_model(model, n) for n in _names([m]))), None
        )
        if running_ctx:
            d.context_window = running_ctx
        elif num_ctx:
            d.context_window = num_ctx
        else:
            d.window_guessed = True
            d.context_window = (OLLAMA_DEFAULT_CONTEXT if _version_tuple(version) >= OLLAMA_4K_DEFAULT
                                else OLLAMA_OLD_DEFAULT_CONTEXT)
            d.assumed_why = f"Ollama's default while {model} is not loaded"
            if "/api/show" in self.silent:
                d.assumed_why = "Ollama's default; /api/show did not answer"
                d.notes.append(
                    f"Ollama did not answer /api/show about {model} within {self.timeout:g} s: its Modelfile's "
                    f"num_ctx, trained context and tools are unknown, so nonstop plans with Ollama's default "
                    f"{d.context_window} tokens until Ollama reports the loaded model's window")
        d.trained_context = trained
        # Ollama never runs a model with more context than it was trained on: a larger
        # num_ctx (the Modelfile's, or OLLAMA_CONTEXT_LENGTH) is cut down to it.
        if trained and d.context_window > trained:
            if num_ctx and not running_ctx:
                d.notes.append(f"{model}'s Modelfile sets num_ctx {num_ctx}, but the model was trained on {trained} "
                               f"tokens: Ollama runs it with {trained}")
            d.context_window = trained
        if d.context_window < CLAUDE_CODE_MIN_CONTEXT:
            d.notes.append(
                f"Ollama serves {model} with a {d.context_window}-token context, too small for "
                "Claude Code (its first request alone is 9-27k tokens): set "
                "OLLAMA_CONTEXT_LENGTH=32768 or num_ctx"
            )
        return _finish(d, warn_small=False)

    async def _lmstudio(self) -> DiscoveredServer:
        entries = _model_list(self.answers.get("/api/v0/models"))
        if entries is not None:
            entries = [e for e in entries if e.get("type", "llm") in ("llm", "vlm")]
        else:
            entries = _model_list(self.answers.get("/v1/models")) or []
        chosen = next((e for e in entries if self.model and e.get("id") == self.model), None) or next(
            (e for e in entries if e.get("state") == "loaded"), entries[0] if entries else {})
        d = DiscoveredServer("lmstudio", self.base, "openai", _ids(entries), str(chosen.get("id", "")))
        d.context_window = positive_int(chosen.get("loaded_context_length"))
        if d.context_window is None and "max_context_length" not in chosen:
            # Its listing did not come (or says no sizes): the model may be loaded with
            # any window, and LM Studio loads one with its default unless told otherwise.
            silent = "/api/v0/models" in self.silent
            d.context_window, d.window_guessed = LMSTUDIO_DEFAULT_CONTEXT, True
            d.assumed_why = "LM Studio's default load length" + ("; /api/v0/models did not answer" if silent else "")
            why = "/api/v0/models did not answer in time" if silent else "its listing has no sizes"
            d.notes.append(f"LM Studio did not say {d.model or 'the model'}'s window ({why}): nonstop plans with "
                           f"{LMSTUDIO_DEFAULT_CONTEXT} tokens until it does")
        elif d.context_window is None:
            # Not loaded: LM Studio loads it on first use with its default context length,
            # not the trained maximum it lists. Planning with the maximum sent requests the
            # loaded model cannot hold (LM Studio then truncates or errs). The reading of a
            # loaded model replaces the guess.
            trained = positive_int(chosen.get("max_context_length"))
            d.context_window = min(LMSTUDIO_DEFAULT_CONTEXT, trained or LMSTUDIO_DEFAULT_CONTEXT)
            d.window_guessed = True
            d.assumed_why = f"LM Studio's default load length while {d.model or 'the model'} is not loaded"
            d.notes.append(
                f"LM Studio has not loaded {d.model or 'the model'}: it will load it with its default context "
                f"length (often {LMSTUDIO_DEFAULT_CONTEXT} tokens), so nonstop plans with {d.context_window} until "
                f"it is loaded; load it with a larger window, e.g. `lms load {d.model or '<model>'} --context-length 32768`"
            )
        caps = chosen.get("capabilities")
        if isinstance(caps, list):
            d.tools = "tool_use" in caps
        # LM Studio 0.4.1 added /v1/messages. A body with no model and no messages is
        # rejected by its validator (no generation); a server without the route says 404
        # or, in older versions, 200 with a bare error string.
        answer = await self._post("/v1/messages", {})
        if answer is not None:
            status, body = answer
            if status in (400, 422) or (isinstance(body, dict) and body.get("type") in ("error", "message")):
                d.api = "anthropic"
        if d.api == "openai":
            d.notes.append("LM Studio before 0.4.1 has no native Anthropic API; using its OpenAI API")
        return _finish(d)

    def _chosen(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The entry of the configured model, else the first (the server's own)."""
        return next((e for e in entries if self.model and e.get("id") == self.model), entries[0] if entries else None)

    def _vllm(self, entries: list[dict[str, Any]]) -> DiscoveredServer:
        models = _ids(entries)
        chosen = self._chosen(entries)
        ctx = positive_int(chosen.get("max_model_len")) if chosen else None
        model = str(chosen["id"]) if chosen and isinstance(chosen.get("id"), str) else (models[0] if models else "")
        d = DiscoveredServer("vllm", self.base, "openai", models, model, ctx)
        d.notes.append(
            "vLLM calls tools only when started with --enable-auto-tool-choice and --tool-call-parser"
        )
        return _finish(d)

    def _openai(self, entries: list[dict[str, Any]]) -> DiscoveredServer:
        models = _ids(entries)
        chosen = self._chosen(entries)
        model = str(chosen["id"]) if chosen and isinstance(chosen.get("id"), str) else (models[0] if models else "")
        d = DiscoveredServer("openai", self.base, "openai", models, model)
        if chosen:
            first = chosen
            d.context_window = next(
                (
                    positive_int(first.get(k))
                    for k in ("context_length", "context_window", "max_model_len")
                    if positive_int(first.get(k))
                ),
                None,
            )
        return _finish(d)


# --- reading answers ------------------------------------------------------------------------


def _ok(answer: _Answer | None) -> dict[str, Any] | None:
    if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
        return None
    return answer[1]


def _is_ollama(answer: _Answer | None) -> bool:
    body = _ok(answer)
    return body is not None and isinstance(body.get("version"), str)


def _llamacpp_models(answer: _Answer | None) -> bool:
    """A model list in llama-server's words (it answers /v1/models while /props waits for
    the model to load)."""
    entries = _model_list(answer) or []
    return bool(entries) and all(e.get("owned_by") == "llamacpp" for e in entries)


# Ollama models asked about (/api/show) while looking for one that can chat.
MAX_SHOWN = 8


def _is_llamacpp(answer: _Answer | None) -> bool:
    body = _ok(answer)
    return body is not None and (
        isinstance(body.get("default_generation_settings"), dict) or "total_slots" in body
    )


def _is_vllm(answer: _Answer | None, entries: list[dict[str, Any]]) -> bool:
    body = _ok(answer)
    if body is None or not isinstance(body.get("version"), str):
        return False
    return any("max_model_len" in e or e.get("owned_by") == "vllm" for e in entries)


def _model_list(answer: _Answer | None) -> list[dict[str, Any]] | None:
    """The `data` list of an OpenAI-style model listing, or None if this is not one."""
    body = _ok(answer)
    if body is None or not isinstance(body.get("data"), list):
        return None
    return [e for e in body["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e["id"]) for e in entries if isinstance(e.get("id"), str)]


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    out = []
    for m in items:
        if isinstance(m, dict):
            name = m.get("name") or m.get("model")
            if isinstance(name, str) and name:
                out.append(name)
    return out


def _num_ctx(parameters: Any) -> int | None:
    if not isinstance(parameters, str):
        return None
    match = re.search(r"^\s*num_ctx\s+(\d+)", parameters, re.MULTILINE)
    return int(match.group(1)) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version.split("-")[0])[:3]
    return tuple(int(p) for p in parts)


def _finish(d: DiscoveredServer, warn_small: bool = True) -> DiscoveredServer:
    if warn_small and d.context_window and d.context_window < CLAUDE_CODE_MIN_CONTEXT:
        d.notes.append(
            f"context {d.context_window} is small for Claude Code, whose first request alone "
            "is 9-27k tokens; long sessions will not fit"
        )
    return d


def same_model(a: object, b: object) -> bool:
    """Whether two Ollama model names are one model: a name without a tag is `:latest`."""
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        return False
    return (a if ":" in a else a + ":latest") == (b if ":" in b else b + ":latest")
