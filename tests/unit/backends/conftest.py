"""What the backend tests share: small in-process servers, and the bundled model file."""

from tests.support.inprocess import serve, smollm2

__all__ = ["serve", "smollm2"]
