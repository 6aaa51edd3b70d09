"""Refuse names Keel would refuse, before anything is generated."""

import re
import sys

SLUG = "{{ cookiecutter.project_slug }}"
PACKAGE = "{{ cookiecutter.package_name }}"

problems = []
# The slug names the service account, the gateway pool and every resource ("<slug>-default").
if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", SLUG) or SLUG.endswith("-"):
    problems.append(f"project_slug {SLUG!r}: lowercase letters, digits and '-', at most 40")
# The package also starts the audit actions ("<package>.order.create").
if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", PACKAGE):
    problems.append(f"package_name {PACKAGE!r}: lowercase letters, digits and '_', at most 40")
for problem in problems:
    print(f"cookiecutter: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
