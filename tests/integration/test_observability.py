"""Observability end to end, with a real Prometheus and a real Alertmanager (Debian's).

One pipeline (worker, API, lag exporter) whose e-mail provider fails: its SMTP port
answers nothing and each message has one attempt, so every e-mail fails for good.
Prometheus scrapes the three processes every second with reach's own rule files.

- every panel query of both dashboards returns data;
- a site message read and a tracked link followed are counted in Prometheus by the labels
  of the message's send;
- ReachDeliverySuccessLow fires for email/smtp-local and Alertmanager posts it to the local
  PrometheusAlert stand-in, which checks the URL conventions and the payload;
- a dead worker inhibits its lag alerts (alerts posted to Alertmanager's API).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.grafana.dashboards import BOARDS
from models.storage import migrate
from models.tracking_links import LinkSigner
from reach.settings import REPO_ROOT, Settings
from tests.integration.harness import (
    Db,
    WorkerProcess,
    bearer,
    clear_redis,
    create_key,
    event,
    free_port,
    make_settings,
    produce_json,
    settings_env,
    unique_run_id,
)
from tests.support import observe
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not observe.available(), reason="deploy/stack.sh installs prometheus")

CHANNELS = """
channels:
  inbox:
    window_seconds: 1
    providers: [{{name: mariadb, type: inbox}}]
  email:
    window_seconds: 1
    providers:
      - name: smtp-local
        type: smtp
        options:
          host: 127.0.0.1
          port: {port}
          security: none
          from_addr: "Reach <noreply@reach.test>"
          unsubscribe_url: "https://reach.test/unsubscribe/{{{{message_id}}}}"
          timeout: 1
  receipts:  # no rule sends here: the API's receipt endpoint, so its counters have series
    window_seconds: 1
    providers:
      - name: webhook-receipts
        type: webhook
        options: {{base_url: "http://127.0.0.1:9", secret: hook-secret}}
"""


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.settings = make_settings(
            tmp, unique_run_id(), CHANNELS.format(port=free_port()), max_attempts=1, exporter_port=free_port()
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker = WorkerProcess(self.settings, tmp / "worker.log")
        self.api_port = free_port()

    def start(self) -> None:
        asyncio.run(migrate(self.settings))
        self.worker.start()
        # One API process, as in deploy/k8s: the scrapes need no multiprocess mode.
        api = ["api", "--workers", "1"]
        self.spawn(api, {"REACH_API_PORT": str(self.api_port)}, f"http://127.0.0.1:{self.api_port}/healthz")
        self.spawn(["exporter"], {}, f"http://127.0.0.1:{self.settings.exporter_port}/healthz")

    def spawn(self, args: list[str], env: dict[str, str], health: str) -> None:
        command = args[0]
        log = open(self.tmp / f"{command}.log", "ab")  # noqa: SIM115 - owned by the subprocess
        full_env = {**os.environ, **settings_env(self.settings), **env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "reach.cli", *args], env=full_env, stdout=log, stderr=log, cwd=REPO_ROOT
        )
        self.procs.append(proc)
        wait_until(lambda: answers(health) or proc.poll() is not None, 60, f"reach {command} to answer")
        assert proc.poll() is None, (self.tmp / f"{command}.log").read_text()[-3000:]

    def targets(self) -> dict[str, str]:
        return {
            "reach-worker": f"127.0.0.1:{self.settings.worker_metrics_port}",
            "reach-api": f"127.0.0.1:{self.api_port}",
            "reach-exporter": f"127.0.0.1:{self.settings.exporter_port}",
        }

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(30)
        self.worker.stop()
        Db(self.settings).drop()
        clear_redis(self.settings)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


EIGHT_HOURS_MS = 8 * 3600 * 1000


def traffic(settings: Settings, api_port: int) -> None:
    """Inbox messages that succeed, e-mails that fail, a bad event, one matching no rule."""
    # 15 e-mails failing: more than the alert's one final outcome a minute over its 10-minute window.
    users = [f"obs-{i}" for i in range(15)]
    profiles = [{"user_id": u, "segments": [], "contact": {"email": f"{u}@reach.test"}} for u in users]
    produce_json(settings, settings.segments_topic, profiles)
    # The profiles are on their own topic; the signup rule needs their e-mail addresses first.
    wait_until(lambda: profiles_loaded(settings, users), 30, "the profiles to be stored")
    events = [event(f"signup-{u}", u, "signup", first_name="Ada") for u in users]
    events[0]["ts"] -= EIGHT_HOURS_MS  # buffered on a phone: old, but not reach's latency
    produce_json(
        settings, settings.events_topic, [*events, event("nothing", "obs-0", "no_rule_matches_this")]
    )
    produce_json(settings, settings.events_topic, [{"user_id": "obs-bad", "name": "broken"}])
    httpx.get(f"http://127.0.0.1:{api_port}/v1/users/obs-0/inbox", timeout=5)


def engage(settings: Settings, api_port: int) -> None:
    """obs-1's site message read, and a link reach signed for it followed: an open and a
    click through the tracking topic, counted by the labels of the message's send."""
    base = f"http://127.0.0.1:{api_port}"
    sent = "SELECT message_id FROM delivery_results WHERE user_id = 'obs-1' AND channel = 'inbox'"
    [(message_id,)] = wait_until(lambda: Db(settings).query(sent), 60, "obs-1's site message sent")
    backend = bearer(create_key(settings, "inbox:read"))  # the app's backend marks it read
    read = httpx.post(f"{base}/v1/users/obs-1/inbox/{message_id}/read", headers=backend, timeout=5)
    assert read.status_code == 204, read.text
    token = LinkSigner.from_settings(settings).click_token(message_id, "https://shop.reach.test/")
    assert httpx.get(f"{base}/v1/t/c/{token}", timeout=5).status_code == 302


