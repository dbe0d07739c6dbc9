"""The worker's configuration and resources, in the order start-up builds them.

    Setup.load()   settings, channels, rules, metrics, routing, policies: opens nothing
    Runtime.open() MariaDB pool, Redis client, the stores over them, the providers
    build()        the faust app and its agents (``streams/app.py``), given the Runtime
    close()        everything Runtime.open() opened, in reverse order

A :class:`Runtime` exists only once every resource is open, so no field is ever empty
and no agent checks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry

from agents.taskgate import TaskGate
from channels.base import Provider, ProviderContext
from channels.config import ChannelConfig, ChannelsConfig
from channels.registry import provider_class
from channels.routing import WeightedChooser
from models.addresses import DeadAddressStore
from models.cancel_markers import CANCEL_GRACE_MS, CancelMarkers
from models.cap_counts import CapCounts
from models.phones import PhoneHasher
from models.policies import Policies, load_policies
from models.preferences import PreferenceCache, Preferences, PreferenceStore
from models.redis_state import DeferredQueue, SentMarkers, WindowThrottle
from models.storage import ProfileStore, ResultStore, close_pool, create_pool
from models.taskstore import TaskStore
from models.upgrades import UpgradeTarget, upgrade_targets
from reach.clock import Clock, SystemClock
from reach.metrics import WorkerMetrics
from reach.settings import Settings
from rules.links import LinkDomains
from rules.loader import Categories, RuleLimits
from rules.reloader import RuleReloader

log = structlog.get_logger("reach.runtime")

Providers = dict[str, dict[str, Provider]]  # channel -> provider name -> started provider


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the worker loads before it opens anything (:meth:`load`)."""

    settings: Settings
    channels: ChannelsConfig
    rules: RuleReloader
    registry: CollectorRegistry
    metrics: WorkerMetrics
    clock: Clock
    choosers: dict[str, WeightedChooser]
    policies: Policies
    link_domains: LinkDomains | None  # None: links are not checked
    #: per platform, the minimum app version and upgrade URL (REACH_MIN_APP_VERSIONS, REACH_UPGRADE_URLS)
    upgrades: dict[str, UpgradeTarget]

    @classmethod
    def load(cls, settings: Settings, channels: ChannelsConfig, clock: Clock | None = None) -> Setup:
        """Load rules (raising on a bad rule file), channel routing, policies (raising
        :class:`~models.policies.PolicyFileError`) and the upgrade settings (raising
        :class:`~models.upgrades.UpgradeConfigError`); opens nothing."""
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        providers = {name: [p.name for p in c.providers] for name, c in channels.channels.items()}
        metrics.start_series(providers)
        metrics.start_engagement_series(providers, settings.category_names)
        return cls(
            settings,
            channels,
            rule_reloader(settings, channels, metrics),
            registry,
            metrics,
            clock or SystemClock(),
            {name: chooser_for(channel) for name, channel in channels.channels.items()},
            load_policies(settings.policies_file, settings.category_names),
            link_domains_of(settings),
            upgrade_targets(settings.min_app_versions, settings.upgrade_urls),
        )

    @property
    def platforms(self) -> dict[str, str]:
        """The channels bound to one platform's app (``platform`` in the channels file)."""
        return {name: c.platform for name, c in self.channels.channels.items() if c.platform}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Runtime(Setup):
    """The setup with the worker's resources open. Built only by :meth:`open`."""

    mysql_pool: Any  # aiomysql pool
    redis: Any  # redis.asyncio client
    results: ResultStore
    profiles: ProfileStore
    throttle: WindowThrottle
    sent: SentMarkers
    deferred: DeferredQueue
    dead_addresses: DeadAddressStore
    cancel_markers: CancelMarkers
    preferences: Preferences
    caps: CapCounts
    taskgate: TaskGate
    providers: Providers
    _closing: contextlib.AsyncExitStack = dataclasses.field(repr=False, compare=False)

    @classmethod
    async def open(cls, setup: Setup) -> Runtime:
        """Open MariaDB, Redis and every provider (``setup()``); when one fails, what was
        already opened is closed before the error propagates."""
        stack = contextlib.AsyncExitStack()
        try:
            return await cls._open_on(stack, setup)
        except BaseException:
            await stack.aclose()
            raise

    @classmethod
    async def _open_on(cls, stack: contextlib.AsyncExitStack, setup: Setup) -> Runtime:
        s = setup.settings
        pool = await create_pool(s)
        stack.push_async_callback(close_pool, pool)
        redis = await open_redis(s)
        stack.push_async_callback(redis.aclose)
        context = ProviderContext(pool, redis, s.redis_prefix, setup.clock)
        providers = await start_providers(stack, setup.channels, context)
        # A cancelled marker must outlive the longest delay plus the grace after it.
        cancelled_ttl_ms = s.rules_max_delay * 1000 + CANCEL_GRACE_MS
        preference_cache = PreferenceCache(redis, s.redis_prefix, s.preferences_cache_ttl)
        return cls(
            **{f.name: getattr(setup, f.name) for f in dataclasses.fields(Setup)},
            mysql_pool=pool,
            redis=redis,
            results=ResultStore(pool),
            profiles=ProfileStore(pool, PhoneHasher.from_settings(s)),
            throttle=WindowThrottle(redis, s.redis_prefix),
            sent=SentMarkers(redis, s.redis_prefix, s.sent_marker_ttl),
            deferred=DeferredQueue(redis, s.redis_prefix),
            dead_addresses=DeadAddressStore(pool, s.dead_address_ttl * 1000),
            cancel_markers=CancelMarkers(redis, s.redis_prefix, cancelled_ttl_ms),
            preferences=Preferences(PreferenceStore(pool), preference_cache),
            caps=CapCounts(redis, s.redis_prefix),
            taskgate=TaskGate(TaskStore(pool), s.task_pause_recheck_ms, setup.metrics.task_messages),
            providers=providers,
            _closing=stack,
        )

    async def close(self) -> None:
        """Close the providers, then Redis, then the MariaDB pool: the reverse of ``open``."""
        await self._closing.aclose()


