"""The worker's shared resources, opened once before the agents start."""

from __future__ import annotations

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
from models.storage import ProfileStore, ResultStore, create_pool
from models.taskstore import TaskStore
from models.upgrades import UpgradeTarget, upgrade_targets
from reach.clock import Clock, SystemClock
from reach.metrics import WorkerMetrics
from reach.settings import Settings
from rules.links import LinkDomains
from rules.loader import Categories, RuleLimits
from rules.reloader import RuleReloader

log = structlog.get_logger("reach.runtime")


@dataclasses.dataclass
class Runtime:
    settings: Settings
    channels: ChannelsConfig
    rules: RuleReloader
    registry: CollectorRegistry
    metrics: WorkerMetrics
    clock: Clock = dataclasses.field(default_factory=SystemClock)
    choosers: dict[str, WeightedChooser] = dataclasses.field(default_factory=dict)
    taskgate: TaskGate = dataclasses.field(default_factory=TaskGate)  # opened by start()
    policies: Policies = dataclasses.field(default_factory=Policies)
    link_domains: LinkDomains | None = None  # None: links are not checked
    #: per platform, the minimum app version and upgrade URL (REACH_MIN_APP_VERSIONS, REACH_UPGRADE_URLS)
    upgrades: dict[str, UpgradeTarget] = dataclasses.field(default_factory=dict)
    # Opened by start():
    mysql_pool: Any = None
    redis: Any = None
    providers: dict[str, dict[str, Provider]] = dataclasses.field(default_factory=dict)
    results: ResultStore | None = None
    profiles: ProfileStore | None = None
    throttle: WindowThrottle | None = None
    sent: SentMarkers | None = None
    deferred: DeferredQueue | None = None
    dead_addresses: DeadAddressStore | None = None
    cancel_markers: CancelMarkers | None = None
    preferences: Preferences | None = None
    caps: CapCounts | None = None

    @classmethod
    def build(cls, settings: Settings, channels: ChannelsConfig, clock: Clock | None = None) -> Runtime:
        """Load rules (raising on a bad rule file), channel routing and the upgrade settings
        (raising :class:`~models.upgrades.UpgradeConfigError`); opens nothing."""
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        rules = RuleReloader(
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
        providers = {name: [p.name for p in c.providers] for name, c in channels.channels.items()}
        metrics.start_series(providers)
        metrics.start_engagement_series(providers, settings.category_names)
        runtime = cls(settings, channels, rules, registry, metrics, clock or SystemClock())
        runtime.choosers = {name: chooser_for(channel) for name, channel in channels.channels.items()}
        runtime.taskgate = TaskGate(settings.task_pause_recheck_ms, metrics.task_messages)
        runtime.policies = load_policies(settings.policies_file, settings.category_names)
        runtime.link_domains = link_domains_of(settings)
        runtime.upgrades = upgrade_targets(settings.min_app_versions, settings.upgrade_urls)
        return runtime

    @property
    def platforms(self) -> dict[str, str]:
        """The channels bound to one platform's app (``platform`` in the channels file)."""
        return {name: c.platform for name, c in self.channels.channels.items() if c.platform}

    async def start(self) -> None:
        s = self.settings
        self.mysql_pool = await create_pool(s)
        # Timeouts turn a hung Redis into an error the agents retry, instead of a stall.
        self.redis = aioredis.from_url(
            s.redis_url.get_secret_value(),
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        await self.redis.ping()
        self.results = ResultStore(self.mysql_pool)
        self.profiles = ProfileStore(self.mysql_pool, PhoneHasher.from_settings(self.settings))
        self.throttle = WindowThrottle(self.redis, s.redis_prefix)
        self.sent = SentMarkers(self.redis, s.redis_prefix, s.sent_marker_ttl)
        self.deferred = DeferredQueue(self.redis, s.redis_prefix)
        self.dead_addresses = DeadAddressStore(self.mysql_pool, s.dead_address_ttl * 1000)
        self.taskgate.open(TaskStore(self.mysql_pool))
        # A cancelled marker must outlive the longest delay plus the grace after it.
        cancelled_ttl_ms = s.rules_max_delay * 1000 + CANCEL_GRACE_MS
        self.cancel_markers = CancelMarkers(self.redis, s.redis_prefix, cancelled_ttl_ms)
        cache = PreferenceCache(self.redis, s.redis_prefix, s.preferences_cache_ttl)
        self.preferences = Preferences(PreferenceStore(self.mysql_pool), cache)
        self.caps = CapCounts(self.redis, s.redis_prefix)
        await self._start_providers()

    async def _start_providers(self) -> None:
        context = ProviderContext(
            mysql_pool=self.mysql_pool, redis=self.redis, redis_prefix=self.settings.redis_prefix
        )
        for channel in self.channels.channels.values():
            started = self.providers.setdefault(channel.name, {})
            for config in channel.providers:
                provider = provider_class(config.type)(config, context)
                await provider.setup()
                started[config.name] = provider
                log.info("provider.started", channel=channel.name, provider=config.name, type=config.type)

    async def close(self) -> None:
        for providers in self.providers.values():
            for provider in providers.values():
                await provider.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.mysql_pool is not None:
            self.mysql_pool.close()
            await self.mysql_pool.wait_closed()


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
