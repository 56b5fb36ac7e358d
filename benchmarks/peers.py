"""Other gateways, measured in the same rounds as nonstop (`run.py --peers`).

Each is installed from PyPI into its own venv under ~/.cache/nonstop-bench/ (outside the
repository, reused when present) and put in front of the same fake upstream:

  litellm   LiteLLM's proxy (`litellm[proxy]`), measured on two routes:
            /v1/messages with `anthropic/<model>` pointed at the fake upstream (api_base),
            and the /anthropic pass-through (ANTHROPIC_API_BASE = fake upstream).
  spillway  claude-spillway, a quota-aware failover proxy for Claude Code
            (`anthropic.base_url` = fake upstream).

When one cannot be installed or started, the reason is recorded and shown in the results
instead of a number.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import Proc, start, wait_http
from payload import CLAUDE_CODE_HEADERS

CACHE = Path(os.environ.get("NONSTOP_BENCH_CACHE", Path.home() / ".cache" / "nonstop-bench"))
# Pinned: reproducible, and chosen by hand. The newest LiteLLM releases could not be
# installed with the proxy extra from PyPI when this was written (their `[proxy]` extra
# asks for litellm-proxy / litellm-proxy-extras versions that were not published);
# 1.107.0 is the release reported as compromised and is never used.
SPECS = {
    "litellm": "litellm[proxy]==1.106.12",
    "spillway": "claude-spillway==0.9.0",
}


@dataclass
class Peer:
    name: str  # the target name in the results
    label: str
    url: str
    path: str
    proc: Proc
    version: str = ""
    notes: list[str] = field(default_factory=list)


def venv_python(name: str) -> Path:
    return CACHE / name / "bin" / "python"


def install(name: str) -> str:
    """Create/reuse the venv; returns "" when ready, else why not."""
    spec = SPECS[name]
    folder = CACHE / name
    marker = folder / (".installed-" + spec.replace("/", "_"))
    if marker.exists() and venv_python(name).exists():
        return ""
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"{name}-install.log"
    with open(log, "ab") as fh:
        if not venv_python(name).exists():
            r = subprocess.run([sys.executable, "-m", "venv", str(folder)], stdout=fh, stderr=subprocess.STDOUT)
            if r.returncode:
                return f"could not create the venv {folder} (see {log})"
        r = subprocess.run([str(venv_python(name)), "-m", "pip", "install", "-q", spec],
                           stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
    if r.returncode:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"`pip install {spec}` failed: " + " / ".join(tail)[:400]
    marker.write_text(spec + "\n")
    return ""


def _version(name: str, dist: str) -> str:
    r = subprocess.run([str(venv_python(name)), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip()


def start_litellm(upstream: str, port: int, workdir: Path) -> Peer:
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: claude-sonnet-4-5\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-sonnet-4-5\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-ant-api03-BENCHMARK-not-a-real-key\n"
        "  - model_name: claude-haiku-4-5\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-haiku-4-5\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-ant-api03-BENCHMARK-not-a-real-key\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: false\n"
        "  set_verbose: false\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
    )
    env = {
        # Everything stays on this machine: no cost-map download, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "ANTHROPIC_API_BASE": upstream,
        "ANTHROPIC_API_KEY": "sk-ant-api03-BENCHMARK-not-a-real-key",
        "NO_PROXY": "*",
        # Its proxy refuses to start without a master key. Clients must then present it;
        # it is set to the key the load generator sends, so the requests are unchanged.
        "LITELLM_MASTER_KEY": CLAUDE_CODE_HEADERS["x-api-key"],
    }
    exe = CACHE / "litellm" / "bin" / "litellm"
    p = start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                          "--num_workers", "1"], env=env, workdir=workdir)
    url = f"http://127.0.0.1:{port}"
    wait_http(p, url + "/health/liveliness", timeout=180)
    return Peer("litellm", "LiteLLM proxy /v1/messages", url, "/v1/messages?beta=true", p, _version("litellm", "litellm"))


def start_spillway(upstream: str, port: int, workdir: Path) -> Peer:
    cfg = workdir / "spillway.yaml"
    cfg.write_text(
        "listen:\n  host: 127.0.0.1\n"
        f"  port: {port}\n"
        f"anthropic:\n  base_url: {upstream}\n"
        # Its fallback target is never used here; it points at the same fake upstream so
        # that nothing can leave the machine.
        f"ollama:\n  base_url: {upstream}\n  api_key: bench\n"
        "quota:\n  use_usage_endpoint: false\n"
        "direct_models:\n  enabled: false\n  discover: false\n"
    )
    exe = CACHE / "spillway" / "bin" / "claude-spillway"
    p = start("spillway", [str(exe), "serve", "-c", str(cfg), "--log-level", "WARNING"],
              env={"CLAUDE_SPILLWAY_LANG": "en", "XDG_CONFIG_HOME": str(workdir)}, workdir=workdir)
    url = f"http://127.0.0.1:{port}"
    wait_http(p, url + "/_spillway/status", timeout=90)
    return Peer("spillway", "claude-spillway", url, "/v1/messages?beta=true", p, _version("spillway", "claude-spillway"))


STARTERS = {"litellm": start_litellm, "spillway": start_spillway}


def check(peer: Peer, post) -> str:
    """One request each way; "" when the answers look right, else what went wrong."""
    import orjson
    from payload import claude_code_request

    for stream in (False, True):
        body = orjson.dumps(claude_code_request(stream=stream))
        t0 = time.monotonic()
        status, _, data = post(peer.url + peer.path, body, dict(CLAUDE_CODE_HEADERS))
        if status != 200:
            return f"{'stream' if stream else 'non-stream'} request answered HTTP {status}: {data[:300]!r}"
        if stream and b"message_stop" not in data:
            return f"the stream did not end with message_stop: {data[-300:]!r}"
        if not stream and b'"type":"message"' not in data.replace(b" ", b""):
            return f"the reply is not a Messages object: {data[:300]!r}"
        if time.monotonic() - t0 > 20:
            return "a single request took more than 20 s"
    return ""
