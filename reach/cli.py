"""The ``reach`` command line.

reach worker                      run the stream-processing worker
reach api [--workers N]           run the HTTP API (N processes, default one per core)
reach exporter                    serve the consumer group's lag, read from the broker
reach rules validate PATH...      check rule files; non-zero exit on any error
reach events send [FILE]          produce events (JSON object, array or JSON lines; stdin by default)
reach profiles send [FILE]        produce user profiles (segments, contact) the same way
reach db migrate                  create the database and tables
reach topics create               create the Kafka topics
reach channels [--json]           list channels and providers, secrets masked
reach tasks create FILE.yaml      create a reach task from a task file (through the HTTP API)
reach tasks list | show N [--watch] | cancel N | pause N | resume N
reach keys create|list|rotate|revoke  API keys of calling systems (reach/access_cli.py)
reach audit [--limit N]           the latest audit log entries
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import orjson

from reach import access_cli, logs, taskcli
from reach.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    result: int = args.run(settings, args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reach", description="CRM user reach")
    sub = parser.add_subparsers(title="commands")
    sub.add_parser("worker", help="run the stream-processing worker").set_defaults(run=_worker)
    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="API processes sharing the port (default: one per CPU core)",
    )
    api.set_defaults(run=_api)
    sub.add_parser(
        "exporter", help="serve the consumer group's lag from the broker (lives when the worker is down)"
    ).set_defaults(run=_exporter)
    rules = sub.add_parser("rules", help="rule files").add_subparsers(title="rules commands")
    validate = rules.add_parser("validate", help="validate rule files or directories")
    validate.add_argument("paths", nargs="+")
    validate.add_argument(
        "--channels", metavar="FILE", help="channels file (default: REACH_CHANNELS_FILE, as the worker)"
    )
    validate.set_defaults(run=_rules_validate)
    for noun, runner in (("events", _events_send), ("profiles", _profiles_send)):
        group = sub.add_parser(noun, help=f"{noun} topic").add_subparsers(title=f"{noun} commands")
        send = group.add_parser("send", help=f"produce {noun} from a file or stdin")
        send.add_argument(
            "file", nargs="?", default="-", help="JSON object, array or JSON lines; - for stdin"
        )
        send.set_defaults(run=runner)
    db = sub.add_parser("db", help="database").add_subparsers(title="db commands")
    db.add_parser("migrate", help="create the database and tables").set_defaults(run=_db_migrate)
    db.add_parser(
        "reindex-phones", help="index the profiles' phones again under REACH_PHONE_INDEX_KEY (after a change)"
    ).set_defaults(run=_db_reindex_phones)
    topics = sub.add_parser("topics", help="Kafka topics").add_subparsers(title="topics commands")
    topics.add_parser("create", help="create the topics").set_defaults(run=_topics_create)
    channels = sub.add_parser(
        "channels", help="list the configured channels and providers (secrets masked) and the known types"
    )
    channels.add_argument("--json", action="store_true", help="print JSON instead of text")
    channels.set_defaults(run=_channels)
    taskcli.add_commands(sub)
    access_cli.add_parsers(sub)
    return parser


def _channels(settings: Settings, args: argparse.Namespace) -> int:
    from channels.config import ChannelsConfigError, load_channels, masked
    from channels.registry import known_types, provider_class

    try:
        config = load_channels(settings.channels_file, os.environ)
    except ChannelsConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    listing = masked(config)
    for channel in listing["channels"].values():
        for entry in channel["providers"]:
            entry["address_fields"] = list(provider_class(entry["type"]).address_fields)
    listing["source"] = str(settings.channels_file)
    listing["provider_types"] = list(known_types())
    if args.json:
        sys.stdout.write(orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"channels file: {listing['source']}")
    for name, channel in listing["channels"].items():
        limit = channel.get("limit_per_window")
        print(f"\n{name}  window {channel['window_seconds']} s, limit {limit if limit else 'none'}")
        for entry in channel["providers"]:
            fields = ", ".join(entry["address_fields"]) or "no address"
            print(f"  - {entry['name']}  type {entry['type']}  weight {entry['weight']}  sends to: {fields}")
            for key, value in sorted(entry.get("options", {}).items()):
                print(f"      {key}: {value}")
    print(f"\nprovider types: {', '.join(listing['provider_types'])}")
    return 0


def _worker(settings: Settings, _args: argparse.Namespace) -> int:
    from reach import worker

    worker.run(settings)
    return 0


def _exporter(settings: Settings, _args: argparse.Namespace) -> int:
    from reach import exporter

    exporter.run(settings)
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from api import serve

    return serve.run(settings, args.workers or serve.default_workers())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rules_validate(settings: Settings, args: argparse.Namespace) -> int:
    from rules.cli import validate_like_worker
    from rules.loader import RuleLimits

    limits = RuleLimits(
        settings.rules_max_file_bytes, settings.rules_max_total_bytes, settings.rules_max_delay * 1000
    )
    channels_file = args.channels or settings.channels_file
    return validate_like_worker(args.paths, channels_file, os.environ, limits)


def read_json_records(stream: TextIO) -> Iterator[Any]:
    """A JSON object, a JSON array of objects, or one JSON value per line."""
    text = stream.read()
    stripped = text.lstrip()
    if not stripped:
        return
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise SystemExit(f"line {number}: not JSON: {exc}") from None
        return
    yield from data if isinstance(data, list) else [data]


def _send(settings: Settings, args: argparse.Namespace, topic: str, parse: Callable[[Any], Any]) -> int:
    from models.events import EventError
    from reach.producer import SyncProducer

    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with stream:
        records = []
        for index, raw in enumerate(read_json_records(stream)):
            try:
                item = parse(raw)
            except EventError as exc:
                print(f"record {index}: {exc.reason}: {exc.detail}", file=sys.stderr)
                return 1
            records.append((item.user_id.encode(), orjson.dumps(raw)))
    sent = SyncProducer(settings.kafka_bootstrap).send_many(topic, records)
    print(f"sent {sent} records to {topic}")
    return 0


def _events_send(settings: Settings, args: argparse.Namespace) -> int:
    from models.events import event_from_dict

    return _send(settings, args, settings.events_topic, event_from_dict)


def _profiles_send(settings: Settings, args: argparse.Namespace) -> int:
    from models.profiles import profile_from_dict

    return _send(settings, args, settings.segments_topic, profile_from_dict)


def _db_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from models.storage import migrate

    asyncio.run(migrate(settings))
    print(f"database {settings.mysql_database!r} is up to date")
    return 0


def _db_reindex_phones(settings: Settings, _args: argparse.Namespace) -> int:
    from models.phones import PhoneHasher, reindex
    from models.storage import create_pool
    from reach.clock import SystemClock

    async def run() -> int:
        pool = await create_pool(settings, maxsize=1)
        try:
            return await reindex(pool, PhoneHasher.from_settings(settings), SystemClock().now_ms())
        finally:
            pool.close()
            await pool.wait_closed()

    print(f"indexed the phones of {asyncio.run(run())} profiles")
    return 0


def _topics_create(settings: Settings, _args: argparse.Namespace) -> int:
    from channels.config import load_channels
    from streams.topics import ensure_topics

    channels = load_channels(settings.channels_file, os.environ)
    created = asyncio.run(ensure_topics(settings, channels.channels))
    print(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
