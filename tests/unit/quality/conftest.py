from tests.support.inprocess import serve

__all__ = ["serve"]
