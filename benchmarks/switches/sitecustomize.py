"""Benchmark-only switches for a nonstop process, read from its environment at start-up.

A benchmark starts nonstop with this folder on PYTHONPATH; Python imports this module
before nonstop runs, and each switch set in the environment patches nonstop in that
process only (and in the processes it starts, which inherit the environment). nonstop
itself is not changed.

  NONSTOP_BENCH_PROMPT_CACHE=off   local requests keep Claude Code's per-request noise
                                   (the attribution line, `<total_tokens>`): the prompt
                                   cache normalisation of wire/prompt_cache.py is skipped
"""

from __future__ import annotations

import os


def _no_prompt_cache() -> None:
    from nonstop.backends import local

    local.normalize_for_prompt_cache = lambda req: req


if os.environ.get("NONSTOP_BENCH_PROMPT_CACHE") == "off":
    _no_prompt_cache()
