-- signalgate schema, version 1.
-- Every write to api_keys happens in one transaction with a row in `changes`; the change feed of each
-- worker replays `changes` after a reconnect, so the revision is the only thing a worker must remember.

CREATE TABLE api_keys (
    id          text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name        text NOT NULL,
    owner       text NOT NULL,
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    status      text NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    policy      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(policy) = 'object'),
    not_before  timestamptz,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    revision    bigint NOT NULL  -- revision of the change that last touched the row
);

CREATE INDEX api_keys_owner_id ON api_keys (owner, id);
CREATE INDEX api_keys_status_id ON api_keys (status, id);

-- One row per write, in commit order (writers serialise on an advisory lock before taking a revision).
CREATE TABLE changes (
    revision  bigserial PRIMARY KEY,
    entity    text NOT NULL,
    entity_id text NOT NULL,
    action    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
