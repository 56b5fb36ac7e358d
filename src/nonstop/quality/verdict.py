"""A backend's last score as one line, where the user looks (`doctor`, `status`, the
dashboard, `nonstop claude`'s start-up line):

    llama (qwen3-coder-30b q4_k_m, 32k): tools 92% · loop 85% · 38 tok/s · eval 2 days ago

and as the `eval` object of a backend in the status document (`verdicts()`). Pure, but
for `verdicts()`, which reads the database through results.latest_scores.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import Score, Source, judge, latest_scores

NOT_EVALUATED = "not evaluated — run `nonstop eval`"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 90:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = round(s / size) if unit != "day" else s // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def summary(score: Score) -> str:
    """"tools 92% · loop 85% · 38 tok/s"."""
    parts = [f"tools {pct(score.tools)}", f"loop {pct(score.categories.get('tool_loop'))}"]
    if score.tokens_per_s:
        parts.append(f"{score.tokens_per_s:.0f} tok/s")
    return " · ".join(parts)


def _judged(name: str, score: Score, now: float) -> str:
    text = f"{summary(score)} · eval {ago(now - score.ts)}"
    if score.stale:
        text += f" — stale: {score.stale_why}; run `nonstop eval --backend {name}`"
    return text


def verdict_text(name: str, score: Score | None, now: float) -> str:
    """The verdict without the backend's name in front (where the name stands already)."""
    if score is None:
        return NOT_EVALUATED
    return f"{score.model.label()}: {_judged(name, score, now)}"


def verdict_line(name: str, score: Score | None, now: float) -> str:
    if score is None:
        return f"{name}: {NOT_EVALUATED}"
    return f"{name} ({score.model.label()}): {_judged(name, score, now)}"


def verdict_entry(name: str, score: Score | None, now: float) -> dict[str, Any]:
    """A backend's `eval` in the status document."""
    if score is None:
        return {"evaluated": False, "line": verdict_line(name, None, now), "text": NOT_EVALUATED}
    return {
        "evaluated": True, "line": verdict_line(name, score, now), "text": verdict_text(name, score, now),
        "overall": score.overall, "tools": score.tools,
        "loop": score.categories.get("tool_loop"), "tokens_per_s": score.tokens_per_s, "ts": score.ts,
        "model": score.model.label(), "stale": score.stale, "stale_why": score.stale_why, "quick": score.quick,
    }


def verdicts(source: Source, names: Iterable[str], *, current: Mapping[str, ModelIdentity] | None = None,
             models: Mapping[str, str] | None = None, now: float | None = None) -> dict[str, dict[str, Any]]:
    """{backend name: its `eval` entry} for the status document. `current` are model
    identities read just now, `models` the model names the gateway reports: either
    marks a score stale when the model changed."""
    now = time.time() if now is None else now
    scores = latest_scores(source, current)
    out = {}
    for name in names:
        score = scores.get(name)
        if score is not None and not score.stale and models and (current is None or name not in current):
            score = judge(score, None, models.get(name, ""))
        out[name] = verdict_entry(name, score, now)
    return out
