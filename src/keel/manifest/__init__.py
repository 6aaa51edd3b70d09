"""``keel apply``: provisioning as code. A service's ``keel.toml`` names the Keel resources it
needs; :func:`~keel.manifest.plan.plan_changes` compares them with what Keel holds and
:func:`~keel.manifest.plan.apply_changes` makes Keel match, through each service's
``service`` layer, in one unit of work.

- :mod:`.locate`: the line of a field in the TOML source (``tomllib`` gives none);
- :mod:`.model`: the manifest's pydantic models (unknown keys refused);
- :mod:`.load`: read, parse and check a manifest; every problem as ``file:line: field: message``;
- :mod:`.plan`: a change per resource, the diff's lines, applying them;
- :mod:`.kinds`: one module per resource kind (read what Keel holds, compare, write);
- :mod:`.cli`: the ``keel apply`` command.

See ``docs/apply.md``.
"""
