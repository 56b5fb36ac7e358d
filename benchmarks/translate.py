"""OpenAI -> Anthropic stream translation speed on one core, and the Anthropic relay's.

Two measurements over the same recorded-style stream (reasoning, text, a tool call whose
arguments arrive in fragments, usage):
  translator  `OpenAIStreamTranslator.feed()` on parsed chunks: the translation alone;
  pipeline    what OpenAILocalBackend does per network chunk: SSE decode, JSON parse,
              translate, normalise for strict clients, encode the Anthropic events.
And one over an Anthropic-format local server's stream (the benchmark's fake local
server's: message_start, ping, a text block of 30 deltas, message_delta, message_stop):
  anthropic   what AnthropicLocalBackend does with it, read whole: SSE decode, JSON
              parse, normalise with the Claude Code request's tools offered (the text is
              watched for tool calls written as text), encode.

Prints one JSON line. Run by run.py; by hand: `python benchmarks/translate.py --seconds 3`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from payload import openai_stream_chunks, sse_bytes  # noqa: E402


def _timeit(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm
    runs = 0
    start = time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or runs >= 100_000:
            return runs, elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cpu", type=int, default=0, help="core to pin to")
    args = p.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {args.cpu})
    try:
        from nonstop.wire import openai as oa
        translator_cls = oa.OpenAIStreamTranslator
    except (ImportError, AttributeError) as exc:
        print(orjson.dumps({"error": f"nonstop.wire.openai.OpenAIStreamTranslator is not available: {exc}"}).decode())
        return
    from nonstop.wire.anthropic import Event
    from nonstop.wire.local_stream import LocalStreamNormalizer
    from nonstop.wire.sse import JSONEventDecoder, encode_event

    chunks = openai_stream_chunks()
    raw = sse_bytes(chunks)
    # The network hands over a few KB at a time.
    pieces = [raw[i : i + 4096] for i in range(0, len(raw), 4096)]
    out_events = 0

    def translate_only() -> None:
        nonlocal out_events
        tr = translator_cls(model="local-model", message_id="msg_bench", input_tokens_estimate=12000)
        n = 0
        for c in chunks:
            n += len(tr.feed(c))
        n += len(tr.finish())
        out_events = n

    pipe_events = 0
    pipe_bytes = 0

    def pipeline() -> None:
        nonlocal pipe_events, pipe_bytes
        tr = translator_cls(model="local-model", message_id="msg_bench", input_tokens_estimate=12000)
        norm = LocalStreamNormalizer(model="local-model", input_tokens_estimate=12000, started=False)
        dec = JSONEventDecoder()
        n = 0
        size = 0
        for piece in pieces:
            out: list[Event] = []
            for _, data in dec.feed(piece):
                for t, d in tr.feed(data):
                    out.extend(norm.feed(t, d))
            if out:
                size += len(b"".join(encode_event(t, orjson.dumps(d)) for t, d in out))
                n += len(out)
        tail: list[Event] = []
        for t, d in tr.finish():
            tail.extend(norm.feed(t, d))
        tail.extend(norm.finish())
        size += len(b"".join(encode_event(t, orjson.dumps(d)) for t, d in tail))
        pipe_events = n + len(tail)
        pipe_bytes = size

    from payload import claude_code_request
    from upstream import _delta, _stream_head, _stream_tail

    from nonstop.backends.local import EventSource, _encode

    deltas = 30
    anthropic_raw = _stream_head() + b"".join(_delta(i) for i in range(deltas)) + _stream_tail(deltas)
    tools = claude_code_request()["tools"]
    relayed = 0

    def anthropic_relay() -> None:
        nonlocal relayed
        norm = LocalStreamNormalizer(model="local-model", input_tokens_estimate=12000, tools=tools, tag="bench")
        source = EventSource()
        out: list[Event] = []
        for ev, doc in JSONEventDecoder().feed(anthropic_raw):
            for t, d in source.feed(ev.event, doc):
                out.extend(norm.feed(t, d))
        out.extend(norm.finish())
        relayed = len(_encode(out))

    runs, elapsed = _timeit(translate_only, args.seconds)
    runs2, elapsed2 = _timeit(pipeline, args.seconds)
    runs3, elapsed3 = _timeit(anthropic_relay, args.seconds)
    n_in = len(chunks)
    print(orjson.dumps({
        "chunks_per_stream": n_in,
        "anthropic_events_per_stream": out_events,
        "translator": {"streams": runs, "seconds": elapsed,
                       "chunks_per_s": n_in * runs / elapsed, "events_out_per_s": out_events * runs / elapsed,
                       "us_per_chunk": elapsed / (n_in * runs) * 1e6},
        "pipeline": {"streams": runs2, "seconds": elapsed2, "bytes_in_per_stream": len(raw),
                     "bytes_out_per_stream": pipe_bytes, "events_out_per_stream": pipe_events,
                     "chunks_per_s": n_in * runs2 / elapsed2, "events_out_per_s": pipe_events * runs2 / elapsed2,
                     "us_per_chunk": elapsed2 / (n_in * runs2) * 1e6},
        "anthropic": {"streams": runs3, "seconds": elapsed3, "deltas_per_stream": deltas,
                      "bytes_in_per_stream": len(anthropic_raw), "bytes_out_per_stream": relayed,
                      "us_per_stream": elapsed3 / runs3 * 1e6, "us_per_delta": elapsed3 / (runs3 * deltas) * 1e6},
        "pinned_cpu": args.cpu,
    }).decode())


if __name__ == "__main__":
    main()
