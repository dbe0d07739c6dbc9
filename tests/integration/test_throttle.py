"""Tumbling-window throttling holds its limit across a worker crash, and loses nothing."""

from __future__ import annotations

import collections

import pytest

from tests.integration.conftest import start_pipeline, stop_pipeline
from tests.integration.harness import event, produce_json, wait_until
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration

LIMIT, WINDOW_S, TOTAL = 5, 2, 30


def test_throttle_limit_holds_across_a_worker_restart(tmp_path, smtp_server: SmtpTestServer) -> None:
    p = start_pipeline(tmp_path, smtp_server, inbox_limit=f"limit_per_window: {LIMIT}", window=WINDOW_S)
    try:
        produce_json(
            p.settings,
            p.settings.events_topic,
            [event(f"thr-{i}", f"thr-user-{i % 7}", "test_ping", n=i) for i in range(TOTAL)],
        )
        sent = lambda: p.db.query(  # noqa: E731
            "SELECT attempted_at FROM delivery_results WHERE channel = 'inbox' AND status = 'sent'"
        )
        wait_until(lambda: len(sent()) >= LIMIT, 60, "the first window's messages")
        p.worker.kill()  # a crash: nothing is flushed or committed on the way out
        p.worker.start()
        rows = wait_until(lambda: len(sent()) == TOTAL and sent(), 120, f"all {TOTAL} messages")
        per_window = collections.Counter(at // (WINDOW_S * 1000) for (at,) in rows)
        assert max(per_window.values()) <= LIMIT, per_window
        assert len(per_window) >= TOTAL // LIMIT
        inbox = p.db.query("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM inbox_messages")
        assert inbox == [(TOTAL, TOTAL)]
    finally:
        stop_pipeline(p)
