"""Shared plumbing only: database, broadcast, errors, ids, logging, metrics, HTTP conventions."""
