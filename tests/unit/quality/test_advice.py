"""What `doctor` says about each backend's model: its verdict, and a better-scoring model
its server already has, when one fits the machine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp

from nonstop.backends.sizing import Device
from nonstop.cli import doctor
from nonstop.cli.doctor import Probes
from nonstop.config import CloudConfig, Config, DiscoveryConfig, LocalBackendConfig
from nonstop.quality.advice import upgrades, verdict_advice
from nonstop.quality.identity import Available, ModelIdentity
from nonstop.quality.results import latest_scores, save_result, scores_by_model
from nonstop.quality.score import Scorecard

NOW = 1_800_000_000.0
GB = 1_000_000_000
RAM32 = Device("ram", "", 32 * GB)
CURRENT = ModelIdentity("ollama", server="ollama", name="qwen3:8b", digest="sha256:small", quantisation="Q4_K_M",
                        available=(Available("qwen3-coder:30b", 18 * GB, "sha256:big", "Q4_K_M"),
                                   Available("gpt-oss:120b", 65 * GB, "sha256:huge", "MXFP4"),
                                   Available("llama3.2:3b", 2 * GB, "sha256:tiny", "Q4_K_M")))


def card(overall: float) -> Scorecard:
    cats = dict.fromkeys(("tool_choice", "tool_input", "tool_loop", "stop", "format"), overall)
    return Scorecard({**cats, "long_context": None}, overall, tokens_per_s=30.0)


def filled(db: Path) -> None:
    save_result(db, CURRENT, card(0.55), quick=False, now=NOW - 3600)
    for name, digest, score in (("qwen3-coder:30b", "sha256:big", 0.85), ("gpt-oss:120b", "sha256:huge", 0.9),
                                ("llama3.2:3b", "sha256:tiny", 0.3)):
        save_result(db, ModelIdentity(f"ollama:{name}", name=name, digest=digest), card(score), quick=True, now=NOW - 7200)


def test_the_verdict_levels(tmp_path: Path) -> None:
    db = tmp_path / "nonstop.db"
    assert verdict_advice("llama", None, NOW).fix.startswith("run `nonstop eval`")
    save_result(db, CURRENT, card(0.9), quick=False, now=NOW)
    good = verdict_advice("ollama", latest_scores(db)["ollama"], NOW)
    assert good.ok and not good.fix and "tools 90%" in good.detail
    save_result(db, CURRENT, card(0.3), quick=False, now=NOW)
    low = verdict_advice("ollama", latest_scores(db)["ollama"], NOW)
    assert low.ok and "stall" in low.fix
    swapped = ModelIdentity("ollama", name="qwen3:8b", digest="sha256:new")
    stale = verdict_advice("ollama", latest_scores(db, {"ollama": swapped})["ollama"], NOW)
    assert "stale" in stale.detail and stale.fix == "run `nonstop eval --backend ollama`"


def test_an_upgrade_that_scored_better_and_fits_is_named(tmp_path: Path) -> None:
    db = tmp_path / "nonstop.db"
    filled(db)
    score = latest_scores(db, {"ollama": CURRENT})["ollama"]
    found = upgrades("ollama", CURRENT, score, scores_by_model(db), [RAM32], NOW)
    assert len(found) == 1  # gpt-oss:120b does not fit 32 GB; llama3.2:3b scored lower
    a = found[0]
    assert a.check == "upgrade ollama" and a.detail.startswith("qwen3-coder:30b (Q4_K_M), already on this server, scored 85%")
    assert "against 55% for qwen3:8b" in a.detail and a.detail.endswith("fits in RAM (29.8 GiB)")
    assert a.fix.startswith('set model = "qwen3-coder:30b" in the [[local]] block named ollama')
    assert upgrades("ollama", CURRENT, score, scores_by_model(db), [], NOW) == []  # memory unknown: no advice
    assert len(upgrades("ollama", CURRENT, score, scores_by_model(db), [Device("ram", "", 128 * GB)], NOW)) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_doctor_reports_the_verdict_and_the_upgrade(tmp_path: Path) -> None:
    cfg = Config(listen=f"127.0.0.1:{_closed_port()}", state_dir=tmp_path / "state",
                 cloud=CloudConfig(url=f"http://127.0.0.1:{_closed_port()}"), discovery=DiscoveryConfig(enabled=False),
                 local=(LocalBackendConfig("ollama", f"http://127.0.0.1:{_closed_port()}", model="qwen3:8b"),))
    filled(cfg.state_dir / "nonstop.db")

    async def identify(session: aiohttp.ClientSession, b: LocalBackendConfig) -> ModelIdentity:
        return CURRENT

    probes: Any = Probes(embedded_stack=lambda e: (None, None), run_version=lambda argv, env: (0, ""),
                         which=lambda name: None, identify=identify, machine=lambda: [RAM32])
    checks = await doctor.run_checks(cfg, {}, probes)
    by = {c.check: c for c in checks}
    assert "eval ollama" in by and "tools 55%" in by["eval ollama"].detail
    assert by["upgrade ollama"].fix.startswith('set model = "qwen3-coder:30b"')
    text = doctor.render_text(cfg, checks)
    assert "warning  upgrade ollama: qwen3-coder:30b" in text
