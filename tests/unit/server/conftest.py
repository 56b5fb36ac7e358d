"""What the server tests share: small in-process servers, and nonstop's app with a cloud
that records what it is sent."""

from tests.support.inprocess import recording_app, serve

__all__ = ["recording_app", "serve"]
