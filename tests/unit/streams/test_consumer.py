"""The guarded consumer's copy of faust's fetch loop must follow the installed faust."""

from __future__ import annotations

import hashlib
import inspect

from faust.transport.consumer import Consumer

from streams.consumer import GuardedConsumer

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages source, which
# streams/consumer.py copies with two stale-record checks added.
FORKED_FROM = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_faust_fetch_loop_is_the_one_the_guard_was_copied_from() -> None:
    source = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == FORKED_FROM, (
        "faust's Consumer._drain_messages changed: port the change into"
        " streams/consumer.py GuardedConsumer._drain_messages, then update FORKED_FROM"
    )


def test_guarded_loop_keeps_the_stale_checks() -> None:
    source = inspect.getsource(GuardedConsumer._drain_messages)
    assert source.count("self._stale(tp)") == 2
