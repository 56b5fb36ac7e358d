"""Which llama-server settings read a prompt and write an answer fastest on this machine,
for the bundled SmolLM2-135M the embedded server runs.

    python benchmarks/embedded_settings.py
    python benchmarks/embedded_settings.py --rounds 5 --prompt 2048 --threads 1,2 --ubatch 256,512 --poll 0,50

Runs llama-bench (installed next to llama-server) once per setting per round, the
settings interleaved round by round so that the rest of the machine's load falls on all
of them alike: prompt processing of `--prompt` tokens, and `--gen` tokens written after
a prompt of that length (`-d`), for each thread count, flash attention on and off, each
physical batch size and each polling level (how hard idle threads spin for work). Reports the median tokens/s of the rounds and the machine's
load while they ran. Writes results/<date>-embedded-settings[-label].md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

import harness  # noqa: E402
import report  # noqa: E402

from nonstop.backends.llama_stack import (  # noqa: E402
    INSTALL_HINT,
    find_bundled_model,
    find_llama_server,
    llama_env,
)


def bench(setting: dict[str, Any], prompt: int, gen: int) -> dict[str, float]:
    """One llama-bench run of `setting`: prompt and generation tokens/s."""
    binary = find_llama_server()
    model = find_bundled_model()
    if binary is None or model is None:
        raise SystemExit(f"llama-server or the bundled model is missing: {INSTALL_HINT}")
    argv = [str(binary.parent / "llama-bench"), "-m", str(model), "-r", "1", "-o", "jsonl",
            "-t", str(setting["threads"]), "-fa", setting["fa"], "-ub", str(setting["ubatch"]),
            "--poll", str(setting["poll"])]
    out: dict[str, float] = {}
    for key, extra in (("prompt_tps", ["-p", str(prompt), "-n", "0"]), ("gen_tps", ["-p", "0", "-n", str(gen), "-d", str(prompt)])):
        busy0, t0 = harness.machine_busy_seconds(), time.monotonic()
        done = subprocess.run([*argv, *extra], env=llama_env(binary), capture_output=True, text=True, timeout=1800)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"llama-bench failed: {done.stderr[-1500:]}")
        out[key] = float(lines[-1]["avg_ts"])
        out[key.replace("tps", "busy")] = (harness.machine_busy_seconds() - busy0) / (time.monotonic() - t0)
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    label = f" ({results['label']})" if results["label"] else ""
    lines = [f"# llama-server settings for the bundled model, {results['date']}{label}", "",
             f"{report.machine_line(m, python=False)}, at the end {results['load_at_end']}. Run {results['started']} to "
             f"{results['finished']}.", "",
             f"llama-bench with SmolLM2-135M (Q4_1), {results['rounds']} interleaved rounds: a {results['prompt']:,}-token "
             f"prompt, and {results['gen']} tokens written after a prompt of that length. Median of the rounds. "
             "`python benchmarks/embedded_settings.py` (see its docstring).", ""]
    rows = []
    for r in results["settings"]:
        rows.append([str(r["threads"]), r["fa"], str(r["ubatch"]), str(r["poll"]), report._fmt(r["prompt_tps"]),
                     f"{report._fmt(min(r['prompt_all']))}-{report._fmt(max(r['prompt_all']))}",
                     report._fmt(r["gen_tps"]), f"{report._fmt(min(r['gen_all']))}-{report._fmt(max(r['gen_all']))}",
                     f"{r['busy']:.2f}"])
    lines += report._table(["threads", "flash attention", "ubatch", "poll", "prompt tokens/s", "range", "output tokens/s",
                            "range", "cores busy"], rows)
    lines += ["", "*cores busy*: the whole machine's busy CPU time over the runs' wall time, this benchmark's "
                  "included (2 is every core): how much else was running.", ""]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens (and the depth the answer is written at)")
    p.add_argument("--gen", type=int, default=64, help="answer tokens")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--fa", default="off,on", help="flash attention settings")
    p.add_argument("--ubatch", default="512")
    p.add_argument("--poll", default="50", help="polling levels (0-100)")
    p.add_argument("--label", default="")
    p.add_argument("--out-dir", help="where to write the results (default benchmarks/results)")
    args = p.parse_args()
    settings = [{"threads": t, "fa": fa, "ubatch": ub, "poll": poll}
                for t, fa, ub, poll in itertools.product(_ints(args.threads), args.fa.split(","), _ints(args.ubatch),
                                                         _ints(args.poll))]
    started = dt.datetime.now()
    machine = harness.machine()
    runs: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(settings))}
    for n in range(args.rounds):
        for i, setting in enumerate(settings):
            got = bench(setting, args.prompt, args.gen)
            runs[i].append(got)
            print(f"round {n + 1}: {setting}: prompt {got['prompt_tps']:.0f} t/s, output {got['gen_tps']:.0f} t/s, "
                  f"cores busy {got['prompt_busy']:.2f}", flush=True)
    rows = []
    for i, setting in enumerate(settings):
        got = runs[i]
        rows.append({**setting, "prompt_tps": harness.median([g["prompt_tps"] for g in got]),
                     "gen_tps": harness.median([g["gen_tps"] for g in got]),
                     "prompt_all": [g["prompt_tps"] for g in got], "gen_all": [g["gen_tps"] for g in got],
                     "busy": harness.median([g["prompt_busy"] for g in got])})
    with open("/proc/loadavg") as fh:
        load_end = " ".join(fh.read().split()[:3])
    results = {"date": started.date().isoformat(), "label": args.label, "machine": machine, "rounds": args.rounds,
               "prompt": args.prompt, "gen": args.gen, "settings": rows, "load_at_end": load_end,
               "started": started.strftime("%H:%M"), "finished": dt.datetime.now().strftime("%H:%M")}
    report.write_results(args.out_dir, "embedded-settings", results, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
