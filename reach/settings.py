"""Settings: one frozen object, built once at the entry point from ``REACH_*``.

No other module reads the environment; everything receives what it needs
from here. Secrets are ``SecretStr`` so they never print in clear.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REACH_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "reach."  # topics are <prefix>events, <prefix>outbox.<channel>, ...
    app_id: str = "reach"  # faust app id: consumer group and changelog topic names
    partitions: int = Field(4, ge=1)  # events, segments and outbox topics (co-partitioned)
    kafka_request_timeout: float = Field(5.0, gt=0)  # seconds a produce waits for acks before it fails
    kafka_connect_timeout: float = Field(10.0, gt=0)  # seconds to reach the broker at start-up
    mysql_connect_timeout: float = Field(10.0, gt=0)  # seconds for a new MariaDB connection's handshake
    kafka_max_message_bytes: int = Field(1_000_000, ge=1024)  # record size limit of reach's topics

    # MariaDB / TiDB
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    mysql_user: str = "reach"
    mysql_password: SecretStr = SecretStr("reach")
    mysql_database: str = "reach"
    mysql_pool_size: int = Field(10, ge=1)

    # Redis
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_prefix: str = "reach:"  # every key this deployment writes starts with it

    # Input limits: bigger or deeper input is refused with a reason, never parsed whole
    event_max_depth: int = Field(32, ge=2)  # nesting of objects and arrays in one event
    rules_max_file_bytes: int = Field(1 << 20, ge=1024)  # one rule file
    rules_max_total_bytes: int = Field(16 << 20, ge=1024)  # all rule files together
    rules_max_delay: int = Field(7 * 24 * 3600, ge=1)  # seconds: the longest `delay` a trigger may have

    # Rules and channels
    rules_dir: Path = REPO_ROOT / "rules" / "examples"
    rules_check_interval: float = Field(1.0, gt=0)  # seconds between rule-file checks
    channels_file: Path = REPO_ROOT / "deploy" / "config" / "channels.yaml"

    # Worker
    data_dir: Path = REPO_ROOT / "var" / "worker"  # faust's local table state
    batch_size: int = Field(1000, ge=1)  # messages per agent batch
    batch_within: float = Field(0.05, gt=0)  # seconds an agent waits to fill a batch
    outbox_frame_messages: int = Field(500, ge=1)  # messages per outbox record (models/outbox.py)
    deferred_poll_interval: float = Field(0.2, gt=0)  # seconds between deferred-queue polls
    sent_marker_ttl: int = Field(7 * 24 * 3600, ge=60)  # seconds a message id is remembered as sent
    max_attempts: int = Field(5, ge=1)  # delivery attempts per message before it fails for good
    retry_base_ms: int = Field(1000, ge=1)  # first retry backoff; doubles per attempt, with jitter
    retry_cap_ms: int = Field(300_000, ge=1)  # longest retry backoff
    breaker_failures: int = Field(5, ge=1)  # provider-side failures that open a provider's breaker
    breaker_cooldown_ms: int = Field(30_000, ge=1)  # how long an open breaker pauses a provider
    dead_address_ttl: int = Field(30 * 24 * 3600, ge=60)  # seconds a dead address/token is skipped
    worker_metrics_port: int = 9464  # 0 disables the worker's /metrics, /healthz and /readyz
    worker_metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, for probes and scrapes
    worker_ready_commit_age: float = Field(60.0, gt=0)  # not ready when lagging with no commit for this long

    # Reach tasks (agents/tasks.py, agents/taskgate.py)
    task_poll_interval: float = Field(0.2, gt=0)  # seconds between the runner's looks for due runs
    task_tick_budget: float = Field(0.5, gt=0)  # seconds a run expands between claim renewals (>= a page)
    # Recipients per audience page (one checkpoint each). Big pages: the expansion shares the
    # worker's event loop with the channel agents and waits a turn of it at each of a page's
    # few round trips; 20,000 took a third of the time 5,000 did (measured, 100k members).
    task_page_size: int = Field(20000, ge=1)
    task_lease_seconds: float = Field(15.0, gt=0)  # a crashed worker's run is taken over after this
    task_pause_recheck_ms: int = Field(2000, ge=100)  # a paused task's message is checked again after this
    task_default_zone: str = "UTC"  # local-time tasks: the zone of a profile without a valid timezone

    # Lag exporter (reach exporter): the consumer group's lag read from the broker
    exporter_host: str = "127.0.0.1"
    exporter_port: int = 9465
    exporter_kafka_timeout: float = Field(5.0, gt=0)  # seconds one scrape waits for the broker
    # Policies (agents/delivery/policy.py, README "Policies")
    categories: str = "transactional,marketing,notification"  # comma-separated; rules and tasks pick one
    default_category: str = "notification"  # of a trigger rule without 'category'
    default_timezone: str = "UTC"  # caps' calendar days and quiet hours for a profile without a zone
    policies_file: Path | None = None  # e.g. deploy/config/policies.yaml; unset: no caps, no quiet hours
    preferences_cache_ttl: int = Field(24 * 3600, ge=60)  # seconds a user's preferences stay in Redis
    # Unsubscribe links: the base URL users reach the API at, and the HMAC keys that sign
    # the tokens (comma-separated, newest first: the newest signs, every one verifies).
    public_url: str = "http://127.0.0.1:8080"
    unsubscribe_keys: SecretStr = SecretStr("change-me")
    unsubscribe_token_days: int = Field(730, ge=1)  # how long a link in an old e-mail keeps working
    # The key of the phone -> user index (models/phones.py): the same in the worker and the
    # API; after changing it, `reach db reindex-phones`.
    phone_index_key: SecretStr = SecretStr("change-me")
    # Hosts the links of a message may point to (rules/links.py), a JSON list:
    # ["shop.example", "*.shop.example"]; public_url's host is always allowed. Empty: links
    # are not checked, so an event property can put any URL into a message: set it in production.
    link_domains: tuple[str, ...] = ()
    # Engagement tracking (docs/operations.md "Engagement"): where tracked links and the e-mail
    # open pixel point (the API's public address, e.g. https://t.example.com); empty: links are
    # left as written and no pixel is added. The HMAC keys sign the links (comma-separated,
    # newest first: the newest signs, every one verifies).
    tracking_base_url: str = ""
    tracking_keys: SecretStr = SecretStr("change-me")

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_key: SecretStr | None = None  # the key `reach tasks ...` sends (scope tasks:write)
    # Forced upgrade of the apps (api/upgrade.py): "ios=1.9.0,android=1.9.0"; empty: none
    min_app_versions: str = ""
    upgrade_urls: str = ""  # where each platform upgrades: "ios=https://...,android=https://..."
    cors_origins: tuple[str, ...] = ()  # JSON list of origins a browser may call from; empty: no CORS

    # Access (api/auth.py): API keys of calling systems, JWTs of end users, rate limits
    api_key_cache_seconds: float = Field(5.0, gt=0)  # a revoked key stops working within this
    api_key_max_stale_seconds: float = Field(60.0, gt=0)  # MariaDB down: keys known this long still work
    jwt_hs256_secret: SecretStr | None = None  # user tokens signed with HS256 (no kid needed)
    jwt_jwks_file: Path | None = None  # a JWKS of RS256 / ES256 / HS256 (oct) keys, each with a kid
    jwt_issuer: str | None = None  # when set, a user token's iss must equal it
    jwt_audience: str | None = None  # when set, a user token's aud must contain it
    jwt_leeway_seconds: int = Field(30, ge=0, le=300)  # clock skew allowed on exp / nbf / iat
    rate_window_seconds: int = Field(10, ge=1, le=3600)  # rate limits count requests per window
    rate_limit_per_key: int = Field(100_000, ge=0)  # requests per window per API key; 0: none
    rate_limit_per_user: int = Field(100, ge=0)  # requests per window per end user (JWT sub); 0: none

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.categories.split(",") if c.strip())

    @model_validator(mode="after")
    def _default_category_known(self) -> Settings:
        if self.default_category not in self.category_names:
            raise ValueError(
                f"REACH_DEFAULT_CATEGORY {self.default_category!r} is not one of REACH_CATEGORIES"
                f" ({self.categories})"
            )
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def events_topic(self) -> str:
        return self.topic("events")

    @property
    def dead_letter_topic(self) -> str:
        return self.topic("events.dlq")

    @property
    def delivery_dead_letter_topic(self) -> str:
        """Messages that used up their retry budget, with the last error."""
        return self.topic("deliveries.dlq")

    @property
    def segments_topic(self) -> str:
        return self.topic("segments")

    @property
    def results_topic(self) -> str:
        return self.topic("results")

    @property
    def tracking_topic(self) -> str:
        """Engagement events (delivered, displayed, opened, clicked), keyed by message id."""
        return self.topic("tracking")

    def outbox_topic(self, channel: str) -> str:
        return self.topic(f"outbox.{channel}")
