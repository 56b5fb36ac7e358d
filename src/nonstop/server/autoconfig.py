"""Local backends when none are configured: discovery first, then the embedded server."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nonstop.backends import discovery
from nonstop.config import Config, LocalBackendConfig

log = logging.getLogger("nonstop")


@dataclass
class AutoBackends:
    backends: list[LocalBackendConfig] = field(default_factory=list)
    discovered: list[discovery.DiscoveredServer] = field(default_factory=list)
    embedded: Any = None  # the EmbeddedServer, when one was started


async def auto_backends(cfg: Config, session: aiohttp.ClientSession, *, have_configured: bool) -> AutoBackends:
    out = AutoBackends()
    if not have_configured and cfg.discovery.enabled:
        out.discovered = await discovery.discover(cfg.discovery, session)
        names: set[str] = set()
        for s in out.discovered:
            name = s.kind if s.kind not in names else f"{s.kind}-{len(names) + 1}"
            names.add(name)
            out.backends.append(discovery.to_backend_config(s, name=name))
            log.info("found %s", discovery.describe(s))
            for note in s.notes:
                log.warning("  note: %s", note)
        if out.backends:
            log.info("using %s as the local fallback", ", ".join(f"{b.name} ({b.url})" for b in out.backends))
    mode = cfg.embedded.mode
    if mode == "always" or (mode == "auto" and not out.backends and not have_configured):
        from nonstop.backends.embedded import EmbeddedServer, EmbeddedUnavailable

        server = EmbeddedServer(cfg.embedded, cfg.state_dir, on_event=lambda line: log.info("embedded: %s", line))
        try:
            backend = await server.start()
        except EmbeddedUnavailable as exc:
            log.warning("no local model available: %s", exc)
            return out
        out.embedded = server
        log.info("embedded llama-server ready at %s (model %s)", backend.url, backend.model)
        out.backends.append(backend)
    elif not out.backends and not have_configured:
        log.warning("no local backend: requests the cloud cannot serve will fail; run `nonstop doctor`")
    return out
