-- The operators' view: candidate (dry-run) policies on keys, and the decision log.
--
-- A key may carry a candidate policy, evaluated beside the enforced one on every request and never
-- enforced; candidate_since is when the current candidate was set (its summary counts from there).
ALTER TABLE api_keys
    ADD COLUMN candidate_policy jsonb CHECK (candidate_policy IS NULL OR jsonb_typeof(candidate_policy) = 'object'),
    ADD COLUMN candidate_since timestamptz,
    ADD CONSTRAINT api_keys_candidate_since CHECK ((candidate_policy IS NULL) = (candidate_since IS NULL));

-- One row per decision (allowed decisions possibly sampled: sample_rate < 1 stands for 1/sample_rate
-- decisions). Partitioned by day on `at` (the request's time); the partitions are created ahead by
-- signalgate and dropped after the retention setting. request_id is unique per request (a random
-- per-process prefix and a counter), so a batch written twice (a replayed spool, a retried COPY whose
-- commit was not seen) is inserted once: writers go through a staging table and ON CONFLICT DO NOTHING.
CREATE TABLE decisions (
    request_id       text NOT NULL,
    at               timestamptz NOT NULL,
    key_id           text,
    owner            text,
    client_ip        inet,
    country          text,
    device_subject   text,      -- filled once device attestations exist
    workload_subject text,      -- filled once workload attestations exist
    method           text NOT NULL,
    path             text NOT NULL,
    decision         text NOT NULL CHECK (decision IN ('allow', 'deny')),
    reason           text NOT NULL,
    detail           text,
    policy_revision  bigint,    -- the key record's revision the decision was made under
    status           integer NOT NULL,
    upstream_status  integer,
    latency_ms       real NOT NULL,
    upstream_ms      real,
    candidate        text CHECK (candidate IN ('agree', 'would_allow', 'would_deny')),
    candidate_reason text,
    candidate_detail text,
    sample_rate      real NOT NULL DEFAULT 1 CHECK (sample_rate > 0 AND sample_rate <= 1),
    PRIMARY KEY (request_id, at)
) PARTITION BY RANGE (at);

CREATE INDEX decisions_at ON decisions (at, request_id);
CREATE INDEX decisions_key_at ON decisions (key_id, at);
CREATE INDEX decisions_owner_at ON decisions (owner, at);
