"""The service's manifest (``keel.toml``) as the test helpers need it: where it is, and the
name of the service account it declares. ``keel apply`` reads and checks the rest."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from keel_client.testing._commands import EmbeddedKeelError

__all__ = ["ENV_MANIFEST", "MANIFEST_NAME", "find_manifest", "service_account_name"]

#: The manifest's file name, looked for in pytest's rootdir.
MANIFEST_NAME = "keel.toml"
#: The environment variable naming a manifest (over the ini option and the rootdir's file).
ENV_MANIFEST = "KEEL_MANIFEST"


def find_manifest(
    rootdir: Path, ini_value: str | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The manifest of a test run: ``KEEL_MANIFEST``, else the ``keel_manifest`` ini option
    (relative to ``rootdir``), else ``keel.toml`` in ``rootdir`` when there is one; None
    without any. A manifest named explicitly must exist."""
    environ = os.environ if environ is None else environ
    for origin, value in ((ENV_MANIFEST, environ.get(ENV_MANIFEST)), ("keel_manifest", ini_value)):
        if value and value.strip():
            path = (rootdir / value.strip()).resolve()
            if not path.is_file():
                raise EmbeddedKeelError(f"{origin} names {path}, which is not a file")
            return path
    default = rootdir / MANIFEST_NAME
    return default.resolve() if default.is_file() else None


def service_account_name(manifest: Path) -> str | None:
    """The ``[service] name`` of a manifest (its service account), or None when it has none.
    A file that is not TOML is refused here in one line; ``keel apply`` checks the rest."""
    try:
        document = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EmbeddedKeelError(f"{manifest}: not a readable TOML manifest ({exc})") from exc
    service = document.get("service")
    name = service.get("name") if isinstance(service, dict) else None
    return name if isinstance(name, str) and name else None
