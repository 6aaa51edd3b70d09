"""Keel: central services for a fleet of Python web services."""

from keel._version import __version__

__all__ = ["__version__"]
