"""The topology's buffers: what the worker may hold in memory read ahead of its agents."""

from __future__ import annotations

from pathlib import Path

from reach.settings import Settings
from streams.app import create_app, outbox_buffer, outbox_topic


def test_outbox_topics_buffer_a_few_batches_of_frames_not_the_app_wide_record_count(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, batch_size=1000, outbox_frame_messages=500)
    app = create_app(settings)
    assert outbox_buffer(settings) == 16
    # A frame holds up to 500 messages (~290 KB for a task's): 16 of them, not 4,096.
    assert outbox_topic(app, settings, "inbox").queue.maxsize == 16 < app.conf.stream_buffer_maxsize
