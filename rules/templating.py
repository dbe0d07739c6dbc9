"""Jinja2 set-up for message templates: sandboxed, bounded, compiled at load time.

Two sandboxed environments: ``title`` and ``text`` are plain text (no
escaping), ``html`` is autoescaped. A variable the message does not have may be
tested (``{% if properties.coupon %}``, ``is defined``), given a default
(``{{ device.platform | default('the web') }}``, which works when the event has
no ``device`` at all), but printing it, looping over it or computing with it
fails the message with :class:`MissingVariableError` naming it: rendered as an
empty string it left gaps such as "your payment of 980 ." that nobody noticed.
A property sent as ``null`` is there and renders as an empty string. Syntax
errors are found when the rule file is loaded, never at send time.

The sandbox also has a size ceiling, :data:`MAX_RENDERED_CHARS` per field: no
template can build a string or list larger than that, nor render more text
than that (``{{ 'x' * 100000000 }}`` fails before allocating anything, with
:class:`RenderLimitError`). It is the absolute ceiling, whatever the channel;
channels have their own, smaller content limits at send time. What is bounded:
``* ** % +`` and ``~``, method calls and filters (widths, ``join``,
``replace``, ``format``) checked before they run, every call's and filter's
result checked after, and the rendered output.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat, EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from rules.errors import TemplateRenderError

__all__ = [
    "MAX_RENDERED_CHARS",
    "MissingVariableError",
    "RenderLimitError",
    "compile_source",
    "parse_source",
    "render_field",
]

# 256 KiB of text per field: far above any message a channel sends (SMS 1.6 k,
# push 4 k, email bodies tens of k) and far below MariaDB's max_allowed_packet.
MAX_RENDERED_CHARS = 256 * 1024

# Width and precision of printf-style conversions, and the format spec of str.format fields.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")
# str methods whose first argument is a width.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class RenderLimitError(SecurityError):
    """A template tried to build or render more than the sandbox allows.

    Permanent: the same template and context fail the same way.
    """


class MissingVariableError(jinja2.UndefinedError):
    """A template printed, looped over or computed with a variable the message lacks.

    Permanent: the same template and context fail the same way. ``variable`` is the
    missing name (an attribute or key), ``owner`` the object it was looked up in
    (``jinja2.utils.missing`` for a top-level name).
    """

    def __init__(self, message: str | None = None, *, variable: Any = None, owner: Any = missing) -> None:
        super().__init__(message)
        self.variable = variable
        self.owner = owner


class _Missing(jinja2.ChainableUndefined):
    """A missing variable: chains and is false, fails when used for anything else.

    Like ``StrictUndefined`` it refuses ``str``, ``iter`` and ``len`` (the base class
    already refuses arithmetic, comparisons and calls), but it stays false in a test and
    chains like ``ChainableUndefined``, so ``{% if properties.coupon %}`` and
    ``{{ device.platform | default('the web') }}`` work without ``device``.
    """

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        if exc is jinja2.UndefinedError:  # every refusal names the variable, whichever raises it
            exc = functools.partial(MissingVariableError, variable=name, owner=obj)  # type: ignore[assignment]
        super().__init__(hint, obj, name, exc)

    __str__ = __iter__ = __len__ = jinja2.Undefined._fail_with_undefined_error


def _refuse(what: str, size: int, limit: int) -> RenderLimitError:
    return RenderLimitError(f"{what} would be {size} characters or items, over the limit of {limit}")


def _size(value: Any, budget: int) -> int:
    """An estimate of ``value``'s rendered size, exact for strings; stops counting
    past ``budget`` so that checking a huge value costs no more than the budget."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple | set | frozenset):
        return _sized_items(value, budget)
    if isinstance(value, dict):
        return _sized_items([*value.keys(), *value.values()], budget)
    if isinstance(value, int) and not isinstance(value, bool):
        # digits without converting: str() of a huge int is itself the cost to avoid
        return max(1, math.ceil(value.bit_length() * 0.30103))
    return 8


def _sized_items(items: Iterable[Any], budget: int) -> int:
    total = 2
    for item in items:
        total += _size(item, budget - total) + 2
        if total > budget:
            break
    return total


