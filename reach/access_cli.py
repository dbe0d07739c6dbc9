"""``reach keys ...`` and ``reach audit``: API keys of calling systems, and the audit log.

Each command migrates the database first (idempotent), so the first key can be made on a
fresh stack. A token is printed once, at create and rotate; only its hash is stored.
Every change is audited as ``cli:<OS user>``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from models import audit
from models.access import KeyOperationError, KeyStore, NewKey, Scope, parse_scopes
from models.storage import create_pool, migrate
from reach.clock import SystemClock
from reach.settings import Settings


def add_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys of calling systems").add_subparsers(title="keys commands")
    create = keys.add_parser("create", help="create a key and print its token (shown once)")
    create.add_argument("name", help="who uses it, e.g. orders-backend")
    create.add_argument(
        "--scope", action="append", required=True, choices=[s.value for s in Scope], help="repeatable"
    )
    create.add_argument(
        "--event", action="append", help="an event name it may emit (repeatable; default any)"
    )
    create.add_argument(
        "--rate-limit", type=int, help="requests per window (default REACH_RATE_LIMIT_PER_KEY; 0 none)"
    )
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=lambda s, a: _run(s, a, _create))
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=lambda s, a: _run(s, a, _list))
    rotate = keys.add_parser("rotate", help="give a key a new secret and print its token")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace", type=float, default=0, metavar="SECONDS", help="the old secret keeps working this long"
    )
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(run=lambda s, a: _run(s, a, _rotate))
    revoke = keys.add_parser(
        "revoke", help="revoke a key (the API refuses it within REACH_API_KEY_CACHE_SECONDS)"
    )
    revoke.add_argument("key_id")
    revoke.set_defaults(run=lambda s, a: _run(s, a, _revoke))
    log = sub.add_parser("audit", help="the latest audit log entries, oldest first")
    log.add_argument("--limit", type=int, default=50)
    log.add_argument("--json", action="store_true")
    log.set_defaults(run=lambda s, a: _run(s, a, _audit))


Command = Callable[[Any, argparse.Namespace, str, int], Awaitable[None]]


def _run(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    try:
        asyncio.run(_with_pool(settings, args, command))
    except KeyOperationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _with_pool(settings: Settings, args: argparse.Namespace, command: Command) -> None:
    await migrate(settings)
    pool = await create_pool(settings, maxsize=1)
    try:
        await command(pool, args, f"cli:{getpass.getuser()}", SystemClock().now_ms())
    finally:
        pool.close()
        await pool.wait_closed()


async def _create(pool: Any, args: argparse.Namespace, actor: str, now: int) -> None:
    events = frozenset(args.event) if args.event else None
    spec = NewKey(parse_scopes(args.scope), events, args.rate_limit)
    key, token = await KeyStore(pool).create(args.name, spec, actor, now)
    _show(
        {**key.public(), "token": token}, args.json, f"{key.key_id}  {key.name}\ntoken (shown once): {token}"
    )


async def _list(pool: Any, args: argparse.Namespace, _actor: str, _now: int) -> None:
    keys = [k.public() for k in await KeyStore(pool).all()]
    if args.json:
        sys.stdout.write(orjson.dumps(keys).decode() + "\n")
        return
    for k in keys:
        state = f"revoked {_when(k['revoked_at'])}" if k["revoked_at"] else "active"
        events = ",".join(k["events"]) if k["events"] is not None else "any event"
        print(f"{k['key_id']}  {k['name']}  {','.join(k['scopes'])}  {events}  {state}")


async def _rotate(pool: Any, args: argparse.Namespace, actor: str, now: int) -> None:
    token = await KeyStore(pool).rotate(args.key_id, int(args.grace * 1000), actor, now)
    _show({"key_id": args.key_id, "token": token}, args.json, f"token (shown once): {token}")


async def _revoke(pool: Any, args: argparse.Namespace, actor: str, now: int) -> None:
    await KeyStore(pool).revoke(args.key_id, actor, now)
    print(f"revoked {args.key_id}")


async def _audit(pool: Any, args: argparse.Namespace, _actor: str, _now: int) -> None:
    entries = await audit.recent(pool, args.limit)
    if args.json:
        sys.stdout.write(orjson.dumps(entries).decode() + "\n")
        return
    for e in entries:
        print(f"{_when(e.at)}  {e.actor}  {e.action}  {e.target}  {orjson.dumps(dict(e.detail)).decode()}")


def _show(data: dict[str, Any], as_json: bool, text: str) -> None:
    print(orjson.dumps(data).decode() if as_json else text)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
