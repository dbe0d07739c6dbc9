"""Typed errors of the rules package, each saying what happens next.

- :class:`RuleFileError` / :class:`RuleSetError`: a rule directory is refused.
  At start-up the worker must not start; on hot reload the old rules keep
  serving and the error is logged.
- :class:`ExpressionError`: one ``when`` expression is refused (the loader
  turns it into a :class:`RuleFileError` with the file line).
- :class:`TemplateRenderError`: one message cannot be rendered; it is a
  permanent failure of that message (dead-letter it with the reason), the
  rules keep serving.
- :class:`RuleEvaluationError`: durable-rules refused to evaluate a fact. The
  loader's capacity checks exist so that this does not happen; if it does,
  treat the event as a permanent failure and alert.
"""

from __future__ import annotations

from collections.abc import Iterable


class RulesError(Exception):
    """Base class of every error raised by :mod:`rules`."""


class RuleFileError(RulesError):
    """One problem in one rule file: ``path``, 1-based ``line`` (None when the
    problem is not tied to a line) and a human ``reason``.

    ``str()`` is ``path:line: reason`` (``path: reason`` without a line), the
    format editors and CI annotate.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(self.location() + ": " + reason)

    def location(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def __reduce__(self) -> tuple[type[RuleFileError], tuple[str, int | None, str]]:
        return (type(self), (self.path, self.line, self.reason))


class RuleSetError(RulesError):
    """Every problem found while loading a rule directory (at least one).

    Validation does not stop at the first problem: ``errors`` lists all of
    them, sorted by path and line.
    """

    def __init__(self, errors: Iterable[RuleFileError]) -> None:
        self.errors: tuple[RuleFileError, ...] = tuple(sorted(errors, key=lambda e: (e.path, e.line or 0)))
        if not self.errors:
            raise ValueError("RuleSetError needs at least one RuleFileError")
        count = len(self.errors)
        header = f"{count} problem{'s' if count > 1 else ''} in rules"
        super().__init__("\n".join([header, *(str(e) for e in self.errors)]))


class ExpressionError(RulesError):
    """A refused ``when`` expression. ``line`` and ``column`` are 1-based and
    relative to the expression text (None when unknown)."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        where = f" (line {line}, column {column})" if line and column else ""
        super().__init__(reason + where)


class TemplateRenderError(RulesError):
    """A template failed at render time (a missing variable, bad filter input, sandbox
    refusal...).

    Permanent for this message: rendering it again gives the same error.
    ``missing_variable`` is the path of the variable the message lacked
    (``properties.amount``), or ``""`` when something else failed.
    """

    def __init__(self, template_id: str, field: str, reason: str, missing_variable: str = "") -> None:
        self.template_id = template_id
        self.field = field
        self.reason = reason
        self.missing_variable = missing_variable
        super().__init__(f"template {template_id!r} {field}: {reason}")


class RuleEvaluationError(RulesError):
    """durable-rules returned an error while matching a fact."""
