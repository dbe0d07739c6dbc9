"""faust's aiokafka consumer, with one rule added: a record fetched before its partition was
sought is never handed to an agent and never moves faust's read offset.

Why. Every start and every rebalance ends in faust's ``on_recovery_completed``
(``faust/tables/recovery.py``), which resumes the stream partitions, seeks
them to their committed offsets (one offset lookup per partition, in turn)
and then clears every agent's input queue. Records keep flowing the whole
time: the fetch loop (``Consumer._drain_messages``) iterates a batch it
fetched *before* the seek, and each record it delivers sets the read offset
past the offset the seek has just put back. Then:

1. the queue clear drops the records delivered before the clear;
2. aiokafka, sought back, fetches them again, but faust discards the copies
   as already read (they are below the read offset);
3. the next new record lies beyond the read offset by more than one, so
   faust records a "gap", which its commit logic counts as acked.

The committed offset jumps past records that were never processed: they
are lost without a trace. With a table (the profile table) the window is
the changelog replay plus the lookups; slowing each lookup by 40 ms turned
the loss from rare into one run in three (the crash harness,
``tests/chaos``, reproduces it).

The fix orders fetches and seeks strictly. A seek of the stream partitions
waits until no fetch is in flight and holds new fetches back until it is
done, so every batch of records was fetched wholly before or wholly after a
seek; each fetch remembers the seek counters it saw. A record whose fetch
predates its partition's latest seek is stale: it is not delivered, and it
neither records a gap nor moves the read offset. aiokafka, sought back,
fetches it again, and that copy is delivered. Partitions with no committed
offset are sought to their earliest offset too (aiokafka leaves them where
they are), so every dropped record is really read again. The acked and gap
bookkeeping of sought partitions is reset: it refers to offsets that will be
read again.

``_drain_messages`` is faust-streaming 0.15.3's loop with the two stale
checks added; ``tests/unit/streams/test_consumer.py`` fails when the
installed faust's loop differs from the one this copy was made from.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message
from mode import Service, ServiceT

Epochs = collections.Counter[TP]


class GuardedConsumer(aiokafka_driver.Consumer):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reset = self.app.conf.consumer_auto_offset_reset
        if reset != "earliest":
            raise ValueError(f"GuardedConsumer re-reads from the earliest offset; got reset policy {reset!r}")
        self._seeks: Epochs = collections.Counter()  # stream-partition seeks so far
        self._fetch_epochs: Epochs = collections.Counter()  # the counters the latest fetch saw
        self._fetch_idle = asyncio.Event()
        self._fetch_idle.set()
        self._seek_done = asyncio.Event()
        self._seek_done.set()
        self._seek_lock = asyncio.Lock()
        self.stale_dropped = 0  # records fetched before a seek and not delivered (read again instead)
        self.committed_at: float | None = None  # monotonic time of the last commit that moved an offset

    # -- fetches and seeks, strictly ordered ------------------------------------
    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109
        await self._seek_done.wait()
        self._fetch_epochs = self._seeks.copy()
        self._fetch_idle.clear()
        try:
            return await super()._getmany(active_partitions, timeout)
        finally:
            self._fetch_idle.set()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        async with self._seek_lock:
            self._seek_done.clear()
            try:
                await self._fetch_idle.wait()
                return await self._seek_stream_partitions()
            finally:
                self._seek_done.set()

    async def _seek_stream_partitions(self) -> Mapping[TP, int]:
        tps = self._stream_partitions()
        committed = await super().seek_to_committed()
        unset = [tp for tp in tps if not committed.get(tp)]
        if unset:
            for tp, offset in (await self.earliest_offsets(*unset)).items():
                await self._seek(tp, offset)
        self._seeks.update(tps)
        self._forget(tps)
        return committed

    def _stream_partitions(self) -> set[TP]:
        changelogs = self.app.tables.changelog_topics
        return {tp for tp in self.assignment() if tp.topic not in changelogs}

    def _forget(self, tps: Iterable[TP]) -> None:
        """Drop acked and gap bookkeeping above the committed offset: those offsets are read again."""
        for tp in tps:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)

    def _stale(self, tp: TP) -> bool:
        """The record of ``tp`` being delivered was fetched before ``tp``'s latest seek."""
        return self._seeks[tp] != self._fetch_epochs[tp]

    # -- commits and lag ---------------------------------------------------------
    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        committed = bool(await super()._commit(offsets))
        if committed:
            self.committed_at = time.monotonic()
        return committed

    def uncommitted(self) -> tuple[int, int]:
        """(stream partitions assigned, messages above their committed offsets as last fetched)."""
        tps = self._stream_partitions()
        behind = 0
        for tp in tps:
            highwater = self.highwater(tp)
            if highwater is not None:
                behind += max(0, highwater - (self._committed_offset.get(tp) or 0))
        return len(tps), behind

    # -- faust-streaming 0.15.3 Consumer._drain_messages, with the stale checks ----------------
    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - faust's loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator[tuple[TP, Message]], getmany(timeout=1.0))

                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        if self._stale(tp):  # reach: fetched before a seek
                            self.stale_dropped += 1
                            continue

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            if not self._stale(tp):  # reach: a seek ran meanwhile
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


class GuardedTransport(aiokafka_driver.Transport):
    Consumer = GuardedConsumer
