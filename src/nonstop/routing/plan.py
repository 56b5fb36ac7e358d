"""The planner: which backends to try for one request, in what order, and why.

`plan(facts, view, policy)` is a pure function: no I/O, no clock reads, no state
changes. (It memoizes on the view: the plan for requests that fit every window as sent is
worked out once per view and reused while the runtime keeps that view. A kept view
answers exactly as a fresh one would; a test checks that.) Each rule is a small
function; every step and every skipped backend carries the rule that placed it and a
reason in words, so a decision can be shown as it was made (`x-nonstop-route`, the
request log, the dashboard, `nonstop explain`).

The rules, in the order they apply:
  class      the workload class's policy: cloud first, local first, or local only
  cloud      the cloud's state: serving, out until a deadline, due for a probe
  conserve   quota forecast to run out: deferrable classes go local first
  loop       a tool loop a local model started is finished there
  pool       which local backends this request may use (class, then model routes)
  capability a backend that cannot read the request's images is skipped; one whose
             template takes no tools goes after those that do
  context    a backend whose window cannot hold the request, even fitted, is skipped
  health     a backend that failed recently is tried last
  load       among the rest: the user's order, the first answer, or the best score
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from nonstop.routing.facts import RequestFacts, Workload
from nonstop.routing.policy import ClassPolicy, ModelRoute, Policy
from nonstop.routing.view import BackendView, CloudState, CloudView, RoutingView

CLOUD = "cloud"
INF = float("inf")
# Plans a view remembers at most, and plans' dicts kept (Plan.as_dict): a client sends a
# few models and its plans repeat; this bounds one that sends many.
MEMO_MAX = 256
# Room a window must leave for the answer before a request counts as fitting.
MIN_OUTPUT_ROOM = 256
# Assumed speeds before a backend has been measured (tokens per second, CPU-class).
DEFAULT_PROMPT_TPS = 200.0
DEFAULT_GEN_TPS = 20.0
# Output assumed for a request ahead in a busy backend's queue.
QUEUED_OUTPUT_TOKENS = 256


# Steps, skips and plans are made for every request: named tuples, immutable and the
# cheapest such values to build.
class Step(NamedTuple):
    target: str
    rule: str
    reason: str
    probe: bool = False  # this request checks whether the cloud is back
    fit: bool = False  # the request may have to be fitted to this backend's window
    strip_thinking: bool = False  # send to the cloud without `thinking` (see rule "loop")

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "rule": self.rule, "reason": self.reason}
        for flag in ("probe", "fit", "strip_thinking"):
            if getattr(self, flag):
                d[flag] = True
        return d


class Skip(NamedTuple):
    target: str
    rule: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rule": self.rule, "reason": self.reason}


class Plan(NamedTuple):
    steps: tuple[Step, ...]
    skipped: tuple[Skip, ...]
    workload: Workload
    workload_source: str = ""
    # Its local steps were decided from the request's size as sent, which fits every
    # candidate's window: measuring the size a local model sees would change none of them.
    as_sent: bool = False

    @property
    def first(self) -> Step | None:
        return self.steps[0] if self.steps else None

    def as_dict(self) -> dict[str, Any]:
        """The plan as the request log, the dashboard and `nonstop explain` show it. Made
        once for plans alike (the same plan comes back request after request) and
        shared: read it, never change it."""
        d = _DICTS.get(self)
        if d is None:
            d = {
                "class": self.workload.value,
                "class_from": self.workload_source,
                "steps": [s.as_dict() for s in self.steps],
                "skipped": [s.as_dict() for s in self.skipped],
            }
            if len(_DICTS) >= MEMO_MAX:  # plans whose reasons carry numbers (load, sizes) come and go
                _DICTS.clear()
            _DICTS[self] = d
        return d

    def lines(self) -> list[str]:
        """The plan for people: one line per decision."""
        out = [f"class: {self.workload.value} (from {self.workload_source or 'default'})"]
        for i, s in enumerate(self.steps, 1):
            flags = "".join(f" [{f}]" for f in ("probe", "fit", "strip_thinking") if getattr(s, f))
            out.append(f"{i}. {s.target}{flags} — {s.rule}: {s.reason}")
        if not self.steps:
            out.append("no backend can serve this request")
        out.extend(f"skip {s.target} — {s.rule}: {s.reason}" for s in self.skipped)
        return out


_DICTS: dict[Plan, dict[str, Any]] = {}


def _failed(view: RoutingView) -> set[str]:
    """The local backends that have just failed: demoted, or down."""
    return {b.name for b in view.backends if b.demoted or b.healthy is False}


def _up_and_down(steps: list[Step], view: RoutingView) -> tuple[list[Step], list[Step]]:
    """Local steps whose backend is up, and those whose backend failed (demoted, or down):
    a serving cloud goes before the latter even where local models come first."""
    down = _failed(view)
    if not down:
        return steps, []
    return [s for s in steps if s.target not in down], [s for s in steps if s.target in down]


def hhmm(epoch: float) -> str:
    try:
        return _hhmm(int(epoch // 60))
    except (OverflowError, ValueError, OSError):  # a time no calendar shows: never a reason to fail
        return "an unknown time"


@functools.lru_cache(maxsize=16)
def _hhmm(minute: int) -> str:
    """The minute's time of day (the reasons name the same few deadlines again and again:
    formatting one costs more than the rest of a plan)."""
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%H:%M UTC")


# --- the rules ----------------------------------------------------------------------------------


def cloud_rule(facts: RequestFacts, cloud: CloudView, cp: ClassPolicy) -> Step | Skip:
    """Whether the cloud is a candidate at all, and as what."""
    if cp.cloud == "never":
        return Skip(CLOUD, "class", f"{facts.workload.value} work is set to never use the cloud")
    if cloud.state is CloudState.SERVING:
        return _SERVING_STRIP if _strip(facts) else _SERVING
    if cloud.state is CloudState.PROBING or cloud.probe_in_flight:
        return Skip(CLOUD, "cloud", "another request is checking whether the cloud is back")
    if cloud.probe_due and not facts.side:
        return Step(CLOUD, "cloud", f"out until {hhmm(cloud.until)} ({cloud.reason}); the deadline has passed, "
                    "so this request checks whether it is back", probe=True, strip_thinking=_strip(facts))
    return Skip(CLOUD, "cloud", f"out until {hhmm(cloud.until)} ({cloud.reason or 'out'})")


_SERVING = Step(CLOUD, "cloud", "the cloud is serving")
_SERVING_STRIP = Step(CLOUD, "cloud", "the cloud is serving", strip_thinking=True)


def _strip(facts: RequestFacts) -> bool:
    # The cloud rejects a thinking request whose last assistant turn (a local one, or one
    # it wrote when thinking was taken off for the loop) does not start with a thinking
    # block; without `thinking` it accepts the same history.
    return facts.thinking and (bool(facts.local_loop) or facts.unthought_loop)


def model_route(facts: RequestFacts, cp: ClassPolicy, policy: Policy) -> ModelRoute | None:
    """The model route that picks this request's pool (a class's own backends come first)."""
    if cp.backends or not policy.routes:
        return None
    return next((r for r in policy.routes if fnmatchcase(facts.model, r.match)), None)


def pool_rule(facts: RequestFacts, view: RoutingView, cp: ClassPolicy, policy: Policy,
              route: ModelRoute | None) -> tuple[list[BackendView], list[Skip]]:
    """The local backends this request may use, in the configured order."""
    if cp.backends:
        names, why = cp.backends, f"{facts.workload.value} work"
    else:
        if route is None:
            if not policy.order or policy.order == view.names:  # the usual case: every backend, in order
                return list(view.backends), []
            names, why = policy.order, ""
        else:
            names, why = route.backends, f"model route {route.match!r}"
    by_name = {b.name: b for b in view.backends}
    pool = [by_name[n] for n in names if n in by_name]
    skips = []
    if why:
        skips = [Skip(b.name, "pool", f"not among the backends for {why}") for b in view.backends if b.name not in names]
    return pool, skips


def capability_rule(facts: RequestFacts, b: BackendView) -> Skip | str:
    """A Skip for a backend that would only fail; a reason ("" when none) for one that
    would answer less well and goes after those that can do what the request needs."""
    needs, caps = facts.needs, b.caps
    if needs.images and caps.images is False:
        return Skip(b.name, "capability", "the request carries an image and this model cannot read images")
    if needs.tools and caps.tools is False:
        # It can still answer in text (and a call written as text is repaired): tried
        # after the backends whose templates take tools, not skipped.
        return "its chat template takes no tools: tried after those that do"
    return ""


class Room(NamedTuple):
    """What the context rule says of a backend that can take the request."""

    fit: bool  # the request may have to be fitted to the window
    reason: str
    # Said from the size as sent (or with no window known): the same holds for any
    # request that is no larger as sent.
    as_sent: bool = False


def context_rule(facts: RequestFacts, b: BackendView) -> Room | Skip:
    """Room, or a Skip when the request cannot fit even fitted.

    Sizes are in units of nonstop's estimate; a backend's token_ratio (measured against
    its own counter) turns them into its tokens. Until it is measured, a request that
    looks too big is not skipped: the server's own count decides when it is tried."""
    window = b.caps.context_window
    if not window or facts.side:
        return Room(False, "window unknown", True) if not window else Room(False, "")
    usable = window - MIN_OUTPUT_ROOM
    size, ratio = facts.size, b.token_ratio or 1.0
    # The size as sent overestimates the local one, except for images: each counts a
    # fixed number of tokens however few bytes it takes. A request with images is measured.
    if size.sent * ratio <= usable:
        if not facts.needs.images:
            return Room(False, f"fits its {window}-token window", True)
        if not size.known:
            return Room(True, f"~{int(size.sent * ratio)} tokens as sent, with images (measured before it is sent)")
    if not size.known:
        return Room(True, f"~{int(size.sent * ratio)} tokens as sent; fitted to its {window}-token window if needed")
    local = int(size.local * ratio)
    if local <= usable:
        return Room(False, f"fits its {window}-token window ({local} tokens)")
    floor = int(size.floor * ratio)  # measured only now: it walks the fitting tiers
    if floor <= usable:
        return Room(True, f"{local} tokens; fits its {window}-token window once fitted (~{floor})")
    if b.token_ratio is None:
        return Room(True, f"~{local} tokens by estimate, over its {window}-token window; its own count decides")
    return Skip(b.name, "context", f"needs ~{floor} tokens even fitted; its window is {window}")


