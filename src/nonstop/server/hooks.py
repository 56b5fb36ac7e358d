"""Switch notices to the outside: a command and/or a webhook, both optional."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import orjson

from nonstop.config import HooksConfig

log = logging.getLogger("nonstop")

# How long a hook command or webhook may take; a command still running then is killed.
HOOK_TIMEOUT = 10.0


def configured(cfg: HooksConfig) -> bool:
    """Whether there is any hook to run (without one, a switch makes no task for them)."""
    return bool(cfg.command or cfg.webhook)


async def notify(cfg: HooksConfig, event: dict[str, Any]) -> None:
    payload = orjson.dumps(event)
    if cfg.command:
        try:
            env = dict(os.environ, NONSTOP_EVENT=payload.decode(), NONSTOP_MESSAGE=str(event.get("message", "")))
            proc = await asyncio.create_subprocess_shell(
                cfg.command, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(proc.communicate(payload), timeout=HOOK_TIMEOUT)
            except TimeoutError:
                proc.kill()  # a hook that hangs must not pile up with every switch
                await proc.wait()
                raise
        except (OSError, TimeoutError) as exc:
            log.warning("hook command failed: %s", type(exc).__name__)
    if cfg.webhook:
        try:
            async with aiohttp.ClientSession() as s, s.post(
                cfg.webhook, data=payload, headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=HOOK_TIMEOUT),
            ) as r:
                if r.status >= 400:
                    log.warning("hook webhook answered HTTP %d", r.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("hook webhook failed: %s", type(exc).__name__)
