"""The config service's pure rules: change sets, diffs, JSON Schema violations and secret
references."""

from __future__ import annotations

import pytest

from keel.config.service.validation import (
    SecretReference,
    apply_change_set,
    check_json_schema,
    diff_values,
    parse_secret_reference,
    replace_secret_references,
    schema_violations,
    secret_references,
)
from keel.core.errors import ValidationFailed


def test_a_change_set_sets_and_unsets_and_refuses_a_key_in_both() -> None:
    assert apply_change_set({"a": 1, "b": 2}, {"c": 3, "a": 0}, ["b", "absent"]) == {"a": 0, "c": 3}
    with pytest.raises(ValidationFailed, match="both set and unset"):
        apply_change_set({}, {"a": 1}, ["a"])


def test_a_diff_tells_added_removed_and_changed_and_true_is_not_one() -> None:
    diff = diff_values(
        {"a": 1, "b": 1, "same": {"x": [1]}}, {"a": True, "c": 2, "same": {"x": [1]}}
    )
    assert diff.added == {"c": 2}
    assert diff.removed == {"b": 1}
    assert diff.changed == {"a": {"before": 1, "after": True}}
    assert diff.keys() == ["a", "b", "c"]


def test_schema_violations_name_path_and_rule_and_skip_secret_references() -> None:
    schema = check_json_schema(
        {
            "type": "object",
            "properties": {
                "db": {"type": "object", "properties": {"password": {"type": "string"}}},
                "port": {"type": "integer", "minimum": 1},
                "mail": {"type": "string", "format": "email"},
            },
            "additionalProperties": False,
        }
    )
    values = {
        "db": {"password": {"$secret": "apps/db#password"}},
        "port": 0,
        "mail": "not-an-address",
        "extra": "secret-looking-value",
    }
    found = [(v.path, v.rule) for v in schema_violations(schema, values)]
    assert found == [("$", "additionalProperties"), ("$.mail", "format"), ("$.port", "minimum")]
    assert all("secret-looking-value" not in v.message for v in schema_violations(schema, values))


def test_secret_references_are_found_anywhere_and_replaced_when_resolved() -> None:
    values = {
        "db": {"password": {"$secret": "apps/billing/db#password"}},
        "keys": [{"$secret": "apps/keys#signing", "$mount": "kv2"}],
    }
    found = secret_references(values)
    assert found == [
        ("$.db.password", SecretReference("secret", "apps/billing/db", "password")),
        ("$.keys[0]", SecretReference("kv2", "apps/keys", "signing")),
    ]
    assert found[0][1].vault_path == "secret/data/apps/billing/db"
    resolved = replace_secret_references(values, {found[0][1]: "hunter2"})
    assert resolved["db"]["password"] == "hunter2"
    assert resolved["keys"] == values["keys"]


@pytest.mark.parametrize(
    "reference",
    [
        {"$secret": "no-field"},
        {"$secret": "a#b#c"},
        {"$secret": "../etc#x"},
        {"$secret": 7},
        {"$secret": "a#b", "other": 1},
        {"$secret": "a#b", "$mount": "bad/mount"},
    ],
)
def test_a_malformed_secret_reference_is_refused(reference: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed, match="secret reference"):
        parse_secret_reference(reference)
