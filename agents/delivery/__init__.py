"""The steps a channel agent runs on each batch, one module per step.

    dedup -> route -> throttle -> dead addresses -> render (link check) -> send -> record;  persist

Each step takes the dependencies it needs, built once, and the batch's
:class:`~agents.delivery.batch.BatchOutcome`, which collects what the batch
decided. The decisions (which provider, how many go now, retry or give up,
what the result row says) are plain functions and methods without I/O, tested
without Kafka; the I/O a step needs (markers, throttle windows, dead
addresses, the provider) is one awaited call per batch or per provider group.
:class:`agents.channel.ChannelSender` chains them.
"""
