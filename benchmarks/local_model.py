"""The local path with a real model: from the failover decision to the first local token,
the later turns of a session on the server's prompt cache, and the token rate relayed.

    python benchmarks/local_model.py               3 sessions of 5 turns, 50 KB first request
    python benchmarks/local_model.py --smoke       1 session, a 20 KB first request

A real llama-server (the bundled SmolLM2-135M, one slot, one thread, a 16,384-token
window) is nonstop's one `[[local]]` backend. The fake upstream plays a cloud that
answers every request with a subscription-limit 429 whose reset has passed, and nonstop
runs with `default_cooldown = 0`, so every turn takes the whole failover: the cloud, its
429, the decision, the local model. A session is five turns shaped like Claude Code's:
turn 1 is the Claude Code-shaped request (benchmarks/payload.py; its first system block
names the session, so that turn 1 finds nothing of it in the server's cache), and each
later turn adds the model's answer and a new user message.

Per turn, measured at the client with the machine's one clock:
- **decision to first token**: the upstream writing the 429 (nonstop decides as it reads
  it) to the first text delta reaching the client;
- the server's own account (its log): prompt tokens it processed (the rest came from its
  cache), its prompt time, tokens generated and its generation time;
- **nonstop's part** of the decision-to-first-token time: what is left after the server's
  prompt time (nonstop's own work, its count_tokens round trip to the server, and the
  network);
- **token rate**: output tokens per second at the client after the first text delta,
  against the tokens per second the server reports for the same reply.

Writes results/<date>-local-model[-smoke].md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import report  # noqa: E402
import run as bench  # noqa: E402
from harness import machine, median, source_fingerprint  # noqa: E402
from payload import CLAUDE_CODE_HEADERS, claude_code_request  # noqa: E402

from tests.integration.llama import start_llama_server  # noqa: E402

FOLLOW_UPS = [
    "Now look at the function that retries the request: is the cap on the delay applied correctly?",
    "Run the tests for it and tell me what fails.",
    "The test output says: FAILED tests/test_util.py::test_backoff_cap - assert 32.0 == 30.0. What does that mean?",
    "Fix it, and keep the change small.",
]
WINDOW = 16384
MAX_OUTPUT = 128
_TIMING = re.compile(r"task (\d+) \|\s+(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+) tokens")


class ServerLog:
    """llama-server's timing lines, read as they are appended."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def skip(self) -> None:
        self.offset = self.path.stat().st_size

    def latest(self) -> dict[str, float]:
        """The timings of the last task since the previous call that generated tokens (the
        server also logs tasks that generate nothing, such as a warm-up's empty prompt)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode("utf-8", "replace")
            self.offset = fh.tell()
        tasks: dict[str, dict[str, float]] = {}
        for task, kind, ms, tokens in _TIMING.findall(text):
            key = "prompt" if kind == "prompt eval" else "eval"
            tasks.setdefault(task, {}).update({key + "_ms": float(ms), key + "_tokens": int(tokens)})
        done = [t for t in tasks.values() if t.get("eval_tokens")]
        return done[-1] if done else {}


async def turn(session: aiohttp.ClientSession, url: str, req: dict[str, Any], tag: str) -> dict[str, Any]:
    sent = time.time()
    first_byte = first_text = last_text = None
    deltas = 0
    text: list[str] = []
    out_tokens = 0
    async with session.post(url + "/v1/messages?beta=true", data=orjson.dumps(req),
                            headers={**CLAUDE_CODE_HEADERS, "x-bench-tag": tag}) as resp:
        backend = resp.headers.get("x-nonstop-backend", "")
        status = resp.status
        event = ""
        async for raw in resp.content:
            now = time.time()
            if first_byte is None:
                first_byte = now
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:") and event in ("content_block_delta", "message_delta"):
                doc = orjson.loads(line[5:])
                delta = doc.get("delta") or {}
                if delta.get("type") == "text_delta":
                    deltas += 1
                    text.append(delta.get("text", ""))
                    first_text = first_text or now
                    last_text = now
                if event == "message_delta":
                    out_tokens = (doc.get("usage") or {}).get("output_tokens", 0)
    ended = time.time()
    return {"status": status, "backend": backend, "sent": sent, "first_byte": first_byte, "first_text": first_text,
            "last_text": last_text, "ended": ended, "deltas": deltas, "output_tokens": out_tokens,
            "text": "".join(text)}


async def sessions(url: str, upstream: str, log: ServerLog, n_sessions: int, size: int) -> list[dict[str, Any]]:
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
        for s in range(n_sessions):
            req = claude_code_request(stream=True, target_bytes=size, seed=7 + s)
            req["system"][0]["text"] = f"Session {s} of the benchmark. " + req["system"][0]["text"]
            for t in range(1, 6):
                tag = f"s{s}t{t}"
                log.skip()
                r = await turn(session, url, req, tag)
                await asyncio.sleep(0.3)  # the server writes its timings as the task ends
                r.update(log.latest())
                async with session.get(upstream + "/_stats") as resp:
                    r["limited_at"] = orjson.loads(await resp.read())["limited_at"].get(tag)
                r.update({"session": s, "turn": t, "request_bytes": len(orjson.dumps(req))})
                rows.append(r)
                print(f"  session {s} turn {t}: {_describe(r)}", flush=True)
                req = copy.deepcopy(req)
                req["messages"].append({"role": "assistant", "content": [{"type": "text", "text": r["text"] or "(no text)"}]})
                if t <= len(FOLLOW_UPS):
                    req["messages"].append({"role": "user", "content": [{"type": "text", "text": FOLLOW_UPS[t - 1]}]})
    return rows


def derive(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.get("first_text") and r.get("limited_at"):
        out["decision_to_first_token_ms"] = (r["first_text"] - r["limited_at"]) * 1000
        if "prompt_ms" in r:  # the first token comes out of the prompt's last batch
            out["nonstop_part_ms"] = out["decision_to_first_token_ms"] - r["prompt_ms"]
    tokens = r.get("output_tokens") or r.get("deltas", 0)
    if tokens > 1 and r.get("last_text") and r["last_text"] > r["first_text"]:
        out["relayed_tps"] = (tokens - 1) / (r["last_text"] - r["first_text"])
    if r.get("eval_tokens") and r.get("eval_ms"):
        out["server_tps"] = r["eval_tokens"] / (r["eval_ms"] / 1000)
    if "relayed_tps" in out and "server_tps" in out:
        out["rate_ratio"] = out["relayed_tps"] / out["server_tps"]
    return out


def _describe(r: dict[str, Any]) -> str:
    d = derive(r)
    return (f"{r['backend']} {r['status']}, decision→first token {report._fmt(d.get('decision_to_first_token_ms'))} ms, "
            f"server prompt {report._fmt(r.get('prompt_ms'))} ms for {r.get('prompt_tokens', '?')} tokens, "
            f"{r['deltas']} deltas, relayed {report._fmt(d.get('relayed_tps'))} tok/s vs server {report._fmt(d.get('server_tps'))}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sessions", type=int, default=0)
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    args = p.parse_args()
    n_sessions = args.sessions or (1 if args.smoke else 3)
    size = 20_000 if args.smoke else 50_000
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "started": dt.datetime.now().isoformat(timespec="seconds"),
                               "mode": "smoke" if args.smoke else "full", "machine": machine(), "source": source_fingerprint(),
                               "sessions": n_sessions, "first_request_bytes": size, "window": WINDOW}
    b = bench.Bench(argparse.Namespace(smoke=True, long=False, peers=False, profile=False, variants=False,
                                       growth_requests=0, out_dir=args.out_dir, strict=False))
    llama = None
    try:
        b.start_upstream()
        llama = start_llama_server(ctx=WINDOW, parallel=1, threads=1, log_dir=b.work / "llama")
        results["llama_argv"] = " ".join(Path(a).name if a.startswith("/") else a for a in llama.argv)
        local = (f'[[local]]\nname = "llama"\nurl = "{llama.url}"\napi = "anthropic"\n'
                 f"max_output_tokens = {MAX_OUTPUT}\n")
        ns = b.start_nonstop("nonstop-local-model", b.up["limit-past"], cloud_extra=bench.PROBE_EVERY_REQUEST, local=local)
        results["config"] = ns.extra["config"]
        time.sleep(2.0)  # its first look at the server (window, calibration)
        log = ServerLog(llama.log_path)
        results["turns"] = asyncio.run(sessions(ns.url, b.up["limit-past"], log, n_sessions, size))
    finally:
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        with open("/proc/loadavg") as fh:
            results["load_at_end"] = " ".join(fh.read().split()[:3])
        b.stop_all()
        if llama is not None:
            llama.stop()
    for r in results.get("turns", []):
        r.update(derive(r))
        r.pop("text", None)
    out_dir = Path(args.out_dir) if args.out_dir else HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results["date"] + "-local-model" + ("-smoke" if args.smoke else "")
    (out_dir / f"{stem}.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    md = render(results)
    (out_dir / f"{stem}.md").write_text(md)
    print(md)
    print(f"written: {out_dir / (stem + '.md')}")
    bad = [r for r in results.get("turns", []) if r["status"] != 200 or r["backend"] in ("", "cloud") or not r["deltas"]]
    return 1 if bad or not results.get("turns") else 0


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        xs = [r[key] for r in rows if r.get(key) is not None]
        return median(xs) if xs else None

    return {k: med(k) for k in ("decision_to_first_token_ms", "prompt_ms", "prompt_tokens", "nonstop_part_ms",
                                "relayed_tps", "server_tps", "rate_ratio", "deltas")}


def render(r: dict[str, Any]) -> str:
    f = report._fmt
    m = r["machine"]
    turns = r.get("turns", [])
    L = [f"# nonstop benchmarks: the local path with a real model, {r['date']} ({r['mode']})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']:,} MB RAM, Linux {m['kernel']}, Python {m['python']}; "
         f"load average {m['load_at_start']} at the start, {r.get('load_at_end', '?')} at the end. "
         f"Code: sha256 {r['source']['sha256']}…. Run: {r['started']} to {r.get('finished', '?')}. "
         f"Server: `{r.get('llama_argv', '?')}`. {r['sessions']} sessions of 5 turns; the first request "
         f"{r['first_request_bytes']:,} bytes; every turn failed over from a 429.", ""]
    cold = summary([t for t in turns if t["turn"] == 1])
    warm = summary([t for t in turns if t["turn"] > 1])
    rows = [[label, f(s["decision_to_first_token_ms"]), f(s["prompt_tokens"]), f(s["prompt_ms"]), f(s["nonstop_part_ms"]),
             f(s["relayed_tps"]), f(s["server_tps"]), f(s["rate_ratio"], 4)]
            for label, s in (("turn 1 (nothing cached)", cold), ("turns 2-5 (the server's prompt cache)", warm))]
    L += ["## Medians", "",
          *report._table(["turns", "decision → first token, ms", "prompt tokens processed", "server prompt ms",
                          "nonstop's part, ms", "relayed tok/s", "server tok/s", "relayed ÷ server"], rows),
          "*nonstop's part* = decision → first token − the server's prompt time (the first token comes out of "
          "the prompt's last batch): nonstop's own work, its count_tokens call to the server (which tokenizes "
          "the whole prompt), and the network. *relayed* = the reply's output tokens after the first, over the "
          "time from the first text delta to the last at the client; *server* = the tokens per second "
          "llama-server reports for the same reply.", ""]
    rows = [[str(t["session"]), str(t["turn"]), f"{t['request_bytes']:,}", f(t.get("decision_to_first_token_ms")),
             str(t.get("prompt_tokens", "—")), f(t.get("prompt_ms")), f(t.get("nonstop_part_ms")), str(t["deltas"]),
             f(t.get("relayed_tps")), f(t.get("server_tps")), t["backend"]] for t in turns]
    L += ["## Every turn", "",
          *report._table(["session", "turn", "request bytes", "decision → first token, ms", "prompt tokens processed",
                          "server prompt ms", "nonstop's part, ms", "text deltas", "relayed tok/s", "server tok/s",
                          "backend"], rows),
          "## How this was run", "", f"`python benchmarks/local_model.py{' --smoke' if r['mode'] == 'smoke' else ''}`; "
          "nonstop's config (ports vary):", "", "```toml", r.get("config", "").strip(), "```", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
