"""Alembic environment: always given a live connection by :mod:`keel.migrations`."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context

from keel.core.schema import load_all_models

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `keel migrate`, which provides the connection")


def render_item(type_: str, obj: object, autogen_context: Any) -> str | Literal[False]:
    """Render Keel's own column types as imports from keel.core.db, not module paths."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        autogen_context.imports.add("from keel.core.db import UTCDateTime")
        return "UTCDateTime()"
    return False


context.configure(
    connection=connection,
    render_item=render_item,
    target_metadata=load_all_models(),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
