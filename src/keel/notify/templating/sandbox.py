"""Jinja's immutable sandbox, hardened against templates that try to exhaust the process.

Templates are written by tenants and rendered up to 100,000 times a batch, so beyond the
sandbox's attribute rules (no ``__class__``, no mutation of lists and dicts):

- CPU: every loop iteration spends one step of a budget and every call ten
  (:data:`MAX_STEPS` per part); ``range`` keeps the sandbox's ``MAX_RANGE``; integer powers
  and products past :data:`MAX_INT_BITS` are refused.
- Memory: a part's output stops at :data:`MAX_RENDERED_BYTES`; so does every string the
  template builds along the way (captured blocks, macros, ``~``, ``+``, ``*``, ``%``,
  ``format``, ``center``, ``indent``, ``replace``, ``join``), and every value printed or
  filtered is sized before it is turned into text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import wraps
from itertools import chain
from types import BuiltinMethodType
from typing import Any, TypeVar

from jinja2 import FunctionLoader, StrictUndefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, object_type_repr, select_autoescape
from jinja2.visitor import NodeTransformer

from keel.notify.templating.content import Library

MAX_RENDERED_BYTES = 1024 * 1024
MAX_STEPS = 1_000_000
# A call (a macro especially) costs several loop iterations of CPU.
CALL_STEPS = 10
MAX_INT_BITS = 65_536
# A format width or precision past this is refused before Python allocates the padding.
MAX_FORMAT_WIDTH = 10_000
MAX_SEQUENCE_ITEMS = 10_000
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_FIELD = re.compile(r"\{[^{}]*:([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")


class _Budget:
    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = MAX_STEPS


_budget: ContextVar[_Budget | None] = ContextVar("keel_notify_template_budget", default=None)
_compilations = 0


def template_compilations() -> int:
    """How many template sources this process has compiled (a cache miss costs one)."""
    return _compilations


def _spend(steps: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.steps -= steps
        if budget.steps < 0:
            raise SecurityError(f"the template exceeded {MAX_STEPS} loop steps and calls")


def _approximate_size(value: Any, limit: int = MAX_RENDERED_BYTES) -> int:
    """Characters ``value`` would print as, counted until ``limit`` is passed."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(chain.from_iterable(item.items()))
        else:
            total += 1
    return total


def _bound_size(*values: Any) -> None:
    if _approximate_size(values) > MAX_RENDERED_BYTES:
        raise SecurityError(f"the template built a value over {MAX_RENDERED_BYTES} characters")


def _bound_length(length: int) -> None:
    if length > MAX_RENDERED_BYTES:
        raise SecurityError(f"the template built a value over {MAX_RENDERED_BYTES} characters")


def _bound_format_string(template: str, printf: bool) -> None:
    if printf:
        widths = chain.from_iterable(_PRINTF_SPEC.findall(template))
    else:
        specs = _FORMAT_FIELD.findall(template)
        if any("{" in spec for spec in specs):
            raise SecurityError("a format width taken from the arguments is not allowed")
        widths = chain.from_iterable(re.findall(r"\d+", spec) for spec in specs)
    for width in widths:
        if width == "*" or (width and int(width) > MAX_FORMAT_WIDTH):
            raise SecurityError(f"a format width over {MAX_FORMAT_WIDTH} is not allowed")


