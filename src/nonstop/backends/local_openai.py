"""A local server that speaks OpenAI Chat Completions (vLLM, LM Studio, llama.cpp,
Ollama's /v1): the request is translated there, and the reply back."""

from __future__ import annotations

from typing import Any

import orjson

from nonstop.backends.local import Call, EventSource, LocalBackend, capped, server_words
from nonstop.wire import openai as oa
from nonstop.wire.anthropic import Event, new_message_id
from nonstop.wire.errors import error_event

# finish_reason values that say the answer failed, not that it ended: vLLM and SGLang name
# an answer their engine gave up on `abort`. What came before is no whole answer.
FAILED_FINISHES = frozenset({"abort", "error"})


class OpenAIEventSource(EventSource):
    fails_on = (b"error", *(r.encode() for r in sorted(FAILED_FINISHES - {"error"})))

    def __init__(self, name: str, translator: oa.OpenAIStreamTranslator):
        self.name = name
        self.translator = translator

    def feed(self, event: str, doc: dict[str, Any]) -> list[Event]:
        if doc.get("error") and not doc.get("choices"):  # "error": null is no error
            # Its message, or (with none) what it sent: never "None"; no traceback, not too long.
            return [error_event(f"{self.name}: {server_words(orjson.dumps(doc).decode())}")]
        before = self.translator.finish_reason
        out = self.translator.feed(doc)
        reason = self.translator.finish_reason
        if reason in FAILED_FINISHES and reason != before:  # the blocks it had begun are closed; the answer is not whole
            out.append(error_event(f"{self.name}: the server gave up on the answer (finish_reason {reason!r})"))
        return out

    def finish(self, ended: bool = False) -> list[Event]:
        # A stream that stopped with neither a finish_reason nor `[DONE]` was cut: no end is
        # made up for it (the normaliser ends it with an error, and the request may go on
        # elsewhere). One that said `[DONE]` without a reason ends as it stands.
        if not ended and self.translator.finish_reason is None:
            return []
        return list(self.translator.finish())


class OpenAILocalBackend(LocalBackend):
    def prepare(self, local_req: dict, stream: bool, tokens: int, original: dict) -> Call:
        # The reasoning switch and parallel-call setting read the client's own fields,
        # which the generic local sanitiser drops.
        source = {**local_req, "thinking": original.get("thinking"), "output_config": original.get("output_config")}
        tc = original.get("tool_choice")
        if isinstance(source.get("tool_choice"), dict) and isinstance(tc, dict) and "disable_parallel_tool_use" in tc:
            source["tool_choice"] = {**source["tool_choice"], "disable_parallel_tool_use": tc["disable_parallel_tool_use"]}
        body = oa.anthropic_to_openai_request(
            source, model=local_req["model"], max_tokens=local_req["max_tokens"], stream=stream,
            reasoning_param=self.cfg.reasoning_param,
        )
        name_map = body.pop(oa.TOOL_NAME_MAP_KEY, None)
        return Call("/v1/chat/completions", body, local_req["model"], tokens, capped(local_req, original), name_map)

    def message_from(self, doc: Any, call: Call) -> dict | None:
        if not isinstance(doc, dict) or "choices" not in doc or oa.finish_reason_of(doc) in FAILED_FINISHES:
            return None
        call.cut = oa.cut_tool_call(doc)
        msg = oa.openai_to_anthropic_response(doc, model=call.model, input_tokens_estimate=call.tokens, tool_name_map=call.name_map)
        if not oa.finish_reason_of(doc):
            msg["stop_reason"] = None  # no end named: the normalizer reads what was left open as cut
        return msg

    def events(self, call: Call) -> EventSource:
        translator = oa.OpenAIStreamTranslator(
            model=call.model, message_id=new_message_id(), input_tokens_estimate=call.tokens, tool_name_map=call.name_map,
            close_cut_calls=False,  # the normalizer closes them, and so knows the limit cut a call
            offered=oa.offered_tool_names(call.body),  # to put a name the server split together again
        )
        return OpenAIEventSource(self.name, translator)
