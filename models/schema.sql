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
  KEY idx_inbox_user_created (user_id, created_at, message_id),
  KEY idx_inbox_user_unread (user_id, read_at)
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
  PRIMARY KEY (message_id, attempt),
  KEY idx_results_completed (completed_at),
  KEY idx_results_user (user_id, completed_at)
);
