"""`nonstop eval` against the real llama-server and the bundled model, SmolLM2-135M.

That model is far too small for Claude Code, and its chat template does not render tools
at all, so it scores low: the tests check that the eval measures every category, says
so plainly, and notices when the model file behind a backend is swapped. They never
expect a good score from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nonstop.backends.llama_stack import find_bundled_model
from nonstop.quality.results import history, latest_scores
from tests.integration.llama import require_llama, start_llama_server
from tests.support import rawhttp
from tests.support.procs import ROOT, free_port

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 900


def nonstop(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    return subprocess.run([sys.executable, "-m", "nonstop", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)


def write_config(folder: Path, url: str = "", *, window: int = 8192) -> Path:
    text = f'listen = "127.0.0.1:{free_port()}"\nstate_dir = "{folder / "state"}"\n[discovery]\nenabled = false\n'
    if url:
        text += (f'[embedded]\nmode = "never"\n[[local]]\nname = "llama"\nurl = "{url}"\n'
                 f"context_window = {window}\nmax_output_tokens = 1024\n")
    else:
        text += f'[embedded]\nmode = "auto"\ncontext_window = {window}\nthreads = 1\nparallel = 1\n'
    path = folder / "config.toml"
    path.write_text(text)
    return path


def renamed_copy(folder: Path) -> Path:
    """The bundled model with one letter of its name in the GGUF metadata changed: the
    same weights, another file, as after an update of the model."""
    src = find_bundled_model()
    assert src is not None
    dst = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(src, dst)
    data = bytearray(dst.read_bytes()[: 1 << 20])
    at = data.index(b"Smollm2 135M")
    with open(dst, "r+b") as fh:
        fh.seek(at)
        fh.write(b"Smollm3")
    return dst


def test_the_full_suite_on_the_real_model_and_a_swapped_model_file(tmp_path: Path) -> None:
    require_llama()
    with start_llama_server(ctx=8192, parallel=1) as llama:
        config = write_config(tmp_path, llama.url)
        run = nonstop(config, "eval", "--json")
        assert run.returncode == 0, run.stderr[-3000:]
        (result,) = json.loads(run.stdout)["backends"]
        scores = result["scores"]
        # Every category measured, the long context included, with the speed at its size.
        assert all(v is not None for v in scores["categories"].values()), scores
        assert scores["first_token_tokens"] > 0.5 * 8192 and scores["tokens_per_s"] > 0
        assert len(result["tasks"]) == 18
        # The bundled model is tiny and its template drops the tools: it scores low, and
        # the eval does not pretend otherwise.
        assert scores["overall"] < 0.5 and scores["categories"]["tool_choice"] <= 0.25
        assert result["model"]["quantisation"] == "Q4_1" and result["model"]["tools"] is False
        first_key = result["model"]["digest"]
        assert first_key.startswith("file-sha256:")

        status = nonstop(config, "status")
        assert "eval: SmolLM2-135M-Instruct q4_1, 8k: tools" in status.stdout and "stale" not in status.stdout

    swapped = renamed_copy(tmp_path)
    with start_llama_server(ctx=8192, parallel=1, extra_args=["-m", str(swapped)]) as llama:
        config = write_config(tmp_path, llama.url)
        status = nonstop(config, "status")
        assert "stale: the model changed since the eval" in status.stdout, status.stdout
        doctor = nonstop(config, "doctor")
        assert "warning  eval llama:" in doctor.stdout and "run `nonstop eval --backend llama`" in doctor.stdout

        rerun = nonstop(config, "eval", "--quick")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "scores low" in rerun.stdout
        runs = history(tmp_path / "state" / "nonstop.db", "llama")
        assert [r.quick for r in runs] == [True, False] and runs[0].model.key != first_key
        assert latest_scores(tmp_path / "state" / "nonstop.db")["llama"].model.key == runs[0].model.key
        shown = nonstop(config, "eval", "--history")
        assert "model changed)" in shown.stdout.splitlines()[1]
        status = nonstop(config, "status")
        assert "stale" not in status.stdout


def test_with_nothing_configured_it_starts_the_embedded_server_and_stops_it(tmp_path: Path) -> None:
    require_llama()
    config = write_config(tmp_path)
    run = nonstop(config, "eval", "--quick")
    assert run.returncode == 0, run.stderr[-3000:]
    found = re.search(r"nonstop: evaluating embedded at (http://127\.0\.0\.1:\d+)", run.stderr)
    assert found, run.stderr[-3000:]
    assert "embedded" in run.stdout.splitlines()[0]
    with pytest.raises(OSError):  # the server it started for the run is gone
        rawhttp.request("GET", found.group(1) + "/health", timeout=2)
    models = nonstop(config, "models")
    assert "embedded  model file at embedded (starts when needed): SmolLM2-135M-Instruct" in models.stdout
    assert "eval: SmolLM2-135M-Instruct q4_1, 8k: tools" in models.stdout
