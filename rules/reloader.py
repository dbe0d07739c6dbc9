"""Hot reload: re-read the rule directory when it changes, swap one reference.

No threads: the worker calls :meth:`RuleReloader.check` from a timer on its
event loop. ``check`` stats the rule files (cheap) and reloads only when their
names, sizes or modification times changed. A refused directory is logged
once per change (``rules.reload_refused``, one event per problem) and the
previous engine keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import structlog

from rules.engine import RuleEngine
from rules.errors import RuleFileError, RuleSetError
from rules.loader import load_rulebook, rule_files

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
    """

    def __init__(
        self,
        directory: str | Path,
        known_channels: Collection[str] | None = None,
        on_error: Callable[[RuleSetError], None] | None = None,
        log: Any = None,
    ) -> None:
        self.directory = str(directory)
        self.known_channels = known_channels
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
        Performs small blocking file reads: call it from a timer, not per event.
        """
        fingerprint = directory_fingerprint(self.directory)
        if fingerprint == self._seen:
            return False
        # Remembered before loading: a broken state is tried once, not on every check.
        self._seen = fingerprint
        try:
            engine = self._build()
        except RuleSetError as exc:
            self._refused(exc)
            return False
        self._swap(engine, fingerprint, "rules.reloaded")
        return True

    def _build(self) -> RuleEngine:
        return RuleEngine.build(load_rulebook(self.directory, self.known_channels))

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
