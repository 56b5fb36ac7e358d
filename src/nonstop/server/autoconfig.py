"""Local backends when none are configured: discovery first, then the embedded server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nonstop.config import LocalBackendConfig

if TYPE_CHECKING:
    from nonstop.server.gateway import Gateway

log = logging.getLogger("nonstop")


async def auto_backends(gw: Gateway, have_configured: bool) -> list[LocalBackendConfig]:
    from nonstop.backends import discovery

    cfg = gw.cfg
    found: list[LocalBackendConfig] = []
    if not have_configured and cfg.discovery.enabled:
        assert gw.local_session is not None
        servers = await discovery.discover(cfg.discovery, gw.local_session)
        gw.discovered = servers
        names: set[str] = set()
        for s in servers:
            name = s.kind if s.kind not in names else f"{s.kind}-{len(names) + 1}"
            names.add(name)
            found.append(discovery.to_backend_config(s, name=name))
            log.warning("found %s", discovery.describe(s))
            for note in s.notes:
                log.warning("  note: %s", note)
        if found:
            log.warning("using %s as the local fallback", ", ".join(f"{b.name} ({b.url})" for b in found))
    mode = cfg.embedded.mode
    if mode == "always" or (mode == "auto" and not found and not have_configured):
        from nonstop.backends.embedded import EmbeddedServer, EmbeddedUnavailable

        server = EmbeddedServer(cfg.embedded, cfg.state_dir, on_event=lambda line: log.warning("embedded: %s", line))
        try:
            backend = await server.start()
        except EmbeddedUnavailable as exc:
            log.warning("no local model available: %s", exc)
            return found
        gw.embedded = server
        log.warning("embedded llama-server ready at %s (model %s)", backend.url, backend.model)
        found.append(backend)
    elif not found and not have_configured:
        log.warning("no local backend: requests the cloud cannot serve will fail; run `nonstop doctor`")
    return found
