"""Which variables a trigger's template prints that its ``when`` does not guarantee.

A template that prints a variable the message lacks fails that message
(``template_variable_missing``, :mod:`rules.templating`). Nothing knows which
properties an event will carry, but a trigger's ``when`` can guarantee some:
``properties.amount >= 500`` is false without an amount and ``has(properties.order_id)``
tests for one, so a message of that trigger always has them. ``reach rules
validate`` warns about every other variable a template *uses*: prints, loops over
or computes with, unless it is given a ``default``, tested first
(``{% if properties.coupon %}``, ``is defined``) or always in the context
(``user_id``, ``event``, ``event_id``, ``unsubscribe_url``, ``properties``, ``device``).

It is a warning, not an error: the producer may well always send the property.
The analysis reads the template's syntax tree and errs towards silence: a variable
read below a guaranteed one (``properties.order.id`` when ``has(properties.order)``)
counts as guaranteed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping

from jinja2 import meta, nodes

from rules.expr import TRIGGER_FACT, AllOf, AnyOf, Cmp, Has, Node, Not, Path, Present, parse_expression
from rules.model import SKIP, RuleBook, Template, TriggerRule
from rules.templating import parse_source

__all__ = ["ALWAYS_PRESENT", "VariableWarning", "guaranteed", "unguarded_reads", "variable_warnings"]

#: what every trigger message's context holds (agents/plan.py, agents/delivery/policy.py)
ALWAYS_PRESENT = frozenset({"user_id", "event", "event_id", "unsubscribe_url", "properties", "device"})
#: the event fields a `when` tests, by the name a template reads them under
_CONTEXT_NAME = {"name": "event"}
#: tests that compute with their value, so fail on a missing one like printing it
_COMPUTING_TESTS = frozenset(
    {"divisibleby", "even", "odd", "lt", "le", "gt", "ge", "lessthan", "greaterthan"}
)


@dataclasses.dataclass(frozen=True)
class VariableWarning:
    """A trigger whose template uses ``variables`` that its ``when`` does not guarantee."""

    path: str
    line: int | None
    trigger: str
    template: str
    variables: tuple[str, ...]

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        one = len(self.variables) == 1
        return (
            f"{where}: warning: trigger {self.trigger!r} sends template {self.template!r}, which uses"
            f" {', '.join(self.variables)} without a default or a test; its 'when' does not guarantee"
            f" {'it' if one else 'them'}: an event without {'it' if one else 'one of them'} fails as"
            f" template_variable_missing (add has({self.variables[0]}) to 'when', or a default)"
        )


def variable_warnings(book: RuleBook) -> list[VariableWarning]:
    """One warning per trigger whose templates use variables its ``when`` leaves open."""
    warnings = []
    for trigger in book.triggers:
        for template in _templates_of(trigger, book.templates):
            missing = _unguaranteed(unguarded_reads(template), guaranteed_paths(trigger))
            if missing:
                path, _, line = trigger.source.rpartition(":")
                located = bool(path) and line.isdigit()
                warnings.append(
                    VariableWarning(
                        path if located else trigger.source,
                        int(line) if located else None,
                        trigger.id,
                        template.id,
                        tuple(".".join(p) for p in sorted(missing)),
                    )
                )
    return warnings


def _templates_of(trigger: TriggerRule, templates: Mapping[str, Template]) -> Iterator[Template]:
    """The trigger's template and the fallbacks older apps get instead (once each)."""
    seen: set[str] = set()
    name = trigger.template
    while name and name != SKIP and name not in seen and name in templates:
        seen.add(name)
        yield templates[name]
        name = templates[name].fallback


def guaranteed_paths(trigger: TriggerRule) -> frozenset[Path]:
    """The context paths every message of ``trigger`` has, from its ``when``."""
    paths = guaranteed(parse_expression(trigger.when, TRIGGER_FACT))
    return frozenset((_CONTEXT_NAME.get(p[0], p[0]), *p[1:]) for p in paths)


def guaranteed(node: Node) -> frozenset[Path]:
    """The fields present (not absent, not null) whenever ``node`` is true."""
    if isinstance(node, Cmp | Has | Present):
        return frozenset({node.path})  # a comparison is false on an absent field
    if isinstance(node, Not):
        return _guaranteed_when_false(node.child)
    if isinstance(node, AllOf):
        return frozenset().union(*(guaranteed(c) for c in node.children))
    return _common(guaranteed(c) for c in node.children)


