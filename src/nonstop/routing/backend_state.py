"""What nonstop knows about one local backend while it runs: health, load, measured
speed, the window the server really has, and whether it is demoted after a failure.

A plain state object with an injected clock and no I/O: the runtime feeds it (request
outcomes, health checks, what the server reports about itself), and the planner reads
`view()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from nonstop.routing.view import BackendView, Capabilities

# Weight of a new speed measurement in the moving average.
EWMA = 0.3
# A demoted backend is probed in the background this often (doubling to the cap).
PROBE_EVERY = 2.0
PROBE_EVERY_MAX = 30.0
# A server-reported reading older than this is not trusted for load.
REPORT_FRESH = 10.0
INF = float("inf")


@dataclass
class ServerReport:
    """What the server says about itself (llama-server /props and /slots, Ollama
    /api/ps, vLLM /v1/models and /metrics). None: it does not say."""

    kind: str = ""  # "llamacpp", "ollama", "lmstudio", "vllm", "openai" or "" (unknown)
    context_window: int | None = None
    slots: int | None = None
    busy_slots: int | None = None
    waiting: int | None = None
    tools: bool | None = None
    images: bool | None = None
    model: str = ""
    sleeping: bool | None = None
    loaded: bool | None = None
    # The context the model was trained on (Ollama says): no window can be larger.
    trained_context: int | None = None
    at: float = 0.0


@dataclass
class BackendState:
    name: str
    caps: Capabilities
    tag: str = ""
    clock: Callable[[], float] = time.time
    healthy: bool | None = None
    health_error: str = ""
    checked: float = 0.0
    model: str = ""
    inflight: int = 0
    demoted: bool = False
    demoted_why: str = ""
    failures: int = 0
    next_probe: float = 0.0
    prompt_tps: float | None = None
    gen_tps: float | None = None
    token_ratio: float | None = None
    score: float | None = None
    # Requests other nonstop instances have in flight on this server, and when counted.
    others: int = 0
    others_at: float = 0.0
    warmth: str = ""
    # The configured window is a guess (discovery's, for an Ollama whose model was not
    # loaded): the server's own reading replaces it, larger or smaller.
    window_guessed: bool = False
    report: ServerReport = field(default_factory=ServerReport)
    # The last view() and until when it holds (see view()).
    _view: BackendView | None = field(default=None, init=False, repr=False, compare=False)
    view_until: float = field(default=0.0, init=False, repr=False, compare=False)
    # Assignments to any backend's state, ever: while it is unchanged and no view has
    # gone stale, every backend's view is the one it last gave (Runtime.view).
    changes: ClassVar[int] = 0

    # --- what the planner sees ----------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """The configured capabilities, narrowed by what the server reports: a window
        smaller than configured is the one to plan with."""
        caps, r = self.caps, self.report
        window = caps.context_window
        if r.context_window and (window is None or r.context_window < window or self.window_guessed):
            window = r.context_window
        slots = r.slots or caps.slots
        tools = caps.tools if r.tools is None else r.tools
        images = caps.images if r.images is None else r.images
        if (window, slots, tools, images) == (caps.context_window, caps.slots, caps.tools, caps.images):
            return caps
        return replace(caps, context_window=window, slots=slots, tools=tools, images=images)

    def free_slots(self) -> int | None:
        r = self.report
        if r.busy_slots is None or not r.slots or self.clock() - r.at > REPORT_FRESH:
            return None
        # The server's count may lag ours: requests nonstop sent since the reading count too.
        return max(0, r.slots - max(r.busy_slots + (r.waiting or 0), self.inflight))

    def fleet_counted(self, total_before_this: int) -> None:
        """The fleet had `total_before_this` requests in flight here, this instance's included."""
        self.others = max(0, total_before_this - self.inflight)
        self.others_at = self.clock()

    def view(self) -> BackendView:
        """The backend as the planner sees it now. Made once and kept until a field
        changes (any assignment drops it) or a reading it counts goes stale."""
        now = self.clock()
        if self._view is not None and now <= self.view_until:
            return self._view
        fresh = now - self.others_at <= REPORT_FRESH
        others = self.others if fresh else 0
        until = self.others_at + REPORT_FRESH if fresh and self.others else INF
        free = self.free_slots()
        if free is not None:
            until = min(until, self.report.at + REPORT_FRESH)
        v = BackendView(
            name=self.name, caps=self.capabilities(), tag=self.tag, healthy=self.healthy,
            demoted=self.demoted, demoted_why=self.demoted_why, inflight=self.inflight + others,
            free_slots=free, prompt_tps=self.prompt_tps, gen_tps=self.gen_tps,
            token_ratio=self.token_ratio, score=self.score, warmth=self.warmth,
        )
        object.__setattr__(self, "_view", v)
        object.__setattr__(self, "view_until", until)
        return v

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_view", None)
        BackendState.changes += 1

    # --- what happened -------------------------------------------------------------------

    def lease(self) -> Callable[[], None]:
        """Count one request in flight; the returned function ends it (once)."""
        self.inflight += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.inflight = max(0, self.inflight - 1)

        return release

    def succeeded(self, *, prompt_tokens: int = 0, first_token_s: float | None = None,
                  output_tokens: int = 0, generate_s: float | None = None, was_idle: bool = False) -> None:
        """A request got an answer. Speeds are measured only from requests that had the
        backend to themselves (`was_idle`), so a queue does not read as a slow model."""
        self._restore()
        if was_idle and first_token_s and first_token_s > 0 and prompt_tokens >= 64:
            self.prompt_tps = _ewma(self.prompt_tps, prompt_tokens / first_token_s)
        if generate_s and generate_s > 0 and output_tokens >= 8:
            self.gen_tps = _ewma(self.gen_tps, output_tokens / generate_s)

    def counted(self, estimate: int, server: int) -> None:
        """The server counted `server` tokens where nonstop estimated `estimate`."""
        if estimate >= 64 and server > 0:
            self.token_ratio = _ewma(self.token_ratio, server / estimate)

    def failed(self, why: str) -> None:
        """The backend could not serve (refused, timed out, 5xx, a broken reply): try it
        last until a probe or a request finds it answering again."""
        now = self.clock()
        self.failures += 1
        if not self.demoted:
            self.demoted = True
            self.demoted_why = why[:200]
        self.next_probe = now + min(PROBE_EVERY_MAX, PROBE_EVERY * 2 ** min(self.failures - 1, 4))

    def health(self) -> tuple[int, bool, str, float]:
        """What failed requests have set (for `set_health`): failures, demoted, why, next probe."""
        return self.failures, self.demoted, self.demoted_why, self.next_probe

    def set_health(self, health: tuple[int, bool, str, float]) -> None:
        self.failures, self.demoted, self.demoted_why, self.next_probe = health

    def health_checked(self, ok: bool, error: str = "", model: str = "") -> None:
        self.healthy, self.health_error, self.checked = ok, error, self.clock()
        if model:
            self.model = model
        if ok:
            # The server answers; whether it serves is for the next request to show, so the
            # count of failed requests stays (a backend that keeps failing them waits longer).
            self._restore(served=False)
        elif self.demoted:
            self.failed(error or "health check failed")

    def reported(self, report: ServerReport) -> None:
        report.at = self.clock()
        self.report = report
        if report.model:
            self.model = report.model
        if report.sleeping is True or report.loaded is False:
            if self.warmth != "warming":  # a load under way is not undone by a reading
                self.warmth = "cold"
        elif report.sleeping is False or report.loaded is True:
            self.warmth = "warm"

    def probe_due(self) -> bool:
        return self.demoted and self.clock() >= self.next_probe

    def _restore(self, *, served: bool = True) -> None:
        if served:
            self.failures = 0
        if self.demoted:
            self.demoted, self.demoted_why = False, ""
        self.healthy = True


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old * (1 - EWMA) + new * EWMA
