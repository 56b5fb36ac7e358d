"""Which class serves each kind of local backend (`api` in a [[local]] entry).

To add a kind of server: write a LocalBackend subclass (see local_anthropic.py and
local_openai.py), add it here, and allow its name in config/parse.py.
"""

from __future__ import annotations

import aiohttp

from nonstop.backends.local import LocalBackend
from nonstop.backends.local_anthropic import AnthropicLocalBackend
from nonstop.backends.local_openai import OpenAILocalBackend
from nonstop.config import LocalBackendConfig

KINDS: dict[str, type[LocalBackend]] = {
    "anthropic": AnthropicLocalBackend,
    "openai": OpenAILocalBackend,
}


def make_local_backend(cfg: LocalBackendConfig, session: aiohttp.ClientSession, *, ping_interval: float = 10.0) -> LocalBackend:
    return KINDS[cfg.api](cfg, session, ping_interval=ping_interval)
