-- Jobs whose closing revokes their keys, uses counted per key, and rotation with a grace period.

-- A job: a unit of work (a rotation run, an agent's task) whose keys live only as long as it is open.
-- Closing is final: by an operator, by one of its keys that may close it, or by its deadline passing.
-- Written like keys: one transaction with its `changes` row (entity 'job').
CREATE TABLE jobs (
    id         text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name       text NOT NULL,
    owner      text NOT NULL,
    deadline   timestamptz NOT NULL,
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz,
    closed_by  text,  -- 'operator', 'deadline' or 'key:<id>'
    revision   bigint NOT NULL,
    CONSTRAINT jobs_closed_fields CHECK ((status = 'closed') = (closed_at IS NOT NULL AND closed_by IS NOT NULL))
);

CREATE INDEX jobs_open_deadline ON jobs (deadline) WHERE status = 'open';  -- the deadline sweep
CREATE INDEX jobs_owner_id ON jobs (owner, id);

-- A key may be bound to a job; `can_close_job` lets it close that job itself (only with a job).
-- `previous_hash` is the secret a rotation replaced, accepted until `previous_until`.
ALTER TABLE api_keys
    ADD COLUMN job_id text REFERENCES jobs (id),
    ADD COLUMN can_close_job boolean NOT NULL DEFAULT false,
    ADD COLUMN previous_hash bytea CHECK (length(previous_hash) = 32),
    ADD COLUMN previous_until timestamptz,
    ADD CONSTRAINT api_keys_close_needs_job CHECK (NOT can_close_job OR job_id IS NOT NULL),
    ADD CONSTRAINT api_keys_previous_secret CHECK ((previous_hash IS NULL) = (previous_until IS NULL));

CREATE INDEX api_keys_job_id ON api_keys (job_id, id) WHERE job_id IS NOT NULL;

-- Uses per key, counted by one conditional upsert per forwarded request (proxy/db/usage.py). Narrow
-- and apart from api_keys: a count is not a change to the key, and its frequent updates stay HOT
-- (fillfactor leaves room on the page) without rewriting the key row and its policy.
CREATE TABLE key_uses (
    key_id text PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    uses   bigint NOT NULL CHECK (uses >= 0)
) WITH (fillfactor = 50);
