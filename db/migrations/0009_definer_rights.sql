-- Functions that run with their owner's rights (SECURITY DEFINER) read tables whose row
-- level security is FORCEd, which binds the tables' owner too. A superuser owner bypasses
-- it anyway; the non-superuser owner a managed database gives (RDS, Cloud SQL, Neon) would
-- see no rows, and no API key would ever authenticate. The owner (the role running this
-- migration, which owns every table already) gets policies on exactly what those functions
-- read and write, nothing more.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY definer_read ON api_keys FOR SELECT TO %I USING (true)',
                   current_user);
    EXECUTE format('CREATE POLICY definer_note_use ON api_keys FOR UPDATE TO %I
                    USING (true) WITH CHECK (true)', current_user);
    EXECUTE format('CREATE POLICY definer_read ON accounts FOR SELECT TO %I USING (true)',
                   current_user);
    EXECUTE format('CREATE POLICY definer_read ON account_members FOR SELECT TO %I USING (true)',
                   current_user);
END
$$;

-- A signed-in user's live accounts and role in each, oldest membership first: how every
-- JWT request finds its tenant, in one statement with no transaction around it (it used
-- to take four round trips: BEGIN, set_config, the read, COMMIT). This widens nothing:
-- the API role could always read a user's memberships by setting app.user_id itself.
CREATE FUNCTION user_accounts(uid uuid) RETURNS TABLE (account_id uuid, role text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        SELECT m.account_id, m.role FROM public.account_members m
        JOIN public.accounts a ON a.id = m.account_id
        WHERE m.user_id = uid AND a.deleted_at IS NULL
        ORDER BY m.created_at, m.account_id;
    $$;
REVOKE EXECUTE ON FUNCTION user_accounts(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION user_accounts(uuid) TO oslira_api, oslira_worker;
