"""``SecretRef``: a settings field whose value is a secret in Keel.

Pure: no pydantic-settings here, so a module declaring settings imports this without the
``settings`` extra; the source that resolves the references is in ``_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

from keel_client.secrets._client import DEFAULT_MOUNT, check_mount, check_path

__all__ = ["SecretRef", "SecretReference", "parse_reference", "reference_of"]


@dataclass(frozen=True, slots=True)
class SecretReference:
    """Where a field's value lives: ``mount``/``path``, and one ``key`` of it (or all of it)."""

    mount: str
    path: str
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.mount}/{self.path}"
        return f"{where}#{self.key}" if self.key is not None else where


def parse_reference(reference: str, *, mount: str = DEFAULT_MOUNT) -> SecretReference:
    """``"apps/billing/db#password"`` → path ``apps/billing/db``, key ``password``.

    Without ``#key`` the reference is the whole secret (a dict). ``ValueError`` for an empty
    path or key, or a path with empty, ``.`` or ``..`` segments.
    """
    path, separator, key = reference.partition("#")
    if separator and not key:
        raise ValueError(f"secret reference {reference!r} has an empty key after '#'")
    return SecretReference(
        mount=check_mount(mount), path=check_path(path), key=key if separator else None
    )


def SecretRef(reference: str, *, mount: str = DEFAULT_MOUNT, description: str | None = None) -> Any:
    """Declare a settings field resolved from Keel when the settings are built.

    ``reference`` is ``"<path>#<key>"`` for one value, ``"<path>"`` for the whole secret, on
    ``mount`` (``secret`` unless told). The field has no default: a settings class without
    :class:`KeelSecretsSettingsSource` among its sources fails as for any missing field,
    rather than starting with a placeholder.

    Example::

        class Settings(BaseSettings):
            db_password: SecretStr = SecretRef("apps/billing/db#password")
            stripe: dict[str, str] = SecretRef("apps/billing/stripe")
    """
    field: FieldInfo = Field(description=description)
    field.metadata.append(parse_reference(reference, mount=mount))
    return field


def reference_of(field: FieldInfo) -> SecretReference | None:
    """The reference a field was declared with, if it was declared with ``SecretRef``."""
    for item in field.metadata:
        if isinstance(item, SecretReference):
            return item
    return None
