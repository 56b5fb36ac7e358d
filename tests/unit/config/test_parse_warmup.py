"""The [warmup] table: its defaults, and each wrong value named with its fix."""

from __future__ import annotations

import pytest

from nonstop.config import ConfigError, parse_config
from nonstop.config.model import WarmupConfig


def test_defaults_warm_at_80_percent_and_keep_ollama_for_15_minutes() -> None:
    w = parse_config({}).warmup
    assert w == WarmupConfig(enabled=True, at_utilization=0.8, keep_alive=900.0, touch_every=20.0)


def test_each_key_is_read() -> None:
    w = parse_config({"warmup": {"enabled": False, "at_utilization": 0.7, "keep_alive": 600, "touch_every": 5}}).warmup
    assert w == WarmupConfig(enabled=False, at_utilization=0.7, keep_alive=600.0, touch_every=5.0)


@pytest.mark.parametrize(("table", "message"), [
    ({"at_utilization": 0}, "warmup.at_utilization: 0.0 is not a utilization; use a fraction such as 0.8"),
    ({"at_utilization": 80}, "warmup.at_utilization: 80.0 is not a utilization"),
    ({"keep_alive": 30}, "warmup.keep_alive: 30 seconds is too short to keep a model loaded; use 60 or more"),
    ({"touch_every": 0.5}, "warmup.touch_every: 0.5 seconds is too often; use 1 or more"),
    ({"keep_alive": "15m"}, "warmup.keep_alive: expected a number, got '15m'"),
    ({"warm_at": 0.8}, "warmup.warm_at: unknown key; the keys here are: at_utilization, enabled, keep_alive, touch_every"),
])
def test_wrong_values_name_the_key_and_the_fix(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"warmup": table})
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems
