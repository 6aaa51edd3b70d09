"""The line of a field in a TOML source: tables, arrays of tables, dotted and quoted keys,
multi-line arrays and strings."""

from __future__ import annotations

from keel.manifest.locate import field_lines, line_of, split_key

SOURCE = '''\
flag_environments = [
  "development",
  "production",
]

[service]
name = "orders"
roles = ["a"]

[flags.new-checkout]
type = "boolean"
description = """
a = 1
"""
owner = "x"

[flags."with.dot"]
tags.first = "y"

[[routes]]
name = "one"

[[routes]]
name = "two"
rate_limits = [{ name = "x", limit = 1 }]
'''


def test_each_key_is_found_at_its_line() -> None:
    lines = field_lines(SOURCE)
    assert lines[("flag_environments",)] == 1
    assert lines[("service",)] == 6
    assert lines[("service", "roles")] == 8
    assert lines[("flags", "new-checkout", "type")] == 11
    assert lines[("flags", "new-checkout", "owner")] == 15
    assert ("flags", "new-checkout", "a") not in lines  # inside a multi-line string
    assert lines[("flags", "with.dot", "tags", "first")] == 18
    assert lines[("routes", 0, "name")] == 21
    assert lines[("routes", 1, "name")] == 24


def test_a_field_inside_a_value_is_found_at_its_key() -> None:
    lines = field_lines(SOURCE)
    assert line_of(lines, ("routes", 1, "rate_limits", 0, "limit")) == 25
    assert line_of(lines, ("flag_environments", 1)) == 1
    assert line_of(lines, ("flags", "new-checkout", "default")) == 10
    assert line_of(lines, ("nowhere",)) is None


def test_keys_split_on_dots_outside_quotes() -> None:
    assert split_key('a."b.c".d') == ["a", "b.c", "d"]
    assert split_key("flags.new-checkout") == ["flags", "new-checkout"]
    assert split_key("a b") is None


def test_tables_a_dotted_name_defines_are_found_where_they_first_appear() -> None:
    lines = field_lines(
        '[service]\nname = "x"\n\n[audit.actions.orders.order.create]\ndescription = "d"\n'
        "\n[flags.a]\ntags.first.second = 1\n"
    )
    assert lines[("audit",)] == 4
    assert lines[("audit", "actions", "orders")] == 4
    assert lines[("audit", "actions", "orders", "order")] == 4
    assert lines[("flags",)] == 7
    assert lines[("flags", "a", "tags")] == 8
    assert lines[("flags", "a", "tags", "first")] == 8