def profiles_loaded(settings: Settings, users: list[str]) -> bool:
    rows = Db(settings).query("SELECT COUNT(*) FROM user_profiles WHERE user_id IN %s", (tuple(users),))
    return bool(rows and rows[0][0] == len(users))


def subdir(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Processes, Any, Any, Any]]:
    tmp = tmp_path_factory.mktemp("observability")
    processes = Processes(tmp)
    processes.start()
    try:
        with (
            observe.PrometheusAlertReceiver() as receiver,
            observe.Alertmanager(subdir(tmp, "alertmanager"), receiver.url) as alertmanager,
            observe.Prometheus(
                subdir(tmp, "prometheus"), processes.targets(), f"127.0.0.1:{alertmanager.port}"
            ) as prometheus,
        ):
            # Scraped once before the traffic, so the first increase is seen (rate needs two samples).
            wait_until(lambda: len(prometheus.query("up == 1")) == 3, 30, "every target scraped")
            traffic(processes.settings, processes.api_port)
            engage(processes.settings, processes.api_port)
            yield processes, prometheus, alertmanager, receiver
    finally:
        processes.stop()


def test_every_dashboard_panel_returns_data(observed: tuple[Processes, Any, Any, Any]) -> None:
    _, prometheus, _, _ = observed
    wait_until(
        lambda: prometheus.query("sum(rate(reach_messages_failed_total[5m])) > 0"), 60, "failures scraped"
    )
    queries = [
        (board.uid, panel.title, expr)
        for board in BOARDS
        for panel in board.panels
        for expr, _ in panel.queries
    ]
    empty = []
    for uid, title, expr in queries:
        try:
            wait_until(lambda expr=expr: prometheus.query(expr), 15, expr)  # type: ignore[misc]
        except AssertionError:
            empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_opens_and_clicks_reach_prometheus_by_the_labels_of_their_send(
    observed: tuple[Processes, Any, Any, Any],
) -> None:
    _, prometheus, _, _ = observed
    query = (
        "sum by (kind, channel, provider, platform, category) "
        '(reach_engagement_total{kind=~"opened|clicked"}) > 0'
    )
    found = wait_until(lambda: len(prometheus.query(query)) == 2 and prometheus.query(query), 60, query)
    labels = {
        tuple(r["metric"][k] for k in ("kind", "channel", "provider", "platform", "category")) for r in found
    }
    assert labels == {
        ("opened", "inbox", "mariadb", "ios", "notification"),
        ("clicked", "inbox", "mariadb", "ios", "notification"),
    }
    accepted = 'sum(reach_api_tracking_events_total{result="accepted"}) >= 2'
    assert wait_until(lambda: prometheus.query(accepted), 30, accepted)


