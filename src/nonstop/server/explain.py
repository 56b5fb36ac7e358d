"""`nonstop explain`: the plan for a saved request, against the running instance's live
state or, offline, against the configuration and the state on disk.

Planning changes nothing, so explaining a request is safe on a live gateway: the same
facts and the same planner the pipeline uses, without the attempts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from nonstop.config import Config
from nonstop.routing.facts import RequestFacts, facts_from_request
from nonstop.routing.fit import RequestSize
from nonstop.routing.plan import Plan, plan
from nonstop.routing.policy import Policy, policy_from_config
from nonstop.routing.quota import QuotaState
from nonstop.routing.view import BackendView, Capabilities, RoutingView
from nonstop.wire.anthropic import text_size
from nonstop.wire.tool_ids import backend_tag


def request_facts(req: Mapping[str, Any], headers: Mapping[str, str]) -> RequestFacts:
    """The facts the pipeline would see, with the local size measured."""
    body = dict(req)
    try:
        body_len = len(orjson.dumps(body))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: its strings will do
        body_len = text_size(body)
    facts = facts_from_request(body, {k.lower(): v for k, v in headers.items()},
                               body_len=body_len, measure=RequestSize(lambda: body))
    _ = facts.size.local
    return facts


def fact_lines(facts: RequestFacts) -> list[str]:
    size = facts.size
    lines = [
        f"model: {facts.model or '-'}  stream: {'yes' if facts.stream else 'no'}  "
        f"max_tokens: {facts.max_tokens if facts.max_tokens is not None else '-'}",
        f"size: ~{size.sent} tokens as sent, ~{size.local} as a local model sees it (nonstop's estimate)",
        f"needs: {facts.needs.describe()}",
    ]
    if facts.local_loop:
        lines.append(f"continues a tool loop a local model started (backend tag {facts.local_loop})")
    return lines


def explain(facts: RequestFacts, view: RoutingView, policy: Policy) -> dict[str, Any]:
    p: Plan = plan(facts, view, policy)
    return {"plan": p.as_dict(), "lines": fact_lines(facts) + p.lines(), "offline": False}


def offline_view(cfg: Config, quota_snapshot: Mapping[str, Any] | None, now: float) -> RoutingView:
    """What the planner would see, from the configuration and the persisted cloud state:
    the configured windows, health and load unknown."""
    quota = QuotaState(cfg.cloud, clock=lambda: now)
    if quota_snapshot:
        quota.restore(quota_snapshot)
    backends = tuple(
        BackendView(b.name, Capabilities(api=b.api, context_window=b.context_window, max_output=b.max_output_tokens),
                    tag=backend_tag(b.name))
        for b in cfg.local
    )
    return RoutingView(now, quota.view(), backends)


def explain_offline(cfg: Config, req: Mapping[str, Any], headers: Mapping[str, str],
                    quota_snapshot: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    out = explain(request_facts(req, headers), offline_view(cfg, quota_snapshot, now), policy_from_config(cfg))
    out["offline"] = True
    return out
