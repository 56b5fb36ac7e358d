"""The world as the planner sees it at one instant: the cloud's state and forecast, and
each backend's capabilities, health, load and speed.

Plain frozen values. The runtime assembles one per request from its live state (each
backend's and the cloud's part is kept until it changes: see BackendState.view and
QuotaState.view); tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class CloudState(StrEnum):
    SERVING = "serving"
    OUT = "out"
    PROBING = "probing"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can take. None means unknown (the planner then does not rule the
    backend out on that point)."""

    api: str = "anthropic"  # "cloud", "anthropic" or "openai"
    context_window: int | None = None
    max_output: int | None = None
    tools: bool | None = None
    thinking: bool | None = None
    images: bool | None = None
    slots: int | None = None


@dataclass(frozen=True, slots=True)
class WindowForecast:
    """One quota window (5h or 7d) read from the cloud's headers."""

    window: str
    utilization: float | None = None
    resets: float | None = None
    # When it runs out at the current pace (None: not before its reset, or unknown).
    runs_out: float | None = None
    # "slope" (fitted over recent readings) or "high-water" (too little history).
    method: str = ""


@dataclass(frozen=True, slots=True)
class CloudView:
    state: CloudState = CloudState.SERVING
    until: float = 0.0
    reason: str = ""
    # Out, its deadline passed, and no probe under way: the next request may probe.
    probe_due: bool = False
    probe_in_flight: bool = False
    # Quota is forecast to run out before a window resets: conserve deferrable work.
    conserving: bool = False
    windows: tuple[WindowForecast, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendView:
    name: str
    caps: Capabilities = field(default_factory=Capabilities)
    # The short tag this backend's tool-use ids carry (see wire/tool_ids.py).
    tag: str = ""
    healthy: bool | None = None
    # Failed recently: tried only when nothing else can serve, until a probe restores it.
    demoted: bool = False
    demoted_why: str = ""
    inflight: int = 0
    # Slots the server reports free (None: it does not say; nonstop's own count is used).
    free_slots: int | None = None
    # Measured speeds, tokens per second (None until measured).
    prompt_tps: float | None = None
    gen_tps: float | None = None
    # Tokens this server counts per token of nonstop's estimate (None: not measured yet,
    # so a size over the window is not trusted enough to skip the backend).
    token_ratio: float | None = None
    # A measured answer quality score, 0..1 (None: never evaluated).
    score: float | None = None
    # "cold", "warming", "warm" or "" (unknown).
    warmth: str = ""

    @property
    def busy(self) -> bool:
        if self.free_slots is not None:
            return self.free_slots <= 0
        slots = self.caps.slots
        return slots is not None and self.inflight >= slots


@dataclass(frozen=True, slots=True)
class RoutingView:
    # When the view was assembled. A runtime keeps one while none of its parts changes,
    # so this is the time of the last change, not of the request.
    now: float
    cloud: CloudView = field(default_factory=CloudView)
    backends: tuple[BackendView, ...] = ()
    # The backends' names, in order (made once per view).
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # What the planner worked out from this view alone, for the requests that come while
    # it is kept (routing/plan.py, plan). Not part of what the view shows.
    memo: dict[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(b.name for b in self.backends))
        object.__setattr__(self, "memo", {})