class _BoundedCodeGenerator(CodeGenerator):
    """Routes ``a ~ b`` through :meth:`_BoundedEnvironment.checked_concat`: in
    stock Jinja concatenation is not an interceptable operator."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox in which no value or output exceeds ``max_chars``.

    Immutable: ``list.append`` and friends are refused, so a list can only grow
    through the checked operators.
    """

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        """Refuse ``''.__class__`` and the like at once: the stock sandbox returns
        an undefined that renders as an empty string, hiding the violation."""
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    # --- checks ---------------------------------------------------------------

    def check(self, value: Any, what: str = "a value") -> Any:
        """``value`` unchanged; raises :class:`RenderLimitError` if it is too large."""
        size = _size(value, self.max_chars)
        if size > self.max_chars:
            raise _refuse(what, size, self.max_chars)
        return value

    def _check_estimate(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise _refuse(what, size, self.max_chars)

    def _check_widths(self, widths: Iterable[str | None], what: str) -> None:
        for width in widths:
            if width and width.isdigit():
                self._check_estimate(int(width), what)

    def _check_format_string(self, text: str) -> None:
        for match in _PRINTF_SPEC.finditer(text):
            self._check_widths(match.groups(), "a %-format width")
        for spec in _FORMAT_SPEC.findall(text):
            self._check_widths(_DIGITS.findall(spec), "a format width")

    # --- operators --------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Checks the size an operator would produce before computing it."""
        if operator == "*":
            self._check_product(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif operator == "+":
            self._check_estimate(_size(left, self.max_chars) + _size(right, self.max_chars), "a sum")
        elif operator == "%" and isinstance(left, str):
            self._check_format_string(left)
        return self.check(self.binop_table[operator](left, right), f"the result of {operator!r}")

    def _check_product(self, left: Any, right: Any) -> None:
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(seq, int | float):
                self._check_estimate(_size(seq, self.max_chars) * max(count, 0), "a repetition")

    def _check_power(self, base: Any, exponent: Any) -> None:
        if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
            digits = exponent * math.log10(abs(base))
            self._check_estimate(math.ceil(min(digits, float(self.max_chars + 1))), "a power")

    def checked_concat(self, joined: Any) -> Any:
        """The result of ``~``; compiled code calls it with the joined value."""
        return self.check(joined, "a concatenation")

    # --- calls and filters --------------------------------------------------------

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """A call from template code: arguments that would expand a string are
        checked first, the result after."""
        self._check_method(obj, args)
        result = super().call(context, obj, *args, **kwargs)
        return self.check(result, f"the result of {getattr(obj, '__name__', 'a call')}()")

    def _check_method(self, method: Any, args: tuple[Any, ...]) -> None:
        # the sandbox hands str.format out wrapped: look through the wrapper
        target = getattr(method, "__wrapped__", method)
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if not isinstance(owner, str):
            return
        if name in _WIDTH_METHODS and args and isinstance(args[0], int):
            self._check_estimate(args[0], f"str.{name}()")
        elif name == "expandtabs" and args and isinstance(args[0], int):
            self._check_estimate(len(owner) + owner.count("\t") * args[0], "str.expandtabs()")
        elif name == "join" and args:
            self._check_join(args[0], owner)
        elif name == "replace" and len(args) >= 2:
            self._check_replace(owner, args[0], args[1])
        elif name in ("format", "format_map"):
            self._check_format_string(owner)

    def _check_join(self, items: Any, separator: Any) -> None:
        if isinstance(items, list | tuple):
            gaps = max(len(items) - 1, 0) * _size(separator, self.max_chars)
            self._check_estimate(_size(items, self.max_chars) + gaps, "a join")

    def _check_replace(self, text: Any, old: Any, new: Any) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            count = text.count(old) if old else len(text) + 1
            self._check_estimate(len(text) + count * len(new), "a replace")

    def _bounded_filter(self, name: str, filter_: Callable[..., Any]) -> Callable[..., Any]:
        check_args = self._filter_precheck(name)

        @functools.wraps(filter_)  # keeps jinja's pass_context/pass_eval_context marker
        def bounded(*args: Any, **kwargs: Any) -> Any:
            check_args(args, kwargs)
            result = filter_(*args, **kwargs)
            if isinstance(result, Iterator):  # map, select, batch...: checked as they are consumed
                return _counted(result, self.max_chars, f"the items of |{name}")
            return self.check(result, f"the result of |{name}")

        return bounded

    def _filter_precheck(self, name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
        checks: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], None]] = {
            "center": lambda a, k: self._check_int_arg(_argument(a, k, "width", 1), "|center"),
            "indent": self._check_indent,
            "join": lambda a, k: self._check_join(_value(a), _argument(a, k, "d", 1, "")),
            "replace": lambda a, k: self._check_replace(
                _value(a), _argument(a, k, "old", 1), _argument(a, k, "new", 2)
            ),
            "format": lambda a, k: self._check_format_string(_value(a) if isinstance(_value(a), str) else ""),
        }
        return checks.get(name, lambda a, k: None)

    def _check_int_arg(self, value: Any, what: str) -> None:
        if isinstance(value, int):
            self._check_estimate(value, what)

    def _check_indent(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        text, width = _value(args), _argument(args, kwargs, "width", 1, 4)
        if isinstance(text, str):
            pad = width if isinstance(width, int) else _size(width, self.max_chars)
            self._check_estimate(len(text) + (text.count("\n") + 1) * max(pad, 0), "|indent")


def _counted(items: Iterator[Any], limit: int, what: str) -> Iterator[Any]:
    """``items``, raising :class:`RenderLimitError` once their total size passes ``limit``
    (a lazy filter's output is only sized when a consumer such as ``join`` reads it)."""
    total = 0
    for item in items:
        total += _size(item, limit) + 2
        if total > limit:
            raise _refuse(what, total, limit)
        yield item


def _value(args: tuple[Any, ...]) -> Any:
    """The filtered value: the first argument after jinja's own (eval context, context)."""
    plain = [a for a in args if not isinstance(a, EvalContext | Context)]
    return plain[0] if plain else None


def _argument(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str, index: int, default: Any = None
) -> Any:
    """A filter's argument by keyword or by position (``index`` counts the value as 0)."""
    plain = [a for a in args if not isinstance(a, EvalContext | Context)]
    if name in kwargs:
        return kwargs[name]
    return plain[index] if len(plain) > index else default


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _environment(autoescape: bool, max_chars: int = MAX_RENDERED_CHARS) -> _BoundedEnvironment:
    return _BoundedEnvironment(
        max_chars,
        autoescape=autoescape,
        undefined=_Missing,
        finalize=_finalize,
        keep_trailing_newline=False,
    )


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


def compile_source(source: str, html: bool) -> jinja2.Template:
    """Compile one template field; raises :class:`jinja2.TemplateSyntaxError`
    (with ``lineno`` relative to ``source``)."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


def parse_source(source: str) -> jinja2.nodes.Template:
    """The syntax tree of one template field (for analysis; html and text parse alike)."""
    return _TEXT_ENV.parse(source)


def render_field(template: jinja2.Template, context: Mapping[str, Any], template_id: str, field: str) -> str:
    """Render one compiled field, at most :data:`MAX_RENDERED_CHARS` characters;
    any failure (a :class:`RenderLimitError` included) becomes
    :class:`TemplateRenderError`, with the original as ``__cause__``; for a
    :class:`MissingVariableError` its ``missing_variable`` is the variable's path."""
    try:
        return _bounded_render(template, context)
    except MissingVariableError as exc:
        path = variable_path(exc, context)
        raise TemplateRenderError(template_id, field, f"variable {path!r} is missing", path) from exc
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(template_id, field, exc.message or type(exc).__name__) from exc
    except Exception as exc:  # template code is author input: any error is a bad template
        raise TemplateRenderError(template_id, field, f"{type(exc).__name__}: {exc}") from exc


def _bounded_render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    # Streamed, so that many small pieces (a loop) stop at the ceiling too.
    limit = getattr(template.environment, "max_chars", MAX_RENDERED_CHARS)
    parts: list[str] = []
    total = 0
    for part in template.generate(context):
        total += len(part)
        if total > limit:
            raise RenderLimitError(f"the rendered text is over the limit of {limit} characters")
        parts.append(part)
    return "".join(parts)


def variable_path(error: MissingVariableError, context: Mapping[str, Any]) -> str:
    """The dotted path of the missing variable, ``properties.amount``, found by looking for the
    object it was looked up in among the context's values (a few levels deep, only on failure)."""
    name = error.variable if error.variable is not None else "?"
    if error.owner is missing:
        return str(name)
    where = _find(context, error.owner, _FIND_DEPTH)
    prefix = ".".join(where) + "." if where else ""
    return f"{prefix}{name}" if isinstance(name, str) else f"{prefix.rstrip('.')}[{name!r}]"


_FIND_DEPTH = 4


def _find(value: Any, target: Any, depth: int) -> list[str] | None:
    """The keys leading from ``value`` to the very object ``target``; [] for ``value`` itself."""
    if value is target:
        return []
    if depth <= 0:
        return None
    children: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, Mapping):
        children = value.items()
    elif isinstance(value, list | tuple):
        children = enumerate(value)
    for key, child in children:
        found = _find(child, target, depth - 1)
        if found is not None:
            return [str(key), *found]
    return None
