"""``reach rules validate PATH...``: check rule directories (or files) before deploying.

Prints ``OK <path>: N triggers, M channel rules, K templates`` per valid path
and every problem as ``path:line: reason`` on the error stream; exits 1 when
any path is refused. A single file is validated on its own, so a trigger whose
template lives in another file is reported as an unknown template.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from typing import TextIO

from rules.engine import RuleEngine
from rules.errors import RuleSetError
from rules.loader import load_rulebook


def validate(
    paths: Sequence[str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    known_channels: Collection[str] | None = None,
) -> int:
    """Validate each path; return 0 when all are valid, else 1."""
    status = 0
    for path in paths:
        if not _validate_one(path, out, err, known_channels):
            status = 1
    return status


def _validate_one(path: str, out: TextIO, err: TextIO, known_channels: Collection[str] | None) -> bool:
    try:
        book = load_rulebook(path, known_channels)
        RuleEngine.build(book).close()  # durable-rules may still refuse the rule set as a whole
    except RuleSetError as exc:
        for error in exc.errors:
            print(error, file=err)
        return False
    print(f"OK {path}: {book.summary()}", file=out)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reach rules validate", description=__doc__)
    parser.add_argument("paths", nargs="+", help="rule directories or files")
    parser.add_argument(
        "--channel", action="append", dest="channels", help="a known channel name (repeatable)"
    )
    args = parser.parse_args(argv)
    return validate(args.paths, known_channels=args.channels)


if __name__ == "__main__":
    sys.exit(main())
