-- Attestation issuers (device posture, workload identity) and request-signature nonces.
--
-- An issuer's `jwks` is the key set signalgate verifies its tokens with: the inline set, or for a
-- `jwks_url` the last set fetched successfully (one fetcher per instance writes it here; workers read it
-- when the change feed announces it). Every change a decision depends on is written with a row in
-- `changes` (entity 'issuer'); the fetch bookkeeping columns (fetched_at, fetch_error, fetch_started_at,
-- next_fetch_at) decide nothing and are written without one.

CREATE TABLE issuers (
    name             text PRIMARY KEY CHECK (name ~ '^[a-z0-9-]{1,64}$'),
    kind             text NOT NULL CHECK (kind IN ('device', 'workload')),
    issuer           text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 1000),
    audience         text NOT NULL CHECK (length(audience) BETWEEN 1 AND 1000),
    algorithms       text[] NOT NULL CHECK (cardinality(algorithms) >= 1
                         AND algorithms <@ ARRAY['EdDSA', 'ES256', 'ES384', 'RS256', 'PS256']),
    max_lifetime_s   integer NOT NULL DEFAULT 3600 CHECK (max_lifetime_s BETWEEN 1 AND 604800),
    jwks             jsonb CHECK (jwks IS NULL OR jsonb_typeof(jwks) = 'object'),
    jwks_url         text CHECK (jwks_url IS NULL OR jwks_url ~ '^https?://'),
    fetched_at       timestamptz,  -- last successful fetch of jwks_url
    fetch_error      text,         -- the last fetch's failure, NULL once one succeeds
    fetch_started_at timestamptz,  -- a fetch was claimed then (at most one per jwks_min_refresh)
    next_fetch_at    timestamptz,  -- when the set is due again (Cache-Control max-age, bounded)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    revision         bigint NOT NULL,  -- revision of the change that last touched what decisions read
    -- a token names its issuer by `iss`: one registered issuer per (kind, iss), so it is never ambiguous
    CONSTRAINT issuers_kind_issuer UNIQUE (kind, issuer),
    -- exactly one source of keys; a URL issuer has a set once its first fetch succeeded (at creation)
    CONSTRAINT issuers_one_source CHECK (jwks_url IS NOT NULL OR jwks IS NOT NULL)
);

-- (api key id, signature keyid, nonce) seen within its window: a replayed signed request is refused
-- by every worker and instance. Unlogged: losing it in a crash only reopens windows of max_age_s.
CREATE UNLOGGED TABLE signature_nonces (
    key_id     text NOT NULL,
    keyid      text NOT NULL,
    nonce      text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key_id, keyid, nonce)
);

CREATE INDEX signature_nonces_expires_at ON signature_nonces (expires_at);
