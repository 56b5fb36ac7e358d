"""What the store tests share: a private redis-server for the fleet's shared state."""

from tests.support.redis_server import redis_server

__all__ = ["redis_server"]
