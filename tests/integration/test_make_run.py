"""The README's run command, as a user runs it: `make run` on this checkout, with no
configuration. It must come up and answer from the embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.integration.llama import require_llama
from tests.support import procs, rawhttp

pytestmark = pytest.mark.integration


def test_make_run_serves_from_the_embedded_model(tmp_path):
    require_llama()
    port = procs.free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # no user config
        "NONSTOP_STATE_DIR": str(tmp_path / "state"),
        "NONSTOP_ARGS": f"--port {port}",
    }
    env.pop("NONSTOP_CONFIG", None)
    log = open(tmp_path / "make-run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=procs.ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=proc, log=tmp_path / "make-run.log")
        status = json.loads(rawhttp.request("GET", f"http://127.0.0.1:{port}/_nonstop/api/status")[2])
        assert [b["name"] for b in status["local"]] == ["embedded"], status["local"]
        body = {"model": "claude-sonnet-5", "max_tokens": 30, "messages": [{"role": "user", "content": "Say hello."}]}
        # There is no network here: the default cloud cannot be reached, so the embedded
        # model answers.
        code, headers, raw = rawhttp.request("POST", f"http://127.0.0.1:{port}/v1/messages", body,
                                        {"x-api-key": procs.PLANTED_KEY}, timeout=120)
        assert code == 200, raw
        assert headers["x-nonstop-backend"] == "embedded"
        msg = json.loads(raw)
        assert msg["type"] == "message" and msg["content"] and msg["usage"]["input_tokens"] > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    out = (tmp_path / "make-run.log").read_text(errors="replace")
    assert procs.PLANTED_KEY not in out
    assert "Traceback" not in out, out[-3000:]
    time.sleep(0.5)
