"""The secrets tests use the auth tests' tenant administrator."""

from auth.conftest import admin

__all__ = ["admin"]
