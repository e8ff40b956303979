-- API keys for scripts (DESIGN.md section 5): per account, shown once at creation, kept as
-- a SHA-256 hash (the keys are 256 random bits, so a slow hash would add nothing), revoked at
-- once.

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id    uuid NOT NULL REFERENCES accounts (id),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The key's first characters, to tell keys apart in a listing.
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    created_by    uuid,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    UNIQUE (id, account_id),
    FOREIGN KEY (account_id, created_by) REFERENCES account_members (account_id, user_id)
        ON DELETE SET NULL (created_by)
);
CREATE INDEX api_keys_account ON api_keys (account_id, created_at DESC);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON api_keys TO oslira_api
    USING (account_id = app_account_id()) WITH CHECK (account_id = app_account_id());
CREATE POLICY system ON api_keys TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON api_keys TO oslira_api;
GRANT INSERT (account_id, name, prefix, key_hash, created_by) ON api_keys TO oslira_api;
GRANT UPDATE (revoked_at) ON api_keys TO oslira_api;
GRANT SELECT, INSERT, UPDATE ON api_keys TO oslira_worker;

-- Authenticating a key happens before any tenant is known, so row level security would
-- hide every key: this function, run with its owner's rights, answers for one hash only,
-- and only while the key is live. It notes the key's use at most once a minute.
CREATE FUNCTION api_key_account(hash bytea) RETURNS TABLE (key_id uuid, account_id uuid)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        WITH live AS (
            SELECT k.id, k.account_id, k.last_used_at FROM public.api_keys k
            JOIN public.accounts a ON a.id = k.account_id
            WHERE k.key_hash = hash AND k.revoked_at IS NULL AND a.deleted_at IS NULL
        ), noted AS (
            UPDATE public.api_keys SET last_used_at = now()
            WHERE id IN (SELECT id FROM live
                         WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        )
        SELECT id, account_id FROM live;
    $$;
REVOKE EXECUTE ON FUNCTION api_key_account(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_key_account(bytea) TO oslira_api, oslira_worker;
