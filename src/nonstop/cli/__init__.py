"""The `nonstop` command: one module per command, `main` parses and dispatches.

Kept import-light: `nonstop statusline` runs on every refresh of Claude Code's status
bar, so importing this package loads only `main`, which loads nothing heavy until a
command needs it.
"""

from nonstop.cli.main import main

__all__ = ["main"]
