"""What `doctor` says about each backend's model, from its identity and the stored scores:
its verdict (not evaluated, stale, low, fine) and, when another model the same server
already has scored better and fits this machine (backends/sizing.py), that upgrade. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nonstop.backends.sizing import Device, ModelShape, fit, parameters_from_label
from nonstop.quality.identity import Available, ModelIdentity
from nonstop.quality.results import Score
from nonstop.quality.verdict import ago, pct, verdict_line

LOW_SCORE = 0.5
# A model must score this much higher to be worth the switch: one task's worth of noise.
BETTER_BY = 0.05


@dataclass(frozen=True)
class Advice:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def verdict_advice(name: str, score: Score | None, now: float) -> Advice:
    check = f"eval {name}"
    line = verdict_line(name, score, now)
    if score is None:
        return Advice(check, True, f"{name} is not evaluated: nothing says yet how well its model does Claude Code's work",
                      "run `nonstop eval` (a few minutes; `--quick` for one or two)")
    if score.stale:
        return Advice(check, True, line, f"run `nonstop eval --backend {name}`")
    if score.overall is not None and score.overall < LOW_SCORE:
        return Advice(check, True, line, "expect Claude Code sessions on this model to stall or go wrong: a stronger "
                                         "model, a better quantisation or a larger window helps (docs/quality.md)")
    return Advice(check, True, line)


def upgrades(name: str, ident: ModelIdentity, score: Score | None, by_model: Mapping[str, Score],
             places: list[Device], now: float) -> list[Advice]:
    """Models already on the backend's server that scored better than the one it serves
    and fit one of `places` (the machine's GPUs or memory; none known: no advice)."""
    if score is None or score.stale or score.overall is None or not places:
        return []
    out = []
    for a in ident.available:
        other = by_model.get(a.digest) if a.digest else None
        other = other or by_model.get(a.name)
        if other is None or other.overall is None or other.overall < score.overall + BETTER_BY:
            continue
        shape = ModelShape(name=a.name, weights_bytes=a.size_bytes, quantisation=a.quantisation,
                           parameters=parameters_from_label(a.parameters))
        where = fit(shape, places)
        if where is None or not where.fits:
            continue
        out.append(Advice(
            f"upgrade {name}",
            True,
            f"{_name(a)}, already on this server, scored {pct(other.overall)} (eval {ago(now - other.ts)}) against "
            f"{pct(score.overall)} for {ident.short_name}, and fits in {where.device.describe()}",
            f"set model = \"{a.name}\" in the [[local]] block named {name}, then `nonstop eval --backend {name}`",
        ))
    return out


def _name(a: Available) -> str:
    return a.name + (f" ({a.quantisation})" if a.quantisation else "")
