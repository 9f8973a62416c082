-- A key's validity window must not be empty: expires_at after not_before when both are set.
-- The admin API checks this too, but against the row it read before its UPDATE, so two concurrent
-- PATCHes (one moving not_before, one expires_at) could each pass and together leave a key that can
-- never be used. Here the row being written is checked. A revoked key is exempt, so that a row written
-- before this migration with an empty window can still be revoked. NOT VALID: such older rows are not
-- re-checked (they could never be used anyway); every write from now on is.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_validity_window
    CHECK (status = 'revoked' OR expires_at IS NULL OR not_before IS NULL OR expires_at > not_before)
    NOT VALID;
