"""``reach tasks``: create tasks from task files, list, show (and watch), cancel, pause, resume.

The commands talk to the HTTP API (``--api``, default ``http://REACH_API_HOST:REACH_API_PORT``)
with the API key in ``REACH_API_KEY`` (scope ``tasks:write``),
so the CLI and any other client see the same validation and the same answers. A task file
is the API's task body in YAML; its audience may also name ``list_file`` (CSV or JSON lines
of user ids, relative to the task file), which is uploaded first, with a progress bar, and
replaced by the list id it gets. Examples: ``deploy/examples/tasks/``.

Exit status: 0 done, 1 the task file or the request was refused (every problem printed as
``FILE: field: message``), 2 the API could not be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

from reach.settings import Settings

UPLOAD_CHUNK = 64 * 1024
WATCH_INTERVAL = 1.0
DONE_OUTCOMES = ("sent", "failed", "unknown", "suppressed")


NO_KEY = (
    "error: set REACH_API_KEY to an API key with the tasks:write scope "
    "(an operator makes one: reach keys create NAME --scope tasks:write)"
)


class CliError(Exception):
    """Refused input or answer; the message is what the user reads. ``status`` is the exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", metavar="URL", help="API base URL (default: REACH_API_HOST:REACH_API_PORT)")
    tasks = sub.add_parser("tasks", help="reach tasks (through the HTTP API)")
    commands = tasks.add_subparsers(title="tasks commands")
    create = commands.add_parser("create", parents=[common], help="create a task from a task file (YAML)")
    create.add_argument("file")
    create.add_argument("--idempotency-key", help="repeat a create safely: same key and file, same task")
    create.set_defaults(run=run(_create))
    listing = commands.add_parser("list", parents=[common], help="tasks, newest first")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=run(_list))
    show = commands.add_parser("show", parents=[common], help="a task's status and counts")
    show.add_argument("task_no", type=int)
    show.add_argument("--watch", action="store_true", help="a live progress bar until the task ends")
    show.set_defaults(run=run(_show))
    for action in ("cancel", "pause", "resume"):
        command = commands.add_parser(action, parents=[common], help=f"{action} a task")
        command.add_argument("task_no", type=int)
        command.set_defaults(run=run(_action), action=action)


