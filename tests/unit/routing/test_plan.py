"""The planner's rules as tables: given these facts, this view and this policy, this plan.

Every rule alone, then combined. `plan()` is pure, so each case is one call.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.routing.facts import Needs, RequestFacts, Size, Workload
from nonstop.routing.plan import (
    CLOUD,
    MEMO_MAX,
    MIN_OUTPUT_ROOM,
    Plan,
    Room,
    Skip,
    _largest_fitting,
    context_rule,
    first_token_estimate,
    plan,
)
from nonstop.routing.policy import ClassPolicy, ModelRoute, Policy
from nonstop.routing.view import (
    BackendView,
    Capabilities,
    CloudState,
    CloudView,
    RoutingView,
    WindowForecast,
)
from tests.support.sizes import Measured

NOW = 1_800_000_000.0
SERVING = CloudView()
OUT = CloudView(state=CloudState.OUT, until=NOW + 3600, reason="subscription_limit")
DUE = CloudView(state=CloudState.OUT, until=NOW - 1, reason="subscription_limit", probe_due=True)
PROBING = CloudView(state=CloudState.PROBING, until=NOW - 1, reason="subscription_limit", probe_in_flight=True)
CONSERVING = CloudView(conserving=True, windows=(WindowForecast("5h", 0.71, NOW + 1200, NOW + 600, "slope"),))


def backend(name: str, window: int = 32768, **kw) -> BackendView:
    caps = kw.pop("caps", None) or Capabilities(context_window=window, slots=kw.pop("slots", 1),
                                                tools=kw.pop("tools", None), images=kw.pop("images", None))
    kw.setdefault("token_ratio", 1.0)  # measured: sizes are decisive
    return BackendView(name, caps, tag=kw.pop("tag", name[:6]), **kw)


def facts(tokens: int = 1000, workload: Workload = Workload.MAIN, **kw) -> RequestFacts:
    size = kw.pop("size", None) or Size(tokens)
    return RequestFacts(model=kw.pop("model", "claude-sonnet-4-5"), size=size, workload=workload, **kw)


def targets(p: Plan) -> list[str]:
    return [s.target for s in p.steps]


def skipped(p: Plan) -> dict[str, str]:
    return {s.target: s.rule for s in p.skipped}


BIG, SMALL = backend("big", 16384), backend("small", 4096)
POLICY = Policy(order=("big", "small"))


# --- rule "cloud": the cloud's state ----------------------------------------------------------

@pytest.mark.parametrize(("cloud", "expected", "probe"), [
    (SERVING, ["cloud", "big", "small"], False),
    (OUT, ["big", "small"], False),
    (DUE, ["cloud", "big", "small"], True),
    (PROBING, ["big", "small"], False),
])
def test_cloud_state(cloud: CloudView, expected: list[str], probe: bool) -> None:
    p = plan(facts(), RoutingView(NOW, cloud, (BIG, SMALL)), POLICY)
    assert targets(p) == expected
    assert any(s.probe for s in p.steps) is probe
    if "cloud" not in expected:
        assert skipped(p)["cloud"] == "cloud"


def test_side_requests_never_probe() -> None:
    p = plan(facts(side=True), RoutingView(NOW, DUE, (BIG,)), POLICY)
    assert targets(p) == ["big"]
    assert "out until" in p.skipped[0].reason


def test_out_reason_names_the_deadline_and_why() -> None:
    p = plan(facts(), RoutingView(NOW, OUT, (BIG,)), POLICY)
    assert p.skipped[0].reason == "out until 09:00 UTC (subscription_limit)"


def test_planning_changes_nothing() -> None:
    view = RoutingView(NOW, DUE, (BIG, SMALL))
    f = facts()
    assert plan(f, view, POLICY) == plan(f, view, POLICY)


# --- rule "class": per-workload policy ------------------------------------------------------------

@pytest.mark.parametrize(("use", "expected"), [
    ("first", ["cloud", "big", "small"]),
    ("fallback", ["big", "small", "cloud"]),
    ("never", ["big", "small"]),
])
def test_class_cloud_use(use: str, expected: list[str]) -> None:
    policy = Policy(classes={Workload.BACKGROUND: ClassPolicy(cloud=use)}, order=("big", "small"))  # type: ignore[arg-type]
    p = plan(facts(workload=Workload.BACKGROUND), RoutingView(NOW, SERVING, (BIG, SMALL)), policy)
    assert targets(p) == expected
    assert plan(facts(), RoutingView(NOW, SERVING, (BIG, SMALL)), policy).steps[0].target == CLOUD


def test_fallback_class_uses_the_cloud_when_no_local_backend_can() -> None:
    policy = Policy(classes={Workload.BACKGROUND: ClassPolicy(cloud="fallback")})
    p = plan(facts(workload=Workload.BACKGROUND), RoutingView(NOW, SERVING, ()), policy)
    assert targets(p) == ["cloud"]


def test_class_backends_restrict_and_order_the_pool() -> None:
    policy = Policy(classes={Workload.BACKGROUND: ClassPolicy(backends=("small",))}, order=("big", "small"))
    p = plan(facts(workload=Workload.BACKGROUND), RoutingView(NOW, OUT, (BIG, SMALL)), policy)
    assert targets(p) == ["small"]
    assert skipped(p)["big"] == "pool"


def test_model_routes_pick_the_pool() -> None:
    policy = Policy(routes=(ModelRoute("claude-*haiku*", ("small",)),), order=("big", "small"))
    p = plan(facts(model="claude-3-5-haiku"), RoutingView(NOW, OUT, (BIG, SMALL)), policy)
    assert targets(p) == ["small"]
    assert plan(facts(model="claude-opus-5"), RoutingView(NOW, OUT, (BIG, SMALL)), policy).steps[0].target == "big"


# --- rule "conserve": quota forecast to run out ---------------------------------------------------

@pytest.mark.parametrize(("workload", "first"), [
    (Workload.MAIN, "cloud"),
    (Workload.SUBAGENT, "big"),
    (Workload.BACKGROUND, "big"),
    (Workload.COMPACTION, "cloud"),
])
def test_conserving_sends_deferrable_work_local_first(workload: Workload, first: str) -> None:
    p = plan(facts(workload=workload), RoutingView(NOW, CONSERVING, (BIG, SMALL)), POLICY)
    assert p.steps[0].target == first
    assert CLOUD in targets(p)
    if first != CLOUD:
        assert p.steps[-1].rule == "conserve"
        assert "5h at 71%" in p.steps[-1].reason


def test_conserving_with_no_local_backend_keeps_the_cloud() -> None:
    p = plan(facts(workload=Workload.BACKGROUND), RoutingView(NOW, CONSERVING, ()), POLICY)
    assert targets(p) == ["cloud"]


# --- rule "loop": a tool loop a local model started ------------------------------------------------

def test_local_tool_loop_finishes_on_the_backend_that_started_it() -> None:
    p = plan(facts(local_loop="small", thinking=True), RoutingView(NOW, SERVING, (BIG, SMALL)), POLICY)
    assert targets(p) == ["small", "big", "cloud"]
    assert p.steps[0].rule == "loop"
    assert p.steps[-1].strip_thinking


@pytest.mark.parametrize("cloud", [OUT, PROBING], ids=["out", "probing"])
def test_local_tool_loop_goes_back_to_its_backend_while_the_cloud_is_out(cloud: CloudView) -> None:
    p = plan(facts(local_loop="small"), RoutingView(NOW, cloud, (BIG, SMALL)), POLICY)
    assert targets(p) == ["small", "big"]
    assert p.steps[0].rule == "loop"


def test_local_tool_loop_goes_back_to_its_backend_when_conserving() -> None:
    policy = Policy(order=("big", "small"), conserve=frozenset({Workload.SUBAGENT}))
    p = plan(facts(workload=Workload.SUBAGENT, local_loop="small"), RoutingView(NOW, CONSERVING, (BIG, SMALL)), policy)
    assert targets(p) == ["small", "big", "cloud"]
    assert p.steps[0].rule == "loop" and p.steps[-1].rule == "conserve"


def test_local_tool_loop_moves_on_when_its_backend_is_gone() -> None:
    p = plan(facts(local_loop="gone00"), RoutingView(NOW, SERVING, (BIG,)), POLICY)
    assert targets(p) == ["big", "cloud"]
    assert "another local backend" in p.steps[0].reason


def test_local_tool_loop_without_local_backends_goes_to_the_cloud_without_thinking() -> None:
    p = plan(facts(local_loop="small", thinking=True), RoutingView(NOW, SERVING, ()), POLICY)
    assert targets(p) == ["cloud"]
    assert p.steps[0].strip_thinking


def test_thinking_is_kept_when_the_last_turn_was_the_clouds() -> None:
    p = plan(facts(thinking=True), RoutingView(NOW, SERVING, (BIG,)), POLICY)
    assert not p.steps[0].strip_thinking


def test_finishing_local_loops_can_be_turned_off() -> None:
    policy = Policy(finish_local_loops=False, order=("big",))
    p = plan(facts(local_loop="big", thinking=True), RoutingView(NOW, SERVING, (BIG,)), policy)
    assert targets(p) == ["cloud", "big"]
    assert p.steps[0].strip_thinking


# --- rule "capability" ---------------------------------------------------------------------------

def test_backend_that_cannot_call_tools_goes_after_those_that_can() -> None:
    no_tools = backend("notools", tools=False)
    p = plan(facts(needs=Needs(tools=True)), RoutingView(NOW, OUT, (no_tools, BIG)), Policy(order=("notools", "big")))
    assert targets(p) == ["big", "notools"]
    assert "takes no tools" in p.steps[1].reason
    # Without tools in the request, the user's order stands.
    assert targets(plan(facts(), RoutingView(NOW, OUT, (no_tools, BIG)), Policy(order=("notools", "big")))) == ["notools", "big"]
    # The only backend is still tried: a text answer (or a repaired call) beats none.
    alone = plan(facts(needs=Needs(tools=True)), RoutingView(NOW, OUT, (no_tools,)), Policy(order=("notools",)))
    assert targets(alone) == ["notools"]


def test_unknown_capability_is_not_a_reason_to_skip() -> None:
    p = plan(facts(needs=Needs(tools=True, images=True)), RoutingView(NOW, OUT, (BIG,)), POLICY)
    assert targets(p) == ["big"]


def test_backend_that_cannot_read_images_is_skipped_for_an_image() -> None:
    blind = backend("blind", images=False)
    p = plan(facts(needs=Needs(images=True)), RoutingView(NOW, OUT, (blind,)), Policy(order=("blind",)))
    assert targets(p) == []
    assert skipped(p)["blind"] == "capability"


# --- rule "context" ------------------------------------------------------------------------------

class Unmeasured(Measured):
    def local(self) -> int:
        raise AssertionError("the planner measured a size it did not need")

    floor = local


def unmeasured(tokens: int) -> Size:
    return Size(tokens, Unmeasured(0, 0))


@pytest.mark.parametrize(("size", "expected", "fit"), [
    (Size(2000), ["small", "big"], [False, False]),
    (unmeasured(8000), ["big", "small"], [False, True]),  # small may fit once fitted
    (Size(8000), ["big"], [False]),  # measured: 8000 tokens, no fitting possible
    (Size(8000, local=3000, floor=2000), ["small", "big"], [False, False]),
    (Size(8000, local=6000, floor=3000), ["big", "small"], [False, True]),
    (Size(30000, local=12000, floor=9000), ["big"], [False]),
    (Size(60000, local=40000, floor=20000), [], []),
])
def test_context_windows(size: Size, expected: list[str], fit: list[bool]) -> None:
    p = plan(facts(size=size), RoutingView(NOW, OUT, (SMALL, BIG)), Policy(order=("small", "big")))
    assert targets(p) == expected
    assert [s.fit for s in p.steps] == fit
    for name in {"big", "small"} - set(expected):
        assert skipped(p)[name] == "context"
    assert not p.steps or "window" in p.steps[0].reason


def test_large_request_goes_to_the_large_window_first_even_if_listed_second() -> None:
    p = plan(facts(size=Size(6000, local=6000, floor=3500)), RoutingView(NOW, OUT, (SMALL, BIG)), Policy(order=("small", "big")))
    assert targets(p) == ["big", "small"]


def test_window_edge_leaves_room_for_output() -> None:
    edge = 4096 - MIN_OUTPUT_ROOM
    p = plan(facts(size=Size(edge, local=edge, floor=edge)), RoutingView(NOW, OUT, (SMALL,)), Policy(order=("small",)))
    assert p.steps[0].fit is False
    p = plan(facts(size=Size(edge + 1, local=edge + 1, floor=edge + 1)), RoutingView(NOW, OUT, (SMALL,)), Policy(order=("small",)))
    assert targets(p) == []


def test_token_ratio_turns_estimates_into_the_servers_tokens() -> None:
    # nonstop's estimate says 10000; this server counts 0.4 of that: 4000 fits 8k.
    b = backend("b", 8192, token_ratio=0.4)
    p = plan(facts(size=Size(10000, local=10000, floor=9000)), RoutingView(NOW, OUT, (b,)), Policy(order=("b",)))
    assert targets(p) == ["b"] and not p.steps[0].fit


def test_an_unmeasured_server_is_not_skipped_on_an_estimate() -> None:
    b = backend("b", 4096, token_ratio=None)
    p = plan(facts(size=Size(10000, local=10000, floor=9000)), RoutingView(NOW, OUT, (b,)), Policy(order=("b",)))
    assert targets(p) == ["b"] and p.steps[0].fit
    assert "its own count decides" in p.steps[0].reason


def test_size_is_measured_only_when_a_window_needs_it() -> None:
    m = Measured(3000, 2000)
    f = facts(size=Size(2000, m))
    plan(f, RoutingView(NOW, SERVING, (BIG, SMALL)), POLICY)
    assert m.asked == []  # 2000 tokens as sent fit both windows


@pytest.mark.parametrize(("local", "floor_asked"), [(3000, False), (6000, True)])
def test_the_fitted_floor_is_measured_only_for_a_request_over_a_window(local: int, floor_asked: bool) -> None:
    # The floor walks the fitting tiers (the costliest part of sizing a request for a
    # local model): a request that fits as it is never needs it.
    m = Measured(local, 2000)
    f = facts(size=Size(8000, m))
    _ = f.size.local  # the pipeline measures before a local step
    p = plan(f, RoutingView(NOW, OUT, (SMALL,)), Policy(order=("small",)))
    assert targets(p) == ["small"] and p.steps[0].fit is floor_asked
    assert m.asked == (["local", "floor"] if floor_asked else ["local"])


# --- rule "health" -------------------------------------------------------------------------------

def test_demoted_and_unhealthy_backends_are_tried_last() -> None:
    sick = backend("big", 16384, demoted=True, demoted_why="connection refused")
    down = backend("mid", 16384, healthy=False)
    p = plan(facts(), RoutingView(NOW, OUT, (sick, down, SMALL)), Policy(order=("big", "mid", "small")))
    assert targets(p) == ["small", "big", "mid"]
    assert "demoted (connection refused)" in p.steps[1].reason


# --- rule "load" ---------------------------------------------------------------------------------

def test_busy_backend_goes_after_an_idle_one() -> None:
    busy = backend("big", 16384, inflight=1, slots=1)
    p = plan(facts(), RoutingView(NOW, OUT, (busy, SMALL)), POLICY)
    assert targets(p) == ["small", "big"]
    assert "busy" in p.steps[1].reason


def test_server_reported_free_slots_win_over_own_count() -> None:
    b = backend("big", 16384, inflight=0, free_slots=0)
    assert b.busy
    b = backend("big", 16384, inflight=3, free_slots=1, slots=1)
    assert not b.busy


def test_fastest_prefers_the_backend_that_answers_first() -> None:
    slow = backend("slow", 16384, prompt_tps=50.0)
    fast = backend("fast", 16384, prompt_tps=2000.0)
    policy = Policy(classes={Workload.MAIN: ClassPolicy(prefer="fastest")}, order=("slow", "fast"))
    p = plan(facts(size=Size(8000, local=8000, floor=8000)), RoutingView(NOW, OUT, (slow, fast)), policy)
    assert targets(p) == ["fast", "slow"]
    assert p.steps[0].rule == "load" and "to first token" in p.steps[0].reason
    # The user's order wins by default for main turns.
    assert targets(plan(facts(size=Size(8000, local=8000, floor=8000)), RoutingView(NOW, OUT, (slow, fast)),
                        Policy(order=("slow", "fast")))) == ["slow", "fast"]


def test_background_work_defaults_to_the_fastest() -> None:
    slow = backend("slow", 16384, prompt_tps=50.0)
    fast = backend("fast", 16384, prompt_tps=2000.0)
    p = plan(facts(8000, Workload.BACKGROUND), RoutingView(NOW, OUT, (slow, fast)), Policy(order=("slow", "fast")))
    assert targets(p) == ["fast", "slow"]


def test_best_prefers_the_higher_score() -> None:
    a, b = backend("a", score=0.4), backend("b", score=0.9)
    policy = Policy(classes={Workload.MAIN: ClassPolicy(prefer="best")}, order=("a", "b"))
    p = plan(facts(), RoutingView(NOW, OUT, (a, b)), policy)
    assert targets(p) == ["b", "a"]
    assert "score 90%" in p.steps[0].reason


def test_first_token_estimate_counts_the_queue() -> None:
    idle = backend("x", prompt_tps=100.0)
    busy = backend("x", prompt_tps=100.0, inflight=2, slots=1)
    assert first_token_estimate(idle, 1000) == pytest.approx(10.0)
    assert first_token_estimate(busy, 1000) > 2 * first_token_estimate(idle, 1000)


# --- already tried, and combinations ------------------------------------------------------------------

def test_tried_targets_are_listed_as_skipped_with_what_happened() -> None:
    p = plan(facts(), RoutingView(NOW, SERVING, (BIG, SMALL)), POLICY, tried={"cloud": "overloaded", "big": "HTTP 500"})
    assert targets(p) == ["small"]
    assert {s.target: s.reason for s in p.skipped if s.rule == "tried"} == {"cloud": "overloaded", "big": "HTTP 500"}


def test_conserve_plus_context_plus_load() -> None:
    busy_big = backend("big", 16384, inflight=1, slots=1)
    tiny = backend("tiny", 2048)
    p = plan(facts(size=Size(6000, local=5000, floor=3000), workload=Workload.SUBAGENT),
             RoutingView(NOW, CONSERVING, (tiny, SMALL, busy_big)), Policy(order=("tiny", "small", "big")))
    assert targets(p) == ["big", "small", "cloud"]
    assert [s.fit for s in p.steps] == [False, True, False]
    assert skipped(p)["tiny"] == "context"


def test_out_cloud_plus_class_never_plus_health() -> None:
    policy = Policy(classes={Workload.BACKGROUND: ClassPolicy(cloud="never")}, order=("big", "small"))
    sick = backend("big", 16384, demoted=True)
    p = plan(facts(workload=Workload.BACKGROUND), RoutingView(NOW, DUE, (sick, SMALL)), policy)
    assert targets(p) == ["small", "big"]
    assert skipped(p)["cloud"] == "class"


def test_loop_plus_probe_due() -> None:
    p = plan(facts(local_loop="small", thinking=True), RoutingView(NOW, DUE, (BIG, SMALL)), POLICY)
    assert targets(p) == ["small", "big", "cloud"]
    assert p.steps[-1].probe and p.steps[-1].strip_thinking


def test_nothing_can_serve() -> None:
    p = plan(facts(size=Size(90000, local=90000, floor=80000)), RoutingView(NOW, OUT, (BIG, SMALL)), POLICY)
    assert p.steps == ()
    assert p.first is None
    assert "no backend can serve this request" in p.lines()


def test_plan_as_dict_and_lines_show_every_decision() -> None:
    p = plan(facts(size=Size(6000, local=6000, floor=5000)), RoutingView(NOW, OUT, (BIG, SMALL)), POLICY)
    d = p.as_dict()
    assert d["class"] == "main"
    assert [s["target"] for s in d["steps"]] == ["big"]
    assert {s["target"] for s in d["skipped"]} == {"cloud", "small"}
    text = "\n".join(p.lines())
    assert "1. big — order: fits its 16384-token window" in text
    assert "skip small — context" in text
    assert isinstance(p.skipped[0], Skip)


def test_plans_alike_share_one_dict_and_the_kept_dicts_are_bounded() -> None:
    from nonstop.routing import plan as plan_module

    view = RoutingView(NOW, OUT, (BIG, SMALL))
    p = plan(facts(size=Size(6000, local=6000, floor=5000)), view, POLICY)
    again = plan(facts(size=Size(6000, local=6000, floor=5000)), RoutingView(NOW, OUT, (BIG, SMALL)), POLICY)
    assert again is not p and again == p and again.as_dict() is p.as_dict()
    fresh = {"class": p.workload.value, "class_from": p.workload_source,
             "steps": [s.as_dict() for s in p.steps], "skipped": [s.as_dict() for s in p.skipped]}
    assert p.as_dict() == fresh
    other = p._replace(steps=(p.steps[0]._replace(reason="busy (3 in flight)"),))
    assert other.as_dict()["steps"][0]["reason"] == "busy (3 in flight)" and p.as_dict() == fresh
    for i in range(plan_module.MEMO_MAX + 10):  # plans whose reasons carry numbers, each once
        p._replace(steps=(p.steps[0]._replace(reason=f"busy ({i} in flight)"),)).as_dict()
    assert len(plan_module._DICTS) <= plan_module.MEMO_MAX


# --- a view's remembered local steps ----------------------------------------------------------

def test_a_kept_view_answers_as_a_fresh_one() -> None:
    """The plans a view remembers are the ones a new view would give, for every size,
    class, need, model, loop and source: smaller requests reuse them, larger ones do not."""
    pool = (backend("big", 16384), backend("small", 4096, token_ratio=1.5), backend("nowin", caps=Capabilities(tools=False)),
            backend("eyes", 8192, images=True), backend("busy", 32768, inflight=3, slots=1))
    policies = [
        Policy(order=tuple(b.name for b in pool)),
        Policy(order=tuple(b.name for b in pool), routes=(ModelRoute("*haiku*", ("small", "busy")),)),
        Policy(order=tuple(b.name for b in pool), classes={Workload.SUBAGENT: ClassPolicy(backends=("big", "eyes")),
                                                           Workload.BACKGROUND: ClassPolicy(cloud="fallback", prefer="best")}),
        # Two classes with equal rules: the skips still name each class.
        Policy(order=tuple(b.name for b in pool), classes={w: ClassPolicy(backends=("big", "eyes"))
                                                           for w in (Workload.MAIN, Workload.SUBAGENT)}),
    ]
    sizes = [100, 2000, 2600, 3839, 3840, 5000, 8000, 16127, 16129, 40000, 600]
    for policy in policies:
        for cloud in (SERVING, OUT):
            kept = RoutingView(NOW, cloud, pool)
            for tokens in sizes:
                for workload in (Workload.MAIN, Workload.SUBAGENT, Workload.BACKGROUND):
                    for needs in (Needs(), Needs(tools=True), Needs(images=True)):
                        for model, loop, thinking, source, unthought in MEMO_VARIANTS:
                            f = facts(tokens, workload, needs=needs, model=model, local_loop=loop, thinking=thinking,
                                      workload_source=source, unthought_loop=unthought,
                                      size=Size(tokens, local=tokens // 2, floor=tokens // 4) if tokens == 40000 else None)
                            fresh = RoutingView(NOW, cloud, pool)
                            case = (tokens, workload, needs, model, loop, thinking, source, unthought)
                            assert plan(f, kept, policy) == plan(f, fresh, policy), case
                            tried = {"cloud": "out"}
                            assert plan(f, kept, policy, tried) == plan(f, RoutingView(NOW, cloud, pool), policy, tried), case
            assert kept.memo  # it was used


# Every fact in the memo's key besides class and needs, each changed alone after the
# first: the model (routes), the loop's backend, thinking (the cloud step's strip flag)
# and where the class came from.
MEMO_VARIANTS = [("claude-sonnet-4-5", "", False, "default", False), ("claude-haiku-4-5", "", False, "default", False),
                 ("claude-sonnet-4-5", "small", False, "default", False),
                 ("claude-sonnet-4-5", "small", True, "default", False),
                 ("claude-sonnet-4-5", "", False, "header", False), ("claude-sonnet-4-5", "gone", False, "default", False),
                 ("claude-sonnet-4-5", "", True, "default", True), ("claude-sonnet-4-5", "", True, "default", False)]


def test_a_kept_plan_is_not_reused_for_a_larger_request_or_another_policy() -> None:
    win = backend("win", 4096, token_ratio=1.3)
    view = RoutingView(NOW, SERVING, (win,))
    ONE = Policy(order=("win",))  # noqa: N806
    usable = 4096 - 256
    edge = int(usable / 1.3)
    while (edge + 1) * 1.3 <= usable:
        edge += 1
    small = plan(facts(edge), view, ONE)
    assert plan(facts(edge), view, ONE) is small  # remembered
    assert plan(facts(edge + 1), view, ONE) == plan(facts(edge + 1), RoutingView(NOW, SERVING, (win,)), ONE)
    assert plan(facts(edge + 1), view, ONE).steps[1] != small.steps[1]  # measured: not the remembered plan
    other = Policy(order=("win",), classes={Workload.MAIN: ClassPolicy(cloud="never")})
    assert targets(plan(facts(edge), view, other)) == ["win"]


@given(st.integers(min_value=257, max_value=2_000_000), st.floats(min_value=0.05, max_value=20, allow_nan=False))
def test_largest_fitting_is_exactly_where_the_context_rule_stops_fitting(window: int, ratio: float) -> None:
    b = backend("w", window, token_ratio=ratio)
    n = _largest_fitting(b)
    assert isinstance(context_rule(facts(n), b), Room) and context_rule(facts(n), b).as_sent
    assert not getattr(context_rule(facts(n + 1), b), "as_sent", False)


def test_a_view_remembers_a_bounded_number_of_plans() -> None:
    # The model name is the client's: one that sends a new one each time cannot grow the memo.
    view = RoutingView(NOW, SERVING, (BIG,))
    for i in range(MEMO_MAX * 3):
        p = plan(facts(1000, model=f"model-{i}"), view, POLICY)
        assert targets(p) == ["cloud", "big"]
        assert len(view.memo) <= MEMO_MAX
