-- The database itself refuses what the application never does, whoever writes:
-- 1. every reference between tenant rows carries the account (composite foreign keys), so a
--    row can never point at another tenant's row;
-- 2. a run moves only forward (pending -> processing -> complete | failed | cancelled),
--    leaves pending only once charged and completes only with that charge, and nothing moves
--    it out of a terminal status;
-- 3. the API role makes only the transitions the API makes: it flags an in-flight run for
--    cancellation, and ends a run that was never charged (its workflow did not start).

-- 1. Composite references ---------------------------------------------------------------

ALTER TABLE business_profiles ADD CONSTRAINT business_profiles_id_account UNIQUE (id, account_id);
ALTER TABLE leads ADD CONSTRAINT leads_id_account UNIQUE (id, account_id);
ALTER TABLE analyses ADD CONSTRAINT analyses_id_account UNIQUE (id, account_id);

ALTER TABLE analyses DROP CONSTRAINT analyses_business_profile_id_fkey;
ALTER TABLE analyses ADD CONSTRAINT analyses_business_profile
    FOREIGN KEY (business_profile_id, account_id) REFERENCES business_profiles (id, account_id);
-- Whoever asked for a run is a member of its account (null once they leave it).
ALTER TABLE analyses DROP CONSTRAINT analyses_requested_by_fkey;
ALTER TABLE analyses ADD CONSTRAINT analyses_requested_by
    FOREIGN KEY (account_id, requested_by) REFERENCES account_members (account_id, user_id)
    ON DELETE SET NULL (requested_by);
ALTER TABLE analyses ADD CONSTRAINT analyses_lead
    FOREIGN KEY (lead_id, account_id) REFERENCES leads (id, account_id);

ALTER TABLE leads DROP CONSTRAINT leads_business_profile_id_fkey;
ALTER TABLE leads ADD CONSTRAINT leads_business_profile
    FOREIGN KEY (business_profile_id, account_id) REFERENCES business_profiles (id, account_id);
ALTER TABLE leads ADD CONSTRAINT leads_last_analysis
    FOREIGN KEY (last_analysis_id, account_id) REFERENCES analyses (id, account_id);

-- A charge or refund belongs to a run of the same account.
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_run
    FOREIGN KEY (run_id, account_id) REFERENCES analyses (id, account_id);

-- 2 and 3. Run transitions ----------------------------------------------------------------

CREATE FUNCTION analyses_guard() RETURNS trigger
    LANGUAGE plpgsql
    -- It runs as the caller: pin the tables it reads, so no session can shadow them.
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    changed text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' OR NEW.credits_charged <> 0 OR NEW.result IS NOT NULL
           OR NEW.finished_at IS NOT NULL OR NEW.lead_id IS NOT NULL THEN
            RAISE EXCEPTION 'a run starts pending, uncharged and without a result'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    SELECT coalesce(array_agg(n.key), '{}') INTO changed
    FROM jsonb_each(to_jsonb(NEW)) AS n
    WHERE n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key;

    IF changed && ARRAY['id', 'account_id', 'business_profile_id', 'username',
                        'analysis_type', 'credits_cost', 'request_hash', 'created_at'] THEN
        RAISE EXCEPTION 'what a run is (%) never changes', array_to_string(changed, ', ')
            USING ERRCODE = 'check_violation';
    END IF;

    IF OLD.status IN ('complete', 'failed', 'cancelled') THEN
        -- A finished run is a record: only who asked for it (a member who left) and its
        -- lead (purged) may go.
        IF NOT changed <@ ARRAY['updated_at', 'requested_by', 'lead_id'] THEN
            RAISE EXCEPTION 'run % is % and can no longer change', OLD.id, OLD.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    -- A member leaving the account (ON DELETE SET NULL, run as the table's owner).
    IF changed <@ ARRAY['requested_by', 'updated_at'] AND NEW.requested_by IS NULL THEN
        RETURN NEW;
    END IF;

    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'pending' AND NEW.status IN ('processing', 'failed', 'cancelled'))
        OR (OLD.status = 'processing' AND NEW.status IN ('complete', 'failed', 'cancelled'))
    ) THEN
        RAISE EXCEPTION 'a run cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    -- Pending means never charged, processing means charged: the step that charges moves
    -- the run on in the same transaction, and a complete run keeps exactly its cost.
    IF OLD.status = 'pending' AND NEW.status = 'processing' AND NOT EXISTS (
        SELECT 1 FROM public.credit_ledger l
        WHERE l.run_id = OLD.id AND l.kind = 'charge' AND l.delta = -OLD.credits_cost
    ) THEN
        RAISE EXCEPTION 'run % is processed only once charged', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'complete' AND NEW.credits_charged <> OLD.credits_cost THEN
        RAISE EXCEPTION 'run % completes charged its cost of %', OLD.id, OLD.credits_cost
            USING ERRCODE = 'check_violation';
    END IF;

    -- The system role (workers, operators) is trusted with every forward move; anyone else
    -- (the API role) only with the API's own two.
    IF pg_has_role(current_user, 'oslira_worker', 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF NEW.status = OLD.status
       AND changed <@ ARRAY['cancel_requested_at', 'updated_at']
       AND (OLD.cancel_requested_at IS NULL OR NEW.cancel_requested_at = OLD.cancel_requested_at)
       AND NEW.cancel_requested_at IS NOT NULL THEN
        RETURN NEW;  -- flagged for cancellation
    END IF;
    IF OLD.status = 'pending' AND NEW.status IN ('failed', 'cancelled')
       AND NEW.cancel_requested_at IS NOT NULL AND NEW.finished_at IS NOT NULL
       AND (NEW.idempotency_key IS NULL OR NEW.idempotency_key = OLD.idempotency_key)
       AND NOT EXISTS (SELECT 1 FROM public.credit_ledger l
                       WHERE l.run_id = OLD.id AND l.kind = 'charge')
    THEN
        RETURN NEW;  -- a run that never started ends without a charge
    END IF;
    RAISE EXCEPTION 'the API may only flag a run for cancellation or end a run that never started'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER analyses_guard BEFORE INSERT OR UPDATE ON analyses
    FOR EACH ROW EXECUTE FUNCTION analyses_guard();

-- The API edits only a business profile's own text (and soft-deletes it), never its id or
-- account.
REVOKE UPDATE ON business_profiles FROM oslira_api;
GRANT UPDATE (name, description, offering, target_audience, updated_at, deleted_at)
    ON business_profiles TO oslira_api;

-- The credits promised to runs accepted but not yet charged (the API's credit check).
CREATE INDEX analyses_pending_cost ON analyses (account_id) INCLUDE (credits_cost)
    WHERE status = 'pending' AND cancel_requested_at IS NULL;

-- Which database this is: `oslira dev` names its task queue after it, so workers of another
-- stack never take work whose rows live here.
CREATE TABLE installation (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    one_row     boolean NOT NULL DEFAULT true UNIQUE CHECK (one_row),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;
GRANT SELECT ON installation TO oslira_api, oslira_worker;
