"""The ``multitaskseg`` command; ``main`` is its entry point."""

from .program import main

__all__ = ["main"]
