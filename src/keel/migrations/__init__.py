"""One Alembic history for the whole platform: the scripts in ``versions/`` and ``env.py``.

The code that runs it lives in :mod:`keel.core.schema` (start-up, ``keel migrate`` and
``keel doctor`` use it from below the services); its names are re-exported here.
"""

from keel.core.schema import (
    HEAD_REVISION,
    MIGRATIONS_DIR,
    MODEL_MODULES,
    SchemaOutOfDate,
    alembic_config,
    create_fresh,
    current_revision,
    ensure_schema_current,
    head_revision,
    is_known_revision,
    load_all_models,
    script_head_revision,
    upgrade,
)

__all__ = [
    "HEAD_REVISION",
    "MIGRATIONS_DIR",
    "MODEL_MODULES",
    "SchemaOutOfDate",
    "alembic_config",
    "create_fresh",
    "current_revision",
    "ensure_schema_current",
    "head_revision",
    "is_known_revision",
    "load_all_models",
    "script_head_revision",
    "upgrade",
]
