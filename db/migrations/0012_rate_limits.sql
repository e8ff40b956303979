-- Rate limits per account and family of endpoints (DESIGN.md section 5), shared by every API
-- process: one fixed-window counter per account and family, so the table never grows with
-- time and a hit is one statement.

CREATE TABLE rate_limits (
    account_id    uuid NOT NULL REFERENCES accounts (id),
    family        text NOT NULL CHECK (family IN ('analyses', 'requests')),
    window_start  timestamptz NOT NULL,
    hits          integer NOT NULL CHECK (hits >= 0),
    PRIMARY KEY (account_id, family)
);

ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON rate_limits TO oslira_api USING (account_id = app_account_id());
CREATE POLICY system ON rate_limits TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON rate_limits TO oslira_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits TO oslira_worker;
DO $$
BEGIN
    -- The function below runs as its owner (see migration 0009).
    EXECUTE format('CREATE POLICY definer ON rate_limits TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;

-- Counts `n` hits of an account in the current window of `unit` ('minute' or 'hour', by
-- the database's clock, so every API process agrees), and answers the window's hits so far,
-- the seconds until it resets and the account's plan (whose limits are configuration). The
-- caller refuses when `hits` is over the plan's limit; called inside a transaction, a
-- refusal rolls the hits back with everything else. Run with its owner's rights, like
-- user_accounts: the API role could always count for any account by setting
-- app.account_id, so this widens nothing, and it costs one statement with no transaction.
CREATE FUNCTION rate_limit_hit(account uuid, fam text, unit text, n integer)
    RETURNS TABLE (hits integer, reset_seconds double precision, plan text)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        INSERT INTO public.rate_limits AS r (account_id, family, window_start, hits)
        VALUES (account, fam, date_trunc(unit, now()), n)
        ON CONFLICT (account_id, family) DO UPDATE
            SET hits = CASE WHEN r.window_start = excluded.window_start
                            THEN r.hits + excluded.hits ELSE excluded.hits END,
                window_start = excluded.window_start
        RETURNING r.hits,
                  extract(epoch FROM r.window_start + ('1 ' || unit)::interval - now()),
                  (SELECT a.plan FROM public.accounts a WHERE a.id = account);
    $$;
REVOKE EXECUTE ON FUNCTION rate_limit_hit(uuid, text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rate_limit_hit(uuid, text, text, integer) TO oslira_api;
