"""`nonstop config show`: every key in effect, as TOML that loads back the same, with no
secret in it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

from nonstop.cli import config_show
from nonstop.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]

FULL = """
listen = "127.0.0.1:9911"
state_dir = "{state}"
max_body_bytes = 1048576
ping_interval = 2.5

[cloud]
url = "https://api.example.test"
error_cooldown = 7.0

[[local]]
name = "big"
url = "http://127.0.0.1:8080"
api = "openai"
model = "qwen3-coder"
context_window = 65536

[[local]]
url = "http://[::1]:8081"
context_window = 8192

[routes]
"claude-haiku-*" = "local2"
"*" = ["big", "local2"]

[routing]
conserve = ["background"]
high_water = 0.8

[routing.background]
cloud = "fallback"
backends = ["local2"]

[routing.main]
prefer = "best"

[discovery]
ports = [9000]

[embedded]
mode = "never"
extra_args = ["--n-gpu-layers", "99"]

[shadow]
sample = 0.05
backend = "big"

[accounts]
"key:3f2a9c1e0b7d" = "ann (team key)"
"""

SECRETS = """
token = "top-level-secret-token-123"

[[local]]
name = "vllm"
url = "http://user:local-password-456@127.0.0.1:8000"
api_key = "local-api-key-789"

[shared]
redis_url = "redis://:redis-password-abc@redis.internal:6379/0"
account_salt = "salt-secret-def"

[hooks]
command = "curl -H 'Authorization: Bearer hook-bearer-ghi123456' https://x.test"
webhook = "https://hooks.example.test/notify?token=webhook-token-jkl"

[[users]]
name = "ann"
token = "ann-user-token-mno-0123"

[embedded]
extra_args = ["--hf-token", "hf-token-pqr-4567", "--alias", "sk-ant-api03-stuv-in-args-890"]
"""
PLANTED = ["hf-token-pqr-4567", "sk-ant-api03-stuv-in-args-890", "top-level-secret-token-123", "local-password-456", "local-api-key-789", "redis-password-abc",
           "salt-secret-def", "hook-bearer-ghi123456", "webhook-token-jkl", "ann-user-token-mno-0123"]


def test_what_it_shows_loads_back_as_the_same_configuration(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FULL.format(state=tmp_path / "state"))
    cfg = load_config(path)
    shown = config_show.render(cfg, env={})
    again = parse_config(tomllib.loads(shown), source=cfg.source)
    assert again == cfg
    assert shown.startswith(f"# nonstop's configuration: {path}\n")
    assert "[routing.background]" in shown and "[routing.main]" in shown


def test_the_defaults_load_back_too_and_say_where_local_models_come_from() -> None:
    cfg = parse_config({})
    shown = config_show.render(cfg, env={})
    assert parse_config(tomllib.loads(shown)) == dataclasses.replace(cfg)
    assert "no config file, the defaults" in shown
    assert "# No [[local]] backend" in shown


def test_no_secret_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SECRETS)
    cfg = load_config(path)
    text = config_show.render(cfg, env={})
    js = config_show.as_json(cfg).decode()
    for secret in PLANTED:
        assert secret not in text and secret not in js, secret
    doc = tomllib.loads(text)
    assert doc["token"] == "<hidden>"
    assert doc["local"][0]["api_key"] == "<hidden>"
    assert doc["local"][0]["url"] == "http://user:<hidden>@127.0.0.1:8000"
    assert doc["shared"]["redis_url"] == "redis://:<hidden>@redis.internal:6379/0"
    assert doc["shared"]["account_salt"] == "<hidden>"
    assert doc["hooks"]["webhook"] == "https://hooks.example.test/notify?<hidden>"
    assert doc["users"] == [{"name": "ann", "token": "<hidden>"}]
    assert "curl" in doc["hooks"]["command"]
    # keys nonstop does not know to hold one: an argument after a secret's flag, a key's shape
    assert doc["embedded"]["extra_args"][:3] == ["--hf-token", "<hidden>", "--alias"]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://localhost:6379", "redis://localhost:6379"),
    ("redis://user@host", "redis://<hidden>@host"),
    ("redis://u:p@[::1]:6380/2", "redis://u:<hidden>@[::1]:6380/2"),
    ("http://h:99999/x?a=b@c", "<hidden>"),  # not a URL the parser takes: nothing of it shows
])
def test_urls_keep_all_but_their_secrets(url: str, shown: str) -> None:
    assert config_show.hidden_url(url) == shown


def test_an_empty_secret_is_shown_empty() -> None:
    doc = tomllib.loads(config_show.render(parse_config({}), env={}))
    assert doc["token"] == "" and doc["shared"]["account_salt"] == ""


def test_where_the_environment_set_a_value_it_says_so(tmp_path: Path) -> None:
    cfg = dataclasses.replace(parse_config({}), token="from-env-token-000", state_dir=tmp_path)
    text = config_show.render(cfg, env={"NONSTOP_TOKEN": "from-env-token-000", "NONSTOP_STATE_DIR": str(tmp_path)})
    assert "# token: from NONSTOP_TOKEN" in text and "# state_dir: from NONSTOP_STATE_DIR" in text
    assert "from-env-token-000" not in text


def _run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "NONSTOP_"))}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "nonstop", "config", "show", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def test_the_command(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SECRETS)
    done = _run(str(path), "--json", env_extra={"XDG_STATE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["source"] == str(path) and doc["config"]["token"] == "<hidden>"
    assert not any(s in done.stdout for s in PLANTED)
    done = _run("--config", str(path))
    assert done.returncode == 0 and 'name = "vllm"' in done.stdout
    path.write_text('listen = "nowhere"\n[cloud]\nurl = 5\n')
    done = _run(str(path))
    assert done.returncode == 1 and done.stdout == ""
    assert "listen" in done.stderr and "cloud.url" in done.stderr
    done = _run(str(tmp_path / "missing.toml"))
    assert done.returncode == 1 and "no such file" in done.stderr
