"""Path policies, as Vault writes them: path patterns with capabilities.

A policy is Vault's HCL or its JSON form::

    path "secret/data/apps/billing/*" { capabilities = ["read", "list"] }
    path "secret/data/apps/billing/root" { capabilities = ["deny"] }

A pattern is a literal path, may end with ``*`` (any suffix) and may use ``+`` for exactly one
path segment. Nothing is allowed unless a rule grants it; ``deny`` on a matching rule wins
over every grant, in any policy. A principal holds the policies its roles name by permission
(``secrets:policy:<name>``); a principal holding ``secrets:root`` (``secrets:*``, ``*``) may
do everything in its tenant. Policies belong to a tenant like everything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.cache import SharedCache, invalidate_after_commit
from keel.core.errors import BadRequest, NotFound
from keel.core.tenancy import bind_tenant
from keel.secrets.models import MAX_POLICY_BYTES, SecretPolicy
from keel_client.auth import Principal

CAPABILITIES = frozenset({"create", "read", "update", "patch", "delete", "list", "deny", "sudo"})
ROOT_PERMISSION = "secrets:root"
POLICY_PERMISSION = "secrets:policy:"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Rule:
    pattern: str
    capabilities: frozenset[str]

    def matches(self, path: str) -> bool:
        return _compiled(self.pattern).fullmatch(path) is not None


def parse_policy(text: str) -> list[Rule]:
    """The rules of a policy in HCL or JSON; a clear error for anything else."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise BadRequest(f"a policy is at most {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(text)
    except ValueError:
        import hcl2  # here, not at start: 12 MB with its parser, for writing a policy in HCL

        try:
            document = hcl2.loads(text)
        except Exception as error:
            raise BadRequest(f"failed to parse policy: {str(error).splitlines()[0]}") from None
    return _rules(document)


def _rules(document: Any) -> list[Rule]:
    if not isinstance(document, dict) or set(document) - {"path"}:
        raise BadRequest('a policy has only "path" blocks')
    blocks = document.get("path") or {}
    if isinstance(blocks, dict):
        blocks = [blocks]
    rules = []
    for block in blocks:
        if not isinstance(block, dict):
            raise BadRequest('a "path" block names a path and its capabilities')
        for pattern, body in block.items():
            pattern = _unquote(pattern)
            if not isinstance(body, dict) or "capabilities" not in body:
                raise BadRequest(f"path {pattern!r} has no capabilities")
            capabilities = body["capabilities"]
            if not isinstance(capabilities, list):
                raise BadRequest(f"the capabilities of {pattern!r} are a list")
            named = {_unquote(c) for c in capabilities if isinstance(c, str)}
            unknown = named - CAPABILITIES
            if unknown or len(named) != len(capabilities):
                raise BadRequest(f"unknown capabilities {sorted(map(str, unknown))} on {pattern!r}")
            if not pattern or "*" in pattern[:-1]:
                raise BadRequest(f"invalid path {pattern!r}: '*' may only end a path")
            rules.append(Rule(pattern, frozenset(named)))
    return rules


def _unquote(value: Any) -> str:
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        glob = pattern[:-1] if pattern.endswith("*") else pattern
        body = "[^/]+".join(re.escape(part) for part in glob.split("+"))
        compiled = re.compile(body + (".*" if pattern.endswith("*") else ""), re.DOTALL)
        if len(_PATTERNS) < 10_000:
            _PATTERNS[pattern] = compiled
    return compiled


def allowed(rules: Iterable[Rule], path: str, capability: str) -> bool:
    """Deny by default; a matching ``deny`` wins over every grant."""
    granted = False
    for rule in rules:
        if rule.matches(path):
            if "deny" in rule.capabilities:
                return False
            granted = granted or capability in rule.capabilities
    return granted


def held_policy_names(principal: Principal) -> list[str]:
    return held_policy_names_of(principal.permissions)


def held_policy_names_of(permissions: Iterable[str]) -> list[str]:
    """The policies ``permissions`` name (``secrets:policy:<name>``, no wildcard)."""
    return sorted(
        permission[len(POLICY_PERMISSION) :]
        for permission in permissions
        if permission.startswith(POLICY_PERMISSION) and "*" not in permission
    )


#: A policy's parsed rules by (tenant id, name); an unknown name holds no rules. Checked on
#: every secrets call, changed rarely: see :mod:`keel.core.cache`.
POLICY_RULES = SharedCache[tuple[str, str], tuple[Rule, ...]]("secrets.policy_rules", ttl=2.0)


async def rules_of(session: AsyncSession, tenant_id: str, names: list[str]) -> list[Rule]:
    found: dict[str, tuple[Rule, ...]] = {}
    for name in names:
        cached = POLICY_RULES.get((tenant_id, name))
        if cached is not None:
            found[name] = cached
    missing = [name for name in names if name not in found]
    if missing:
        stamp = POLICY_RULES.stamp()
        bind_tenant(session, tenant_id)
        stored = await session.execute(
            select(SecretPolicy.name, SecretPolicy.rules).where(SecretPolicy.name.in_(missing))
        )
        loaded = {
            name: tuple(Rule(pattern, frozenset(capabilities)) for pattern, capabilities in rules)
            for name, rules in stored
        }
        for name in missing:
            found[name] = loaded.get(name, ())
            POLICY_RULES.put((tenant_id, name), found[name], stamp)
    return [rule for name in names for rule in found[name]]


def forget_policy(session: AsyncSession, tenant_id: str, name: str) -> None:
    """Call where policy ``name`` is written or deleted, in that unit of work."""
    invalidate_after_commit(session, POLICY_RULES, (tenant_id, name))


def stored_rules(rules: list[Rule]) -> list[Any]:
    return [[rule.pattern, sorted(rule.capabilities)] for rule in rules]


def check_policy_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadRequest("a policy name is lowercase letters, digits, '.', '-' and '_'")
    return name


# -- stored policies ----------------------------------------------------------------------


async def policy_names(session: AsyncSession, tenant_id: str) -> list[str]:
    """The names of the tenant's policies, sorted."""
    bind_tenant(session, tenant_id)
    return sorted(await session.scalars(select(SecretPolicy.name)))


async def read_policy(session: AsyncSession, tenant_id: str, name: str) -> SecretPolicy:
    """The tenant's policy ``name`` (404 when there is none)."""
    bind_tenant(session, tenant_id)
    stored = await session.scalar(select(SecretPolicy).where(SecretPolicy.name == name))
    if stored is None:
        raise NotFound()
    return stored


async def write_policy(
    session: AsyncSession, tenant_id: str, name: str, text: str, rules: list[Rule]
) -> SecretPolicy:
    """Create or replace policy ``name``: ``text`` as written, ``rules`` parsed from it
    (:func:`parse_policy`, before the caller's capability was checked)."""
    bind_tenant(session, tenant_id)
    stored = await session.scalar(select(SecretPolicy).where(SecretPolicy.name == name))
    if stored is None:
        stored = SecretPolicy(tenant_id=tenant_id, name=name)
        session.add(stored)
    stored.text = text
    stored.rules = stored_rules(rules)
    forget_policy(session, tenant_id, name)
    return stored


async def delete_policy(session: AsyncSession, tenant_id: str, name: str) -> None:
    """Remove policy ``name``, if any: its holders lose its grants."""
    bind_tenant(session, tenant_id)
    await session.execute(delete(SecretPolicy).where(SecretPolicy.name == name))
    forget_policy(session, tenant_id, name)
