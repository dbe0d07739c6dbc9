"""Throwaway Prometheus and Alertmanager (Debian's binaries) for the observability tests, and a
local stand-in for PrometheusAlert's ``/prometheusalert`` endpoint that checks what it receives.

Each server gets its own port and directory and is stopped when the ``with`` block ends.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from reach.settings import REPO_ROOT
from tests.support.waiting import wait_until

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
PROMETHEUSALERT_LOCAL = "http://127.0.0.1:8081"  # the base URL in deploy/alertmanager/alertmanager.yml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return all(shutil.which(b) for b in ("prometheus", "prometheus-alertmanager"))


class Server:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str], ready_path: str) -> None:
        log = open(self.dir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_until(lambda: self._ready(ready_path), 30, f"{self.name} to be ready")

    def _ready(self, path: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log()[-3000:]}")
        try:
            return httpx.get(self.url + path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return (self.dir / f"{self.name}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def fast_rules(target: Path) -> Path:
    """reach's rule files with every ``for:`` at 0s: the test does not wait out the durations
    (the promtool unit tests cover them); the expressions are unchanged."""
    target.mkdir(parents=True, exist_ok=True)
    for path in RULES_DIR.glob("*.yml"):
        (target / path.name).write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", path.read_text()))
    return target


class Prometheus(Server):
    def __init__(self, directory: Path, targets: dict[str, str], alertmanager: str | None = None) -> None:
        super().__init__("prometheus", directory)
        self.targets = targets
        self.alertmanager = alertmanager

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(fast_rules(self.dir / "rules") / "*.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.targets.items()
            ],
        }
        if self.alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]}
        return config

    def __enter__(self) -> Prometheus:
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config()))
        self.start(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            "/-/ready",
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return [a for a in answer["data"]["alerts"] if a["state"] == state]


class Alertmanager(Server):
    """deploy/alertmanager/alertmanager.yml with PrometheusAlert's base URL pointed at
    ``receiver_url`` and the group waits shortened; routes and inhibitions unchanged."""

    def __init__(self, directory: Path, receiver_url: str) -> None:
        super().__init__("alertmanager", directory)
        self.receiver_url = receiver_url

    def __enter__(self) -> Alertmanager:
        text = ALERTMANAGER_CONFIG.read_text().replace(PROMETHEUSALERT_LOCAL, self.receiver_url)
        text = re.sub(r"group_wait: \S+", "group_wait: 1s", text)
        (self.dir / "alertmanager.yml").write_text(text)
        self.start(
            [
                "prometheus-alertmanager",
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            "/-/ready",
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v2/alerts", timeout=10).json()
        return found


class Notification:
    def __init__(self, path: str, query: dict[str, str], body: dict[str, Any]) -> None:
        self.path, self.query, self.body = path, query, body

    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.body["alerts"]}


def check_prometheusalert_payload(note: Notification) -> None:
    """What PrometheusAlert's /prometheusalert endpoint and its prometheus-* templates read:
    type and tpl in the URL, Alertmanager's webhook body (version 4) with each alert's status,
    labels (alertname, severity), annotations (summary, description), startsAt and
    generatorURL."""
    assert note.path == "/prometheusalert", note.path
    assert note.query.get("type") in {"fs", "alydh"} and note.query.get("tpl"), note.query
    body = note.body
    assert body["version"] == "4" and body["status"] in {"firing", "resolved"}, body
    assert body["receiver"] in {"feishu", "phone"} and body["groupLabels"], body
    for alert in body["alerts"]:
        assert {"alertname", "severity"} <= set(alert["labels"]), alert
        assert {"summary", "description", "runbook"} <= set(alert["annotations"]), alert
        assert alert["startsAt"] and alert["generatorURL"] is not None, alert


class PrometheusAlertReceiver:
    """A local HTTP server recording the webhooks Alertmanager posts."""

    def __init__(self) -> None:
        self.notes: list[Notification] = []
        received = self.notes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append(Notification(url.path, dict(urllib.parse.parse_qsl(url.query)), body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"code":0}')

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> PrometheusAlertReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, matches: Callable[[Notification], bool], seconds: float, what: str) -> Notification:
        wait_until(lambda: any(matches(n) for n in list(self.notes)), seconds, what)
        return next(n for n in list(self.notes) if matches(n))

    def all(self) -> Iterator[Notification]:
        return iter(list(self.notes))
