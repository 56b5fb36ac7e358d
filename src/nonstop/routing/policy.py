"""The user's routing rules, as the planner reads them: per workload class, which
backends in what order, whether the cloud is used, and what to prefer among local
backends; which classes to conserve when quota runs short; model-name routes.

Built once from the config (`policy_from_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from nonstop.config import Config
from nonstop.routing.facts import Workload

CloudUse = Literal["first", "fallback", "never"]
Prefer = Literal["order", "fastest", "best"]

# The classes that go local first when a quota window is forecast to run out.
DEFAULT_CONSERVE = (Workload.BACKGROUND, Workload.SUBAGENT)
# Main turns and subagents keep the user's backend order (the first is usually the best
# model); short background work goes where it starts soonest.
_DEFAULT_PREFER: dict[Workload, Prefer] = {
    Workload.MAIN: "order",
    Workload.SUBAGENT: "order",
    Workload.COMPACTION: "fastest",
    Workload.BACKGROUND: "fastest",
    Workload.COUNT_TOKENS: "fastest",
}


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    # "first": the cloud, local backends when it cannot serve; "fallback": local
    # backends first, the cloud only when none can serve; "never": local only.
    cloud: CloudUse = "first"
    # Local backends allowed for this class, in order; empty: all, in config order.
    backends: tuple[str, ...] = ()
    prefer: Prefer = "order"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    match: str  # a glob over the client's model name
    backends: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    classes: Mapping[Workload, ClassPolicy] = field(default_factory=dict)
    routes: tuple[ModelRoute, ...] = ()
    conserve: frozenset[Workload] = frozenset(DEFAULT_CONSERVE)
    # Finish a tool loop a local model started on that model (the cloud would reject a
    # thinking request whose last assistant turn has no thinking block).
    finish_local_loops: bool = True
    # Local backends in config order (the "order" preference and the default pool).
    order: tuple[str, ...] = ()

    def for_class(self, workload: Workload) -> ClassPolicy:
        found = self.classes.get(workload)
        if found is not None:
            return found
        return _DEFAULT_CLASSES.get(workload) or ClassPolicy()


# A class without rules of its own: made once, not per request.
_DEFAULT_CLASSES = {w: ClassPolicy(prefer=p) for w, p in _DEFAULT_PREFER.items()}


def policy_from_config(cfg: Config, order: tuple[str, ...] = ()) -> Policy:
    """`order`: the local backends' names as they are running (configured, discovered
    or embedded), in the order they were given."""
    classes: dict[Workload, ClassPolicy] = {}
    for name, rule in cfg.routing.classes:
        w = Workload(name)
        prefer = rule.prefer or _DEFAULT_PREFER.get(w, "order")
        classes[w] = ClassPolicy(cloud=rule.cloud, backends=rule.backends, prefer=prefer)  # type: ignore[arg-type]
    return Policy(
        classes=classes,
        routes=tuple(ModelRoute(r.match, r.backends) for r in cfg.routes),
        conserve=frozenset(Workload(c) for c in cfg.routing.conserve),
        finish_local_loops=cfg.routing.finish_local_tool_loops,
        order=order or tuple(b.name for b in cfg.local),
    )
