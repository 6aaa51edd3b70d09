"""Alembic environment: always given a live connection by :mod:`keel.migrations`."""

from __future__ import annotations

from alembic import context

from keel.migrations import load_all_models

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `keel migrate`, which provides the connection")

context.configure(
    connection=connection,
    target_metadata=load_all_models(),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
