"""Hot reload: re-read the rule directory when it changes, swap one reference.

The worker awaits :meth:`RuleReloader.check_async` from a timer on its event
loop: it stats the rule files (cheap) on the loop and, only when their names,
sizes or modification times changed, parses and compiles them in a worker
thread (a megabyte of YAML takes about a second), then swaps the reference
back on the loop. :meth:`RuleReloader.check` does the same synchronously, for
callers without a loop. A refused directory is logged once per change
(``rules.reload_refused``, one event per problem), reported to ``on_error``,
and the previous engine keeps serving.

Building in another thread is safe with durable-rules: its C extension never
releases the GIL, and a new engine shares nothing with the serving one until
the swap.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import structlog

from rules.engine import RuleEngine
from rules.errors import RuleFileError, RuleSetError
from rules.loader import Categories, RuleLimits, load_rulebook, rule_files
from rules.variables import variable_warnings

DirectoryFingerprint = tuple[tuple[str, int, int], ...] | str


def directory_fingerprint(directory: str | Path) -> DirectoryFingerprint:
    """(name, size, mtime_ns) of every rule file; a string when the directory
    cannot be listed (so that an unreadable directory is also "a state")."""
    try:
        stats = [(path.name, path.stat()) for path in rule_files(directory)]
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


class RuleReloader:
    """Holds the current :class:`RuleEngine` in :attr:`current`.

    The constructor loads the directory and raises :class:`RuleSetError` when
    it is refused: a worker must not start on bad rules. ``on_error`` is called
    with the :class:`RuleSetError` of every refused reload (for a metric).
    ``limits`` bounds the rule files' sizes (from the settings).
    """

    def __init__(
        self,
        directory: str | Path,
        known_channels: Collection[str] | None = None,
        on_error: Callable[[RuleSetError], None] | None = None,
        log: Any = None,
        limits: RuleLimits | None = None,
        categories: Categories | None = None,
    ) -> None:
        self.directory = str(directory)
        self.categories = categories if categories is not None else Categories()
        self.known_channels = known_channels
        self.limits = limits if limits is not None else RuleLimits()
        self._on_error = on_error
        self._log = log if log is not None else structlog.get_logger("reach.rules")
        self._seen: DirectoryFingerprint | None = None
        self.current: RuleEngine = self.load()

    def load(self) -> RuleEngine:
        """Load and swap in the directory's rules now; raises :class:`RuleSetError`."""
        fingerprint = directory_fingerprint(self.directory)
        engine = self._build()
        self._swap(engine, fingerprint, "rules.loaded")
        return engine

    def check(self) -> bool:
        """Reload if the directory changed since the last attempt; True if swapped.

        Never raises for bad rules: they are logged and the old engine stays.
        Blocks while a changed directory is parsed (up to seconds for large
        files): on an event loop, await :meth:`check_async` instead.
        """
        fingerprint = self._changed()
        if fingerprint is None:
            return False
        try:
            engine = self._build()
        except RuleSetError as exc:
            self._refused(exc)
            return False
        self._swap(engine, fingerprint, "rules.reloaded")
        return True

    async def check_async(self) -> bool:
        """:meth:`check` for the event loop: the same contract, but parsing and
        compiling run in a worker thread, so the loop keeps serving events; the
        swap, the logging and ``on_error`` happen on the loop. Must not be
        awaited twice at once (the worker's timer awaits each call before the next).
        """
        fingerprint = self._changed()
        if fingerprint is None:
            return False
        try:
            engine = await asyncio.to_thread(self._build)
        except RuleSetError as exc:
            self._refused(exc)
            return False
        self._swap(engine, fingerprint, "rules.reloaded")
        return True

    def _changed(self) -> DirectoryFingerprint | None:
        """The directory's new fingerprint, or None if unchanged since the last attempt."""
        fingerprint = directory_fingerprint(self.directory)
        if fingerprint == self._seen:
            return None
        # Remembered before loading: a broken state is tried once, not on every check.
        self._seen = fingerprint
        return fingerprint

    def _build(self) -> RuleEngine:
        return RuleEngine.build(
            load_rulebook(self.directory, self.known_channels, self.limits, self.categories)
        )

    def _swap(self, engine: RuleEngine, fingerprint: DirectoryFingerprint, event: str) -> None:
        self.current = engine
        self._seen = fingerprint
        book = engine.rulebook
        self._log.info(
            event,
            directory=self.directory,
            fingerprint=book.fingerprint[:16],
            triggers=len(book.triggers),
            channel_rules=len(book.channel_rules),
            templates=len(book.templates),
        )
        for warning in variable_warnings(book):
            self._log.warning(
                "rules.variable_not_guaranteed",
                path=warning.path,
                line=warning.line,
                trigger=warning.trigger,
                template=warning.template,
                variables=list(warning.variables),
            )

    def _refused(self, exc: RuleSetError) -> None:
        for error in exc.errors:
            self._log_refusal(error, len(exc.errors))
        if self._on_error is not None:
            self._on_error(exc)

    def _log_refusal(self, error: RuleFileError, count: int) -> None:
        self._log.error(
            "rules.reload_refused",
            path=os.fspath(error.path),
            line=error.line,
            reason=error.reason,
            errors=count,
            kept_fingerprint=self.current.rulebook.fingerprint[:16],
        )
