"""nonstop: keeps AI coding sessions running when the cloud model's quota runs out."""

__version__ = "0.1.0"
__all__ = ["__version__"]
