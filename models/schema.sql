-- reach schema. Runs unchanged on MariaDB/MySQL and on TiDB.
-- Natural keys everywhere: message ids are random hashes, so TiDB spreads
-- writes across regions without AUTO_RANDOM, and every write is an
-- idempotent upsert keyed by them. Times are epoch milliseconds (BIGINT) so
-- no server time zone ever shifts them.

CREATE TABLE IF NOT EXISTS user_profiles (
  user_id     VARCHAR(128) NOT NULL,
  segments    TEXT         NOT NULL,   -- JSON array of segment names
  contact     TEXT         NOT NULL,   -- JSON object: email, phone
  timezone    VARCHAR(64)  NOT NULL DEFAULT '',
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (user_id)
);

CREATE TABLE IF NOT EXISTS segment_members (
  segment     VARCHAR(64)  NOT NULL,
  user_id     VARCHAR(128) NOT NULL,
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (segment, user_id),
  KEY idx_segment_members_user (user_id)
);

CREATE TABLE IF NOT EXISTS inbox_messages (
  message_id  CHAR(24)     NOT NULL,
  user_id     VARCHAR(128) NOT NULL,
  rule_id     VARCHAR(128) NOT NULL,
  template    VARCHAR(128) NOT NULL,
  title       VARCHAR(512) NOT NULL,
  body        TEXT         NOT NULL,
  priority    TINYINT      NOT NULL,
  created_at  BIGINT       NOT NULL,
  read_at     BIGINT       NULL,
  PRIMARY KEY (message_id),
  -- Covers the inbox page's keyset scan (user, newest first, cursor) and the read
  -- state: a page's ids come from this index alone, then only those rows are read
  -- by primary key (body is TEXT, which no index can hold). It also serves the
  -- unread backfill. It replaced idx_inbox_user_created and idx_inbox_user_unread.
  KEY idx_inbox_page (user_id, created_at, message_id, read_at)
);

-- Unread site messages per user, so reading the inbox costs no COUNT. Kept in the
-- same transaction as the rows it counts: +1 for each message actually inserted
-- (a replayed message id is not), -1 when mark-read sets read_at. A user with no
-- row has 0. Backfilled from inbox_messages when the table is first created.
CREATE TABLE IF NOT EXISTS inbox_unread (
  user_id     VARCHAR(128) NOT NULL,
  unread      INT          NOT NULL,
  PRIMARY KEY (user_id)
);

CREATE TABLE IF NOT EXISTS delivery_results (
  message_id           CHAR(24)     NOT NULL,
  attempt              SMALLINT     NOT NULL,
  user_id              VARCHAR(128) NOT NULL,
  rule_id              VARCHAR(128) NOT NULL,
  channel              VARCHAR(32)  NOT NULL,
  provider             VARCHAR(64)  NOT NULL,
  status               VARCHAR(16)  NOT NULL,
  platform             VARCHAR(16)  NOT NULL DEFAULT '',
  error_code           VARCHAR(64)  NOT NULL DEFAULT '',
  error                VARCHAR(512) NOT NULL DEFAULT '',
  provider_message_id  VARCHAR(256) NOT NULL DEFAULT '',
  event_ts             BIGINT       NOT NULL,
  attempted_at         BIGINT       NOT NULL,
  completed_at         BIGINT       NOT NULL,
  receipt_at           BIGINT       NULL,      -- ms; when a provider receipt made the row final
  PRIMARY KEY (message_id, attempt),
  KEY idx_results_completed (completed_at),
  KEY idx_results_user (user_id, completed_at),
  KEY idx_results_provider_msg (provider_message_id)
);

-- Delivery receipts (provider status callbacks), one row per distinct receipt.
-- The key makes a callback that arrives twice a no-op: the insert keeps the
-- first. claim is a random id per request, used to learn which rows a
-- multi-row insert actually inserted. outcome says what the receipt did:
-- applied (moved its result row), stale (the row was already final), or
-- unmatched (no result row yet: retried by the rematch job). Non-final
-- statuses (queued, sent) change nothing and are not stored.
CREATE TABLE IF NOT EXISTS receipts (
  provider             VARCHAR(64)  NOT NULL,
  receipt_hash         CHAR(32)     NOT NULL,
  claim                CHAR(16)     NOT NULL,
  provider_message_id  VARCHAR(256) NOT NULL DEFAULT '',
  message_id           VARCHAR(64)  NOT NULL DEFAULT '',
  status               VARCHAR(16)  NOT NULL,
  provider_status      VARCHAR(32)  NOT NULL DEFAULT '',
  error_code           VARCHAR(64)  NOT NULL DEFAULT '',
  error                VARCHAR(512) NOT NULL DEFAULT '',
  reported_at          BIGINT       NOT NULL DEFAULT 0,   -- ms, the sender's time, 0 = not given
  received_at          BIGINT       NOT NULL,
  outcome              VARCHAR(16)  NOT NULL,
  PRIMARY KEY (provider, receipt_hash),
  KEY idx_receipts_outcome (outcome, received_at)
);

-- Pop-ups: shown over the app while show_from <= now < show_until, until
-- dismissed; a show_once pop-up only by the first read that returns it
-- (shown_at). The user index serves "the user's unexpired pop-ups".
CREATE TABLE IF NOT EXISTS popups (
  message_id    CHAR(24)     NOT NULL,
  user_id       VARCHAR(128) NOT NULL,
  rule_id       VARCHAR(128) NOT NULL,
  template      VARCHAR(128) NOT NULL,
  title         VARCHAR(512) NOT NULL,
  body          TEXT         NOT NULL,
  priority      TINYINT      NOT NULL,
  show_from     BIGINT       NOT NULL,
  show_until    BIGINT       NOT NULL,
  show_once     TINYINT      NOT NULL,   -- 1: returned by one read only
  created_at    BIGINT       NOT NULL,
  shown_at      BIGINT       NULL,
  dismissed_at  BIGINT       NULL,
  PRIMARY KEY (message_id),
  KEY idx_popups_user_until (user_id, show_until)
);

-- Addresses and device tokens a provider declared dead (bad number, unregistered
-- token, unsubscribed WeChat user). Keyed by a hash of "field:value", so the
-- table holds no contact data; a row stops counting at expires_at.
CREATE TABLE IF NOT EXISTS dead_addresses (
  address_key  CHAR(64)     NOT NULL,
  field        VARCHAR(32)  NOT NULL,
  channel      VARCHAR(32)  NOT NULL,
  provider     VARCHAR(64)  NOT NULL,
  code         VARCHAR(64)  NOT NULL DEFAULT '',
  recorded_at  BIGINT       NOT NULL,
  expires_at   BIGINT       NOT NULL,
  PRIMARY KEY (address_key)
);

-- What each user accepts, per channel and category ('*' = every channel / every
-- category; the most specific row wins, no row = allowed). Written by
-- PUT /v1/users/{user_id}/preferences, the one-click unsubscribe and opt-out
-- signals (source says which); read by the channel agents through the Redis copy
-- (models/preferences.py), never per message.
CREATE TABLE IF NOT EXISTS user_preferences (
  user_id     VARCHAR(128) NOT NULL,
  channel     VARCHAR(32)  NOT NULL,
  category    VARCHAR(32)  NOT NULL,
  allowed     TINYINT      NOT NULL,
  source      VARCHAR(16)  NOT NULL,
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (user_id, channel, category)
);