def _guaranteed_when_false(node: Node) -> frozenset[Path]:
    if isinstance(node, Not):
        return guaranteed(node.child)
    if isinstance(node, AnyOf):  # false: every alternative is false
        return frozenset().union(*(_guaranteed_when_false(c) for c in node.children))
    if isinstance(node, AllOf):
        return _common(_guaranteed_when_false(c) for c in node.children)
    return frozenset()  # a comparison or has() is false on an absent field: nothing follows


def _common(sets: Iterable[frozenset[Path]]) -> frozenset[Path]:
    found = list(sets)
    return frozenset.intersection(*found) if found else frozenset()


def _unguaranteed(reads: Iterable[Path], guaranteed: Collection[Path]) -> set[Path]:
    return {
        path
        for path in reads
        if not (len(path) == 1 and path[0] in ALWAYS_PRESENT)
        and not any(_prefix(path, g) or _prefix(g, path) for g in guaranteed)
    }


def _prefix(short: Path, long: Path) -> bool:
    return long[: len(short)] == short


# --- the template's syntax tree ---------------------------------------------------------------


def unguarded_reads(template: Template) -> set[Path]:
    """The context paths ``template`` uses (prints, loops over, computes with) unguarded."""
    found: set[Path] = set()
    for source in (template.title, template.text, template.html):
        if source:
            tree = parse_source(source)
            _Reads(meta.find_undeclared_variables(tree), found).visit(tree, frozenset(), truth=False)
    return found


class _Reads:
    """Walks a template, collecting the paths of context variables used where a missing one
    fails. ``truth``: the node is only tested for truth (a missing variable is false)."""

    def __init__(self, roots: Collection[str], found: set[Path]) -> None:
        self.roots = roots  # names the template takes from the context, not its own locals
        self.found = found

    def visit(self, node: nodes.Node, guarded: frozenset[Path], truth: bool) -> None:
        path = _path(node)
        if path is not None:
            if path[0] in self.roots and not truth and not any(_prefix(g, path) for g in guarded):
                self.found.add(path)
            return
        if isinstance(node, nodes.Filter) and node.name in ("default", "d"):
            self._children(node.args, guarded)  # its value may be missing: that is the point
        elif isinstance(node, nodes.Test):
            if node.name in _COMPUTING_TESTS:
                self.visit(node.node, guarded, truth=False)
            self._children(node.args, guarded)
        elif isinstance(node, nodes.If | nodes.CondExpr):
            self._branches(node, guarded)
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            self.visit(node.node.node, guarded, truth=False)  # a method's object, not the method
            self._children([*node.args, *node.kwargs], guarded)
        elif isinstance(node, nodes.Not):
            self.visit(node.node, guarded, truth=True)
        elif isinstance(node, nodes.And | nodes.Or):
            # in a value, `a or b` prints b when a is missing; `a and b` prints a missing a
            self.visit(node.left, guarded, truth=truth or isinstance(node, nodes.Or))
            self.visit(node.right, guarded, truth=truth)
        else:
            self._children(node.iter_child_nodes(), guarded)

    def _children(self, children: Iterable[nodes.Node], guarded: frozenset[Path]) -> None:
        for child in children:
            self.visit(child, guarded, truth=False)

    def _branches(self, node: nodes.If | nodes.CondExpr, guarded: frozenset[Path]) -> None:
        self.visit(node.test, guarded, truth=True)
        tested = guarded | _true_when(node.test)
        if isinstance(node, nodes.If):
            self._children(node.body, tested)
            self._children([*node.elif_, *node.else_], guarded)
        else:
            self.visit(node.expr1, tested, truth=False)
            if node.expr2 is not None:
                self.visit(node.expr2, guarded, truth=False)


def _true_when(test: nodes.Node) -> frozenset[Path]:
    """The paths a true ``test`` shows to be present."""
    path = _path(test)
    if path is not None:
        return frozenset({path})
    if isinstance(test, nodes.Test) and test.name == "defined":
        inner = _path(test.node)
        return frozenset({inner}) if inner is not None else frozenset()
    if isinstance(test, nodes.And):
        return _true_when(test.left) | _true_when(test.right)
    if isinstance(test, nodes.Or):
        return _true_when(test.left) & _true_when(test.right)
    if isinstance(test, nodes.Compare):  # true only when its operands were there
        operands = [test.expr, *(op.expr for op in test.ops)]
        return frozenset(p for p in map(_path, operands) if p is not None)
    return frozenset()


def _path(node: nodes.Node) -> Path | None:
    """``properties.order.id`` (or ``properties['order']``) as a path; None for anything else."""
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return (node.name,)
    if isinstance(node, nodes.Getattr):
        inner = _path(node.node)
        return None if inner is None else (*inner, node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        inner = _path(node.node)
        key = node.arg.value
        return None if inner is None or not isinstance(key, str | int) else (*inner, str(key))
    return None
