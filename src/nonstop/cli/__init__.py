"""The `nonstop` command: one module per command; `commands` holds the argument parser and
the dispatch, and `main` is the console script's entry point.

Kept import-light: `nonstop statusline` runs on every refresh of Claude Code's status
bar, so importing this package loads only `commands`, which loads nothing heavy until a
command needs it.
"""

from nonstop.cli.commands import main

__all__ = ["main"]