def first_token_estimate(b: BackendView, tokens: int) -> float:
    """Seconds until this backend would start answering a prompt of `tokens`."""
    prompt = b.prompt_tps or DEFAULT_PROMPT_TPS
    gen = b.gen_tps or DEFAULT_GEN_TPS
    ahead = 0
    if b.busy:
        slots = b.caps.slots or 1
        ahead = max(1, b.inflight - slots + 1)
    return ahead * (tokens / prompt + QUEUED_OUTPUT_TOKENS / gen) + tokens / prompt


@dataclass(slots=True)
class _Candidate:
    b: BackendView
    index: int
    room: Room
    ttft: float
    weaker: str = ""  # why it would answer less well than the request needs

    @property
    def fit(self) -> bool:
        return self.room.fit

    def key(self, prefer: str) -> tuple[Any, ...]:
        down = self.b.demoted or self.b.healthy is False
        lesser = (down, bool(self.weaker), self.fit)
        if prefer == "fastest":
            return (*lesser, round(self.ttft, 1), self.index)
        if prefer == "best":
            score = self.b.score if self.b.score is not None else -1.0
            return (*lesser, -score, self.b.busy, self.index)
        return (*lesser, self.b.busy, self.index)

    def reason(self, prefer: str) -> str:
        parts = [self.room.reason] if self.room.reason else []
        if self.weaker:
            parts.append(self.weaker)
        if self.b.demoted:
            parts.append(f"demoted ({self.b.demoted_why or 'failed recently'}): tried last")
        elif self.b.healthy is False:
            parts.append("its health check failed: tried last")
        elif self.b.busy:
            parts.append(f"busy ({self.b.inflight} in flight)")
        elif prefer == "fastest":
            parts.append(f"~{self.ttft:.1f} s to first token")
        elif prefer == "best" and self.b.score is not None:
            parts.append(f"score {self.b.score:.0%}")
        return "; ".join(parts)


