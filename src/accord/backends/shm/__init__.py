"""The shared-memory backend (one machine)."""

from ._launch import BACKEND

__all__ = ["BACKEND"]
