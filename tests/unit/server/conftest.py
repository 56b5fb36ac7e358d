"""What the server tests share: small in-process servers."""

from tests.support.inprocess import serve

__all__ = ["serve"]