# The rule named for the order among local backends, by the class's preference.
_PREFER_RULE = {"order": "order", "fastest": "load", "best": "score"}


def local_rule(facts: RequestFacts, view: RoutingView, cp: ClassPolicy,
               policy: Policy) -> tuple[list[Step], list[Skip], float | None]:
    """The local steps and skips, and the largest size as sent for which they hold
    unchanged (None when they depend on this request's size)."""
    route = model_route(facts, cp, policy)
    pool, skips = pool_rule(facts, view, cp, policy, route)
    candidates: list[_Candidate] = []
    tokens = facts.size.local if facts.size.known else facts.size.sent
    # While a request fits every candidate's window as sent, its local steps do not depend
    # on its size (unless the class prefers the fastest start, which is estimated by size).
    same_below: float | None = None if cp.prefer == "fastest" or facts.side else INF
    for i, b in enumerate(pool):
        capable = capability_rule(facts, b)
        if isinstance(capable, Skip):
            skips.append(capable)
            continue
        room = context_rule(facts, b)
        if isinstance(room, Skip):
            skips.append(room)
            same_below = None  # a larger request's skip: not what a smaller one would get
            continue
        if same_below is not None:
            same_below = min(same_below, _largest_fitting(b)) if room.as_sent else None
        # Only the "fastest" preference reads the estimate: it is not worked out for the others.
        ttft = first_token_estimate(b, tokens) if cp.prefer == "fastest" else 0.0
        candidates.append(_Candidate(b, i, room, ttft, capable))
    if len(candidates) > 1:
        candidates.sort(key=lambda c: c.key(cp.prefer))
    rule = _PREFER_RULE[cp.prefer]
    return [Step(c.b.name, rule, c.reason(cp.prefer), fit=c.fit) for c in candidates], skips, same_below


