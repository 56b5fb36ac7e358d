"""Ctrl-C for a command running in a child process, as the tests of several commands need it."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pytest

# A background job of a script or a CI runner starts with SIGINT ignored: prefix a command
# with this to start it that way.
SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


def interrupt(p: subprocess.Popen[Any], what: str) -> tuple[int, float]:
    """Send SIGINT, as Ctrl-C does; return the exit code and the seconds it took to end."""
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        code = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail(f"{what} did not end within 30s of Ctrl-C")
    return code, time.monotonic() - sent