def test_a_failing_provider_fires_the_delivery_alert_and_prometheusalert_gets_it(
    observed: tuple[Processes, Any, Any, Any],
) -> None:
    _, prometheus, _, receiver = observed

    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "ReachDeliverySuccessLow"]

    alerts = wait_until(firing, 60, "ReachDeliverySuccessLow to fire")
    assert {(a["labels"]["channel"], a["labels"]["provider"]) for a in alerts} == {("email", "smtp-local")}
    note = receiver.wait_for(
        lambda n: "ReachDeliverySuccessLow" in n.alertnames(), 60, "Alertmanager's Feishu notification"
    )
    observe.check_prometheusalert_payload(note)
    assert note.query == {"type": "fs", "tpl": "prometheus-fs"}
    assert note.body["alerts"][0]["labels"]["severity"] == "warning"
    phone = [n for n in receiver.all() if n.query.get("type") == "alydh"]
    assert all(a["labels"]["severity"] == "critical" for n in phone for a in n.body["alerts"])


def test_a_dead_worker_inhibits_its_lag_alerts(observed: tuple[Processes, Any, Any, Any]) -> None:
    _, _, alertmanager, receiver = observed
    labels = {"service": "reach-inhibition-test", "component": "worker"}
    alertmanager.post_alerts(
        [
            {
                "labels": {**labels, "alertname": "ReachWorkerDown", "severity": "critical"},
                "annotations": annotations(),
            },
            {
                "labels": {
                    **labels,
                    "alertname": "ReachConsumerLagHigh",
                    "severity": "warning",
                    "topic": "t",
                },
                "annotations": annotations(),
            },
        ]
    )

    def lag_inhibited() -> bool:
        lag = [a for a in alertmanager.alerts() if a["labels"]["alertname"] == "ReachConsumerLagHigh"]
        return bool(lag and lag[0]["status"]["inhibitedBy"])

    wait_until(lag_inhibited, 30, "the lag alert to be inhibited")
    page = receiver.wait_for(
        lambda n: n.query.get("type") == "alydh" and "ReachWorkerDown" in n.alertnames(), 30, "the phone page"
    )
    observe.check_prometheusalert_payload(page)
    assert not any(
        "ReachConsumerLagHigh" in n.alertnames()
        and n.body["commonLabels"].get("service") == labels["service"]
        for n in receiver.all()
    )


def annotations() -> dict[str, str]:
    return {"summary": "s", "description": "d", "runbook": "docs/operations.md"}


def test_latency_starts_at_ingestion_and_the_old_events_age_is_apart(
    observed: tuple[Processes, Any, Any, Any],
) -> None:
    processes, _, _, _ = observed
    inbox = {"channel": "inbox"}

    def worker_metrics() -> dict[tuple[str, str], float]:
        text = httpx.get(f"http://{processes.targets()['reach-worker']}/metrics", timeout=10).text
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("channel", "inbox") == inbox["channel"]:
                    found[(sample.name, sample.labels.get("le", ""))] = sample.value
        return found

    found = wait_until(
        lambda: (m := worker_metrics()).get(("reach_end_to_end_seconds_count", ""), 0) >= 15 and m,
        60,
        "15 inbox sends",
    )
    # Every inbox message, the one of the 8-hour-old event too, took under a minute from ingestion.
    assert found[("reach_end_to_end_seconds_bucket", "60.0")] == found[("reach_end_to_end_seconds_count", "")]
    ages = found[("reach_event_age_seconds_count", "")] - found[("reach_event_age_seconds_bucket", "14400.0")]
    assert ages == 1  # only that event was more than 4 hours old when reach took it in


def test_promtool_finds_nothing_wrong_with_what_each_process_exports(
    observed: tuple[Processes, Any, Any, Any],
) -> None:
    processes, _, _, _ = observed
    for job, target in processes.targets().items():
        exposition = httpx.get(f"http://{target}/metrics", timeout=10).content
        assert b"reach_build_info{" in exposition and b"process_resident_memory_bytes" in exposition, job
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False
        )
        assert result.returncode == 0, f"{job}: {result.stdout.decode()}{result.stderr.decode()}"
