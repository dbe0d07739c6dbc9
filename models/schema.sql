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
  attributes  TEXT         NULL,       -- JSON object: what audience filters and task templates read
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (user_id)
);

-- The app version each platform's app of a user last reported in an event
-- (models/profiles.py): a newer event's version replaces an older one's, never the
-- reverse. Task audience filters read it as app_version.<platform>.
CREATE TABLE IF NOT EXISTS user_app_versions (
  user_id     VARCHAR(128) NOT NULL,
  platform    VARCHAR(32)  NOT NULL,
  app_version VARCHAR(64)  NOT NULL,
  seen_at     BIGINT       NOT NULL,   -- the reporting event's own time
  PRIMARY KEY (user_id, platform)
);

-- Profile phone numbers -> users, for signals that name only a number (Twilio's STOP).
-- phone_hash = hex HMAC-SHA256(REACH_PHONE_INDEX_KEY, the E.164 number): never the number.
-- Written with the profiles, in their transaction (models/phones.py).
CREATE TABLE IF NOT EXISTS phone_index (
  phone_hash  CHAR(64)     NOT NULL,
  user_id     VARCHAR(128) NOT NULL,
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (phone_hash, user_id),
  KEY idx_phone_index_user (user_id)
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
  category             VARCHAR(32)  NOT NULL DEFAULT '',
  PRIMARY KEY (message_id, attempt),
  KEY idx_results_completed (completed_at),
  KEY idx_results_user (user_id, completed_at),
  KEY idx_results_provider_msg (provider_message_id),
  -- A reach task's recipients, paged by user (rule_id is task:<task_no>)
  KEY idx_results_rule_user (rule_id, user_id, message_id)
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
  type          VARCHAR(16)  NOT NULL DEFAULT 'message',   -- message | upgrade
  details       TEXT         NULL,     -- JSON: an upgrade's platform, minimum_version, upgrade_url
  PRIMARY KEY (message_id),
  KEY idx_popups_user_until (user_id, show_until)
);

-- Engagement per message: when it first reached each stage after it was sent, from the
-- tracking topic (models/tracking.py). Each time is set once (a repeated open, a replayed
-- event changes nothing), so a stage counts a message at most once. Labels (channel,
-- provider, platform, category) are the message's delivery_results row's.
CREATE TABLE IF NOT EXISTS message_engagement (
  message_id    VARCHAR(64)  NOT NULL,
  delivered_at  BIGINT       NULL,
  displayed_at  BIGINT       NULL,
  opened_at     BIGINT       NULL,
  clicked_at    BIGINT       NULL,
  PRIMARY KEY (message_id)
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

-- Reach tasks (an operator's send to an audience). task_no is drawn at random from
-- [1, 2^53) by the application, so TiDB spreads new tasks across regions (an
-- AUTO_INCREMENT key would be a write hotspot) and JSON clients read it exactly.
-- spec is the validated task as JSON (models/tasks.py); status is models.tasks.TaskStatus.
CREATE TABLE IF NOT EXISTS tasks (
  task_no        BIGINT        NOT NULL,
  name           VARCHAR(128)  NOT NULL,
  comment        VARCHAR(1000) NOT NULL DEFAULT '',
  category       VARCHAR(32)   NOT NULL,
  schedule_kind  VARCHAR(16)   NOT NULL,
  spec           MEDIUMTEXT    NOT NULL,
  status         VARCHAR(16)   NOT NULL,
  next_run_at    BIGINT        NULL,      -- ms; the next run not yet started, NULL when none
  created_by     VARCHAR(128)  NOT NULL,
  created_at     BIGINT        NOT NULL,
  updated_at     BIGINT        NOT NULL,
  PRIMARY KEY (task_no),
  KEY idx_tasks_created (created_at, task_no),
  KEY idx_tasks_status (status, created_at, task_no)
);

-- Every status change of a task: who (an API caller, the CLI, the scheduler) and when.
-- Written in the transaction that holds the task row's lock, so seq is never taken twice.
CREATE TABLE IF NOT EXISTS task_transitions (
  task_no        BIGINT        NOT NULL,
  seq            INT           NOT NULL,   -- 1, 2, ... per task: changes within one ms keep their order
  at             BIGINT        NOT NULL,
  from_status    VARCHAR(16)   NOT NULL,
  to_status      VARCHAR(16)   NOT NULL,
  actor          VARCHAR(128)  NOT NULL,
  reason         VARCHAR(512)  NOT NULL DEFAULT '',
  PRIMARY KEY (task_no, seq)
);

-- One row per run of a task (a cron occurrence, a local-time part, the one run of
-- now/at). A worker claims a due run by moving its lease forward in one conditional
-- UPDATE (the row is the lock: two workers cannot both hold it), expands the
-- audience by keyset pages after `checkpoint` (the last user id of the last page the
-- broker acknowledged) and adds the page to audience and planned in the same UPDATE.
CREATE TABLE IF NOT EXISTS task_runs (
  task_no      BIGINT        NOT NULL,
  run_no       INT           NOT NULL,
  due_at       BIGINT        NOT NULL,
  state        VARCHAR(16)   NOT NULL,   -- pending, grouping, expanding, planned, cancelled
  checkpoint   VARCHAR(128)  NOT NULL DEFAULT '',
  audience     BIGINT        NOT NULL DEFAULT 0,   -- recipients evaluated and chosen
  planned      BIGINT        NOT NULL DEFAULT 0,   -- messages put on the outbox
  started_at   BIGINT        NOT NULL DEFAULT 0,
  finished_at  BIGINT        NOT NULL DEFAULT 0,
  lease_owner  CHAR(16)      NOT NULL DEFAULT '',
  lease_until  BIGINT        NOT NULL DEFAULT 0,
  grouped      TINYINT       NOT NULL DEFAULT 0,   -- 1: the run's recipients are its task_run_members
  PRIMARY KEY (task_no, run_no),
  KEY idx_runs_due (state, due_at)
);

-- Which part of a local-time task each recipient belongs to, written once by the first
-- part (state 'grouping') so each part reads only its own members. Keyed by user: a
-- recipient is in one part even if their zone changes while the task spans the zones.
-- A part's rows are deleted once it is planned, and a task's once it ends (task_member_sweeps).
CREATE TABLE IF NOT EXISTS task_run_members (
  task_no  BIGINT        NOT NULL,
  user_id  VARCHAR(128)  NOT NULL,
  run_no   INT           NOT NULL,
  PRIMARY KEY (task_no, user_id),
  KEY idx_run_members (task_no, run_no, user_id)
);

-- Local-time tasks that ended (cancelled, failed, completed), whose task_run_members
-- may remain: parts that never ran keep theirs. Written with the task's final transition;
-- the runner deletes the members a few hundred rows a statement, then the entry.
CREATE TABLE IF NOT EXISTS task_member_sweeps (
  task_no   BIGINT  NOT NULL,
  ended_at  BIGINT  NOT NULL,
  PRIMARY KEY (task_no)
);

-- Final outcomes of task messages per channel, added per channel-agent batch
-- (sent, failed, unknown, suppressed), so a task's progress is read without
-- scanning delivery_results.
CREATE TABLE IF NOT EXISTS task_counts (
  task_no   BIGINT       NOT NULL,
  channel   VARCHAR(32)  NOT NULL,
  status    VARCHAR(16)  NOT NULL,
  n         BIGINT       NOT NULL,
  PRIMARY KEY (task_no, channel, status)
);

-- POST /v1/tasks Idempotency-Key: the body it came with and the task it made
-- (NULL while that task is being created).
CREATE TABLE IF NOT EXISTS task_requests (
  idempotency_key  VARCHAR(128)  NOT NULL,
  body_hash        CHAR(64)      NOT NULL,
  task_no          BIGINT        NULL,
  created_at       BIGINT        NOT NULL,
  PRIMARY KEY (idempotency_key)
);

-- Uploaded audiences (POST /v1/audiences): user ids, keyset-paged by the runner.
CREATE TABLE IF NOT EXISTS audience_lists (
  list_id    CHAR(16)      NOT NULL,
  members    BIGINT        NOT NULL,
  complete   TINYINT       NOT NULL,   -- 0 while the upload streams in
  created_at BIGINT        NOT NULL,
  PRIMARY KEY (list_id)
);

CREATE TABLE IF NOT EXISTS audience_members (
  list_id  CHAR(16)      NOT NULL,
  user_id  VARCHAR(128)  NOT NULL,
  PRIMARY KEY (list_id, user_id)
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

-- API keys of calling systems (product backends, operators' tools). Only a SHA-256 of
-- each key's secret is stored: the secret is 256 random bits, so a fast hash is as safe
-- as a slow one and costs nothing on a cache refresh. scopes is a comma-separated list;
-- events the JSON array of event names the key may emit, NULL for any. previous_hash
-- stays valid until previous_until after a rotation, so callers can switch over.
-- rate_limit is requests per window (REACH_RATE_WINDOW_SECONDS), NULL for the default,
-- 0 for none.
CREATE TABLE IF NOT EXISTS api_keys (
  key_id          CHAR(16)     NOT NULL,
  name            VARCHAR(128) NOT NULL,
  secret_hash     CHAR(64)     NOT NULL,
  previous_hash   CHAR(64)     NULL,
  previous_until  BIGINT       NULL,
  scopes          VARCHAR(255) NOT NULL,
  events          TEXT         NULL,
  rate_limit      INT          NULL,
  created_at      BIGINT       NOT NULL,
  rotated_at      BIGINT       NULL,
  revoked_at      BIGINT       NULL,
  PRIMARY KEY (key_id)
);

-- Operator actions (keys created, rotated, revoked; tasks; preference changes), newest
-- last. audit_id is random, so TiDB spreads the writes; detail is a JSON object that
-- never holds a secret.
CREATE TABLE IF NOT EXISTS audit_log (
  audit_id    CHAR(32)     NOT NULL,
  at          BIGINT       NOT NULL,
  actor       VARCHAR(160) NOT NULL,
  action      VARCHAR(64)  NOT NULL,
  target      VARCHAR(160) NOT NULL DEFAULT '',
  detail      TEXT         NOT NULL,
  PRIMARY KEY (audit_id),
  KEY idx_audit_at (at)
);