async def open_redis(settings: Settings) -> Any:
    """The worker's Redis client, once it answers a PING."""
    # Timeouts turn a hung Redis into an error the agents retry, instead of a stall.
    client = aioredis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    try:
        await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


async def start_providers(
    stack: contextlib.AsyncExitStack, channels: ChannelsConfig, context: ProviderContext
) -> Providers:
    """Every channel's providers, set up; each one's ``close`` is on ``stack`` before its
    ``setup`` runs (the contract: close is called also after a failed setup)."""
    started: Providers = {}
    for channel in channels.channels.values():
        started[channel.name] = {}
        for config in channel.providers:
            provider = provider_class(config.type)(config, context)
            stack.push_async_callback(provider.close)
            await provider.setup()
            started[channel.name][config.name] = provider
            log.info("provider.started", channel=channel.name, provider=config.name, type=config.type)
    return started


def rule_reloader(settings: Settings, channels: ChannelsConfig, metrics: WorkerMetrics) -> RuleReloader:
    """The rule files, loaded (raising on a bad one) and watched for changes."""
    return RuleReloader(
        settings.rules_dir,
        known_channels=list(channels.channels),
        on_error=lambda _exc: metrics.rules_reloads.labels("refused").inc(),
        limits=RuleLimits(
            settings.rules_max_file_bytes,
            settings.rules_max_total_bytes,
            settings.rules_max_delay * 1000,
        ),
        categories=Categories(settings.category_names, settings.default_category),
    )


def link_domains_of(settings: Settings) -> LinkDomains | None:
    """REACH_LINK_DOMAINS and reach's own host (its unsubscribe links), or None when unset;
    raises ``ValueError`` naming an entry that is not a host name."""
    if not settings.link_domains:
        return None
    own = urllib.parse.urlsplit(settings.public_url).hostname
    return LinkDomains.parse([*settings.link_domains, *([own] if own else [])])


def chooser_for(channel: ChannelConfig) -> WeightedChooser:
    """The channel's weighted chooser, aware of which contact fields each provider sends to
    and reads."""
    fields = {p.name: provider_class(p.type).address_fields for p in channel.providers}
    read = {p.name: provider_class(p.type).contact_fields(p) for p in channel.providers}
    return WeightedChooser(channel.providers, address_fields=fields, contact_fields=read)
