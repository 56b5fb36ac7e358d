"""The paths the config gives for the embedded server and its model (llama_stack's finders)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("given", ["~nosuchuser-here/m.gguf", "/" + "a" * 300 + "/m.gguf", "relative/none"])
def test_a_configured_path_that_cannot_be_looked_at_is_found_nowhere(given: str) -> None:
    """An unknown user's `~` (pathlib raises RuntimeError) or a name too long (OSError) is a
    path where nothing is, not a crash of `serve`, `doctor` or `status`."""
    from nonstop.backends.llama_stack import find_bundled_model, find_llama_server

    assert find_bundled_model(given) is None
    assert find_llama_server(given) is None