def _bounded_loop(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend()
        yield item


def _bounded_text(value: Any) -> Any:
    if isinstance(value, str):
        _bound_length(len(value))
    return value


def _sized(value: Any) -> Any:
    _bound_size(value)
    return value


def _exceeds(value: Any, limit: int) -> bool:
    return isinstance(value, int) and value > limit


F = TypeVar("F", bound=Callable[..., Any])


def _guard_filter(name: str, function: F) -> F:
    """A filter whose inputs are sized first, and whose growth (padding, repeats) is bounded."""

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        passed = 1 if args and isinstance(args[0], EvalContext | Context) else 0
        values = list(args[passed:])
        if name == "join" and values and not isinstance(values[0], str | list | tuple | dict):
            values[0] = list(values[0])  # sized below, before anything is joined
            args = (*args[:passed], *values)
        _bound_size(values, kwargs)
        if name == "center":
            width = kwargs.get("width", values[1] if len(values) > 1 else 80)
            _bound_length(width if isinstance(width, int) else 0)
        elif name == "indent" and values:
            width = kwargs.get("width", values[1] if len(values) > 1 else 4)
            lines = str(values[0]).count("\n") + 1
            step = width if isinstance(width, int) else len(str(width))
            _bound_length(len(str(values[0])) + lines * step)
        elif name == "replace" and len(values) > 2:
            text, old, new = (str(value) for value in values[:3])
            _bound_length(len(text) + (len(text) // max(len(old), 1) + 1) * len(new))
        elif name == "join" and values:
            separator = str(kwargs.get("d", values[1] if len(values) > 1 else ""))
            items = len(values[0]) if isinstance(values[0], list | tuple | dict) else 0
            _bound_length(_approximate_size(values[0]) + items * len(separator))
        elif name == "format" and values and isinstance(values[0], str):
            _bound_format_string(values[0], printf=True)
        elif name == "slice" and len(values) > 1 and _exceeds(values[1], MAX_SEQUENCE_ITEMS):
            raise SecurityError(f"slice into more than {MAX_SEQUENCE_ITEMS} is not allowed")
        return function(*args, **kwargs)

    return guarded  # type: ignore[return-value]


class _Hardening(NodeTransformer):
    """Puts every loop on the step budget and every ``~`` concatenation under the size bound."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_keel_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            nodes.Filter(item, "_keel_sized", [], [], None, None, lineno=node.lineno)
            for item in node.nodes
        ]
        return nodes.Filter(node, "_keel_text", [], [], None, None, lineno=node.lineno)


class _Undefined(StrictUndefined):
    """Names a missing variable, but never a key that may have come from the data."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_obj is missing:
            return f"{self._undefined_name!r} is undefined"
        name = self._undefined_name
        shown = repr(name) if isinstance(name, str) and _IDENTIFIER.fullmatch(name) else "a key"
        return f"{object_type_repr(self._undefined_obj)} has no attribute {shown}"


_GROWING_METHODS = {"center", "ljust", "rjust", "zfill"}


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, library: Library) -> None:
        super().__init__(
            loader=FunctionLoader(self._load),
            undefined=_Undefined,
            # Only plain-text names escape nothing: a message part named *.txt, a .txt partial.
            autoescape=select_autoescape(
                enabled_extensions=("html", "htm"),
                disabled_extensions=("txt",),
                default_for_string=True,
                default=True,
            ),
            finalize=_sized,
            cache_size=200,
            auto_reload=False,
        )
        self.library = library
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs: no use here, only risk
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(_keel_loop=_bounded_loop, _keel_text=_bounded_text, _keel_sized=_sized)

    def _load(self, name: str) -> tuple[str, str, Callable[[], bool]] | None:
        source = self.library.source(name)
        return None if source is None else (source, name, lambda: True)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        global _compilations
        _compilations += 1
        tree = _Hardening().visit(super()._parse(source, name, filename))
        assert isinstance(tree, nodes.Template)
        tree.set_environment(self)
        return tree

    @staticmethod
    def concat(pieces: Iterable[str]) -> str:
        """Captured blocks and macro bodies: joined only when the result is within bounds."""
        pieces = list(pieces)
        _bound_length(sum(map(len, pieces)))
        return "".join(pieces)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            _bound_format_string(left, printf=True)
            _bound_size(right)
        elif operator in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            bits = max(abs(left).bit_length(), 1)
            grows = bits * right if operator == "**" else bits + abs(right).bit_length()
            if abs(left) > 1 and grows > MAX_INT_BITS:
                raise SecurityError(f"the template built a number over {MAX_INT_BITS} bits")
        elif operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                if not isinstance(sequence, str) and len(sequence) * times > MAX_SEQUENCE_ITEMS:
                    raise SecurityError(f"a list over {MAX_SEQUENCE_ITEMS} items")
                _bound_length(_approximate_size(sequence) * times)
        elif operator == "+" and isinstance(left, str | list | tuple):
            _bound_size(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend(CALL_STEPS)
        _bound_size(args, kwargs)
        if isinstance(__obj, BuiltinMethodType) and isinstance(__obj.__self__, str | bytes):
            method, text = __obj.__name__, __obj.__self__
            if method in _GROWING_METHODS and args and isinstance(args[0], int):
                _bound_length(args[0])
            elif method == "expandtabs":
                tab = args[0] if args and isinstance(args[0], int) else 8
                _bound_length(len(text) * max(tab, 1))
            elif method == "replace" and len(args) >= 2:
                old, new = len(args[0]), len(args[1])
                _bound_length(len(text) + (len(text) // max(old, 1) + 1) * new)
            elif method == "join" and args:
                items = list(args[0])
                _bound_length(_approximate_size(items) + len(items) * len(text))
                args = (items, *args[1:])
            elif method in ("translate", "maketrans"):
                raise SecurityError(f"str.{method} is not available in templates")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _bound_format_string(value.__self__, printf=False)
        return wrapped


def render_bounded(template: Any, data: Mapping[str, Any]) -> str:
    """Render ``template`` on a fresh step budget, stopping at the output bound."""
    token = _budget.set(_Budget())
    try:
        pieces: list[str] = []
        size = 0
        for chunk in template.generate(data):
            size += len(chunk)
            if size > MAX_RENDERED_BYTES:
                raise SecurityError(f"the output exceeds {MAX_RENDERED_BYTES} bytes")
            pieces.append(chunk)
        output = "".join(pieces)
        if size * 4 > MAX_RENDERED_BYTES and len(output.encode()) > MAX_RENDERED_BYTES:
            raise SecurityError(f"the output exceeds {MAX_RENDERED_BYTES} bytes")
        return output
    finally:
        _budget.reset(token)
