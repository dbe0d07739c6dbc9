"""A restarted worker recovers its profile table from the changelog and carries on."""

from __future__ import annotations

import pytest

from tests.integration.conftest import start_pipeline, stop_pipeline
from tests.integration.harness import event, produce_json, wait_until
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


def test_profiles_survive_a_worker_restart(tmp_path, smtp_server: SmtpTestServer) -> None:
    p = start_pipeline(tmp_path, smtp_server)
    try:
        produce_json(
            p.settings,
            p.settings.segments_topic,
            [{"user_id": "restart-1", "segments": [], "contact": {"email": "restart-1@example.com"}}],
        )
        wait_until(
            lambda: p.db.query("SELECT 1 FROM user_profiles WHERE user_id = 'restart-1'"), 30, "the profile"
        )
        signup = event("restart-e1", "restart-1", "signup", first_name="Ida")
        produce_json(p.settings, p.settings.events_topic, [signup])
        wait_until(lambda: smtp_server.messages_to("restart-1@example.com"), 30, "the first email")

        p.worker.kill()
        p.worker.start()
        produce_json(
            p.settings,
            p.settings.events_topic,
            [event("restart-e2", "restart-1", "password_reset_requested", reset_url="https://x.test/r")],
        )
        wait_until(
            lambda: len(smtp_server.messages_to("restart-1@example.com")) >= 2,
            60,
            "an email after the restart, addressed from the recovered profile",
        )
        assert "Error in recovery" not in p.worker.log()
    finally:
        stop_pipeline(p)
