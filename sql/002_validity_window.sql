-- A key's validity window must not be empty: expires_at after not_before when both are set.
-- The admin API checks this too, but against the row it read before its UPDATE, so two concurrent
-- PATCHes (one moving not_before, one expires_at) could each pass and together leave a key that can
-- never be used. Here the row being written is checked. NOT VALID: rows written before this migration
-- are not re-checked (such a key could never be used anyway); every write from now on is.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_validity_window
    CHECK (expires_at IS NULL OR not_before IS NULL OR expires_at > not_before) NOT VALID;
