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
    # Backends whose window is a guess (Ollama's stock one): the server's reading replaces it.
    guessed_windows: set[str] = field(default_factory=set)


async def auto_backends(cfg: Config, session: aiohttp.ClientSession, *, have_configured: bool,
                        wait: bool = True) -> AutoBackends:
    """The backends found, or the embedded one. With `wait` False the embedded server is
    only prepared: the caller starts it (the gateway serves the cloud while it loads)."""
    out = AutoBackends()
    if not have_configured and cfg.discovery.enabled:
        out.discovered = await discovery.discover(cfg.discovery, session)
        names: set[str] = set()
        for s in out.discovered:
            log.info("found %s", discovery.describe(s))
            for note in s.notes:
                log.warning("  note: %s", note)
            if s.kind != "llamacpp" and not s.model:  # llama-server serves its one model whatever the name
                # A request names its model there: with none to name, nothing local would
                # answer (an Ollama with nothing pulled, or a web app that answers like one).
                log.warning("  not used: it has no model to serve")
                continue
            name = s.kind if s.kind not in names else f"{s.kind}-{len(names) + 1}"
            names.add(name)
            out.backends.append(discovery.to_backend_config(s, name=name))
            if s.window_guessed:
                out.guessed_windows.add(name)
        if out.backends:
            log.info("using %s as the local fallback", ", ".join(f"{b.name} ({b.url})" for b in out.backends))
    mode = cfg.embedded.mode
    if mode == "always" or (mode == "auto" and not out.backends and not have_configured):
        from nonstop.backends.embedded import EmbeddedUnavailable

        server = embedded_server(cfg)
        try:
            backend = server.prepare()
            if wait:
                await server.start()
        except EmbeddedUnavailable as exc:
            log.warning("no local model available: %s", exc)
            return out
        out.embedded = server
        out.backends.append(backend)
    elif not out.backends and not have_configured:
        log.warning("no local backend: requests the cloud cannot serve will fail; run `nonstop doctor`")
    return out


def embedded_server(cfg: Config) -> Any:
    """The embedded llama-server (backends/embedded.py), not yet started; its lines go to
    nonstop's log."""
    from nonstop.backends.embedded import EmbeddedServer

    return EmbeddedServer(cfg.embedded, cfg.state_dir, on_event=lambda line: log.info("embedded: %s", line))