def run(command: Any) -> Any:
    def runner(settings: Settings, args: argparse.Namespace) -> int:
        base = (args.api or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
        if settings.api_key is None:
            print(NO_KEY, file=sys.stderr)
            return 1
        headers = {"X-Reach-Actor": "cli", "Authorization": f"Bearer {settings.api_key.get_secret_value()}"}
        try:
            with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
                command(client, args, Console(markup=False, highlight=False))
        except CliError as exc:
            print(str(exc), file=sys.stderr)
            return exc.status
        except httpx.TransportError as exc:
            print(
                f"error: the API at {base} did not answer ({type(exc).__name__}); --api URL", file=sys.stderr
            )
            return 2
        return 0

    return runner


# -- create -------------------------------------------------------------------------------------
def load_task_file(path: Path) -> dict[str, Any]:
    """The task body of a YAML task file; raises CliError naming the file and line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise CliError(f"{where}: not YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a task file is a YAML mapping (see deploy/examples/tasks/)")
    return data


def _create(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    path = Path(args.file)
    body = load_task_file(path)
    audience = body.get("audience")
    if isinstance(audience, dict) and "list_file" in audience:
        list_file = path.parent / str(audience.pop("list_file"))
        audience["lists"] = [*audience.get("lists", []), upload(client, list_file, console)]
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    answer = client.post("/v1/tasks", json=_plain(body), headers=headers)
    task = checked(answer, str(path))
    verb = "created" if answer.status_code == 201 else "already created"
    console.print(f"task {task['task_no']} {verb}: {task['name']} ({task['status']}, next run {when(task)})")


def _plain(value: Any) -> Any:
    """YAML values as JSON: an unquoted timestamp becomes its RFC 3339 text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def upload(client: httpx.Client, path: Path, console: Console) -> str:
    """Stream a list file to ``POST /v1/audiences``; returns the list id."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror}") from None
    kind = "text/csv" if path.suffix.lower() == ".csv" else "application/x-ndjson"
    with Progress(
        TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), console=console
    ) as bar:
        job = bar.add_task(path.name, total=size)
        answer = client.post(
            "/v1/audiences", content=_chunks(path, bar, job), headers={"content-type": kind}, timeout=None
        )
    listed = checked(answer, str(path))
    console.print(f"uploaded {listed['members']} user ids from {path.name}: list {listed['list_id']}")
    return str(listed["list_id"])


def _chunks(path: Path, bar: Progress, job: Any) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(UPLOAD_CHUNK):
            bar.advance(job, len(chunk))
            yield chunk


def checked(answer: httpx.Response, source: str) -> Any:
    """The answer's JSON, or CliError with every problem the API named."""
    if answer.is_success:
        return answer.json()
    try:
        error = answer.json()
    except ValueError:
        raise CliError(f"{source}: the API answered {answer.status_code}: {answer.text[:200]}") from None
    details = error.get("details") or []
    lines = [f"{source}: {d.get('field', d.get('line', ''))}: {d.get('message', '')}" for d in details]
    return _raise(lines or [f"{source}: {error.get('error')}: {error.get('message')}"])


def _raise(lines: list[str]) -> Any:
    raise CliError("\n".join(lines))


# -- list, show, actions -----------------------------------------------------------------------
def _list(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    page = checked(client.get("/v1/tasks", params=params), "list")
    for task in page["items"]:
        console.print(
            f"{task['task_no']:>17}  {task['status']:<10} {task['schedule_kind']:<10} "
            f"{task['category']:<13} next {when(task):<20} {task['name']}"
        )


def _show(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    task = checked(client.get(f"/v1/tasks/{args.task_no}"), f"task {args.task_no}")
    if args.watch:
        task = watch(client, task, console)
    console.print(describe(task))


def _action(client: httpx.Client, args: argparse.Namespace, console: Console) -> None:
    task = checked(client.post(f"/v1/tasks/{args.task_no}/{args.action}"), f"task {args.task_no}")
    console.print(f"task {task['task_no']} is {task['status']}")


def done_count(task: dict[str, Any]) -> int:
    return sum(task["counts"].get(outcome, 0) for outcome in DONE_OUTCOMES)


def ended(task: dict[str, Any]) -> bool:
    """Final and nothing left to account for (a cancelled or failed task ends at once)."""
    if task["status"] in ("cancelled", "failed"):
        return True
    return task["status"] == "completed" and done_count(task) >= task["counts"]["planned"]


def watch(client: httpx.Client, task: dict[str, Any], console: Console) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[line]}"),
    )
    with Progress(*columns, console=console) as bar:
        job = bar.add_task(f"task {task['task_no']}", total=None, line="")
        while True:
            planned = task["counts"]["planned"]
            bar.update(job, total=planned or None, completed=done_count(task), line=progress_line(task))
            if ended(task):
                return task
            time.sleep(WATCH_INTERVAL)  # a terminal refresh, not a test wait
            task = checked(client.get(f"/v1/tasks/{task['task_no']}"), f"task {task['task_no']}")


def progress_line(task: dict[str, Any]) -> str:
    c = task["counts"]
    return (
        f"{task['status']}: planned {c['planned']}, sent {c['sent']}, failed {c['failed']}, "
        f"suppressed {c['suppressed']}"
    )


def describe(task: dict[str, Any]) -> str:
    c = task["counts"]
    lines = [
        f"task {task['task_no']}: {task['name']} [{task['category']}]",
        f"  status {task['status']}, schedule {task['schedule_kind']}, next run {when(task)}",
        f"  audience {c['audience']}, planned {c['planned']}, sent {c['sent']}, delivered {c['delivered']}, "
        f"failed {c['failed']}, unknown {c['unknown']}, suppressed {c['suppressed']}",
    ]
    for channel, per in c["per_channel"].items():
        lines.append(f"  {channel}: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    return "\n".join(lines)


def when(task: dict[str, Any]) -> str:
    at = task.get("next_run_at")
    if at is None:
        return "none"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at / 1000))