def _largest_fitting(b: BackendView) -> float:
    """The largest size as sent (an integer, in nonstop's estimate) that context_rule says
    fits this backend's window as sent: exactly where `size * ratio <= usable` ends."""
    window = b.caps.context_window
    if not window:
        return INF
    usable, ratio = window - MIN_OUTPUT_ROOM, b.token_ratio or 1.0
    if ratio <= 0:
        return INF if usable >= 0 else -1
    n = int(usable / ratio)
    while (n + 1) * ratio <= usable:
        n += 1
    while n >= 0 and n * ratio > usable:
        n -= 1
    return n


def loop_rule(facts: RequestFacts, steps: list[Step], view: RoutingView) -> list[Step] | None:
    """A tool result for a call a local model made goes back to that model first."""
    if not facts.local_loop:
        return None
    tags = {b.name: b.tag for b in view.backends}
    up, down = _up_and_down(steps, view)
    # The model that started the loop, unless it has just failed: then, as when it is gone,
    # another local model carries on (the failed one stays among the rest, last).
    origin = [s for s in up if tags.get(s.target) == facts.local_loop]
    rest = [s for s in steps if s not in origin]
    steps = up + down
    why = "this request answers a tool call that {} made: the loop finishes where it started"
    if origin:
        s = origin[0]
        return [Step(s.target, "loop", why.format(s.target), fit=s.fit)] + rest
    if steps:  # the backend that started it is gone: another local model carries on
        s = steps[0]
        return [Step(s.target, "loop", why.format("a local model") + " (on another local backend)", fit=s.fit)] + steps[1:]
    return None


# --- the planner ---------------------------------------------------------------------------------


class _Remembered(NamedTuple):
    plan: Plan
    # The plan holds for any request with the same key that is no larger as sent.
    same_below: float
    policy: Policy  # kept alive while its id is in the key


def plan(facts: RequestFacts, view: RoutingView, policy: Policy, tried: Mapping[str, str] | None = None) -> Plan:
    """The ordered attempts for this request. `tried` maps the targets already tried for
    it to what happened; they are listed as skipped."""
    # A view kept while nothing changes (the runtime's) remembers its plans: every fact
    # the rules read is in the key, and the size is checked against the windows.
    key = None
    if not tried and not facts.side:
        key = (id(policy), facts.workload, facts.workload_source, facts.model, facts.needs, facts.local_loop,
               _strip(facts))
        known: _Remembered | None = view.memo.get(key)
        if known is not None and facts.size.sent <= known.same_below:
            return known.plan
    cp = policy.for_class(facts.workload)
    cloud = cloud_rule(facts, view.cloud, cp)
    local, skipped, same_below = local_rule(facts, view, cp, policy)
    steps: list[Step] = []
    # A loop goes back to the model that started it whatever else decides the order: the
    # cloud being out, a class that uses local models first, conserving quota.
    looped = loop_rule(facts, local, view) if policy.finish_local_loops else None
    if looped is not None:
        local = looped
    if isinstance(cloud, Skip):
        skipped.insert(0, cloud)
        steps = local
    elif cp.cloud == "fallback" and local:
        up, down = _up_and_down(local, view)
        steps = up + [_why(cloud, "class", f"{facts.workload.value} work uses local models first")] + down
    elif view.cloud.conserving and facts.workload in policy.conserve and local:
        up, down = _up_and_down(local, view)
        steps = up + [_why(cloud, "conserve", _conserve_reason(view.cloud))] + down
    elif looped is not None:
        steps = looped + [cloud]
    else:
        steps = [cloud] + local
    if tried:
        skipped.extend(Skip(s.target, "tried", tried[s.target]) for s in steps if s.target in tried)
        steps = [s for s in steps if s.target not in tried]
    result = Plan(tuple(steps), tuple(skipped), facts.workload, facts.workload_source, same_below is not None)
    if key is not None and same_below is not None:
        if len(view.memo) >= MEMO_MAX:  # the model and tool ids are the client's: keep it bounded
            view.memo.clear()
        view.memo[key] = _Remembered(result, same_below, policy)
    return result


def _why(step: Step, rule: str, reason: str) -> Step:
    return Step(step.target, rule, f"{reason}; then {step.reason}", probe=step.probe, strip_thinking=step.strip_thinking)


def _conserve_reason(cloud: CloudView) -> str:
    for w in cloud.windows:
        if w.runs_out is not None:
            pct = f"{w.utilization:.0%}" if w.utilization is not None else "?"
            resets = f", resets {hhmm(w.resets)}" if w.resets else ""
            return f"conserving quota: {w.window} at {pct}, out ~{hhmm(w.runs_out)}{resets}"
    return "conserving quota: a window is forecast to run out before it resets"

