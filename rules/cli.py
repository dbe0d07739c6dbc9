"""``reach rules validate PATH...``: check rule directories (or files) the way the worker will.

Prints ``OK <path>: N triggers, M channel rules, K templates`` per valid path
and every problem as ``path:line: reason`` on the error stream; exits 1 when
any path is refused, 2 when the channels file cannot be loaded. A single file
is validated on its own, so a trigger whose template lives in another file is
reported as an unknown template.

Like the worker, validation refuses files over the size limits before parsing
them and channel names the channels file does not define (``--channels``,
default the worker's ``REACH_CHANNELS_FILE``); it also renders every template
against a sample event and reports sandbox violations and output over the
sandbox's ceiling (see :mod:`rules.rendercheck`). It also warns, as
``path:line: warning: ...`` on the error stream without failing, about
variables a trigger's template uses that its ``when`` does not guarantee
(see :mod:`rules.variables`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from channels.config import ChannelsConfigError, load_channels
from rules.engine import RuleEngine
from rules.errors import RuleSetError
from rules.loader import RuleLimits, load_rulebook
from rules.model import RuleBook
from rules.rendercheck import render_problems
from rules.variables import variable_warnings

EXIT_OK, EXIT_REFUSED, EXIT_NO_CHANNELS = 0, 1, 2


def validate(
    paths: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    known_channels: Collection[str] | None = None,
    limits: RuleLimits | None = None,
) -> int:
    """Validate each path; return 0 when all are valid, else 1.

    ``known_channels``: when given, other channel names are refused. ``out``
    and ``err`` default to the standard streams at call time.
    """
    bounds = limits if limits is not None else RuleLimits()
    streams = (out or sys.stdout, err or sys.stderr)
    results = [_validate_one(path, *streams, known_channels, bounds) for path in paths]
    return EXIT_OK if all(results) else EXIT_REFUSED


def validate_like_worker(
    paths: Sequence[str],
    channels_file: str | Path,
    env: Mapping[str, str],
    limits: RuleLimits,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """:func:`validate` with the channels of ``channels_file``, loaded with ``env``
    exactly as the worker loads it; 2 (and the reason) when that file is refused."""
    try:
        channels = load_channels(channels_file, env)
    except ChannelsConfigError as exc:
        print(f"{exc} (the channels file, needed to check channel names)", file=err or sys.stderr)
        return EXIT_NO_CHANNELS
    return validate(paths, out, err, known_channels=list(channels.channels), limits=limits)


def _validate_one(
    path: str, out: TextIO, err: TextIO, known_channels: Collection[str] | None, limits: RuleLimits
) -> bool:
    try:
        book = _load_like_worker(path, known_channels, limits)
    except RuleSetError as exc:
        for error in exc.errors:
            print(error, file=err)
        return False
    print(f"OK {path}: {book.summary()}", file=out)
    for warning in variable_warnings(book):
        print(warning, file=err)
    return True


def _load_like_worker(path: str, known_channels: Collection[str] | None, limits: RuleLimits) -> RuleBook:
    """The rule book the worker would serve; raises :class:`RuleSetError`."""
    book = load_rulebook(path, known_channels, limits)
    RuleEngine.build(book).close()  # durable-rules may still refuse the rule set as a whole
    problems = render_problems(book.templates.values())
    if problems:
        raise RuleSetError(problems)
    return book


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rules.cli``: without settings; limits are the defaults."""
    parser = argparse.ArgumentParser(prog="python -m rules.cli", description=__doc__)
    parser.add_argument("paths", nargs="+", help="rule directories or files")
    parser.add_argument("--channels", metavar="FILE", help="the worker's channels file")
    parser.add_argument(
        "--channel", action="append", dest="channel_names", help="a known channel name (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.channels:
        return validate_like_worker(args.paths, args.channels, os.environ, RuleLimits())
    return validate(args.paths, known_channels=args.channel_names)


if __name__ == "__main__":
    sys.exit(main())
