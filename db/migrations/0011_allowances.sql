-- Plans and free monthly allowances (DESIGN.md sections 4 and 8). Plans, prices and
-- allowances are configuration (core.settings); the database keeps each account's plan and
-- every unit drawn.

ALTER TABLE accounts ADD COLUMN plan text NOT NULL DEFAULT 'free'
    CHECK (plan ~ '^[a-z0-9_-]{1,40}$');

-- A run the API accepted as covered by its account's allowance: the month (UTC, its first
-- day) whose allowance it draws on. The API promises; the charge step (the worker) draws
-- the unit, or charges credits when the allowance was spent meanwhile.
ALTER TABLE analyses ADD COLUMN allowance_month date
    CHECK (allowance_month = date_trunc('month', allowance_month));
-- The first `free_items` items of a batch are promised to the allowance of `allowance_month`.
ALTER TABLE batches ADD COLUMN free_items integer NOT NULL DEFAULT 0 CHECK (free_items >= 0);
ALTER TABLE batches ADD COLUMN allowance_month date
    CHECK (allowance_month = date_trunc('month', allowance_month));
ALTER TABLE batches ADD CONSTRAINT batches_free_items
    CHECK (free_items <= total AND (free_items = 0 OR allowance_month IS NOT NULL));

-- One row per unit drawn, written by workers only: drawn at a run's charge, given back
-- (returned_at) when the run fails or is cancelled, each once.
CREATE TABLE allowance_uses (
    run_id       uuid PRIMARY KEY,
    account_id   uuid NOT NULL,
    month        date NOT NULL CHECK (month = date_trunc('month', month)),
    action       text NOT NULL CHECK (action IN ('light', 'deep', 'xray')),
    -- The plan's allowance when the unit was drawn (a plan may change within a month).
    allowance    integer NOT NULL CHECK (allowance > 0),
    drawn_at     timestamptz NOT NULL DEFAULT now(),
    returned_at  timestamptz,
    FOREIGN KEY (run_id, account_id) REFERENCES analyses (id, account_id)
);
CREATE INDEX allowance_uses_month ON allowance_uses (account_id, month, action);

ALTER TABLE allowance_uses ENABLE ROW LEVEL SECURITY;
ALTER TABLE allowance_uses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON allowance_uses TO oslira_api USING (account_id = app_account_id());
CREATE POLICY system ON allowance_uses TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON allowance_uses TO oslira_api;
GRANT SELECT, INSERT ON allowance_uses TO oslira_worker;
GRANT UPDATE (returned_at) ON allowance_uses TO oslira_worker;
GRANT INSERT (allowance_month) ON analyses TO oslira_api;
GRANT INSERT (free_items, allowance_month) ON batches TO oslira_api;

-- A unit is drawn for a run still pending, once; given back once, never drawn again.
CREATE FUNCTION allowance_uses_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.returned_at IS NOT NULL OR NOT EXISTS (
            SELECT 1 FROM public.analyses a
            WHERE a.id = NEW.run_id AND a.status = 'pending'
              AND a.allowance_month = NEW.month AND a.analysis_type = NEW.action) THEN
            RAISE EXCEPTION 'run % cannot draw a unit of %', NEW.run_id, NEW.month
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.returned_at IS NOT NULL OR NEW.returned_at IS NULL
       OR (NEW.run_id, NEW.account_id, NEW.month, NEW.action, NEW.allowance, NEW.drawn_at)
          IS DISTINCT FROM (OLD.run_id, OLD.account_id, OLD.month, OLD.action, OLD.allowance,
                            OLD.drawn_at) THEN
        RAISE EXCEPTION 'a unit is given back once, and nothing else about it changes'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER allowance_uses_guard BEFORE INSERT OR UPDATE ON allowance_uses
    FOR EACH ROW EXECUTE FUNCTION allowance_uses_guard();
REVOKE DELETE, TRUNCATE ON allowance_uses FROM oslira_api, oslira_worker;

-- Runs: as migration 0007, and a run drawing a unit of an allowance is paid by it and
-- completes with nothing charged.
CREATE OR REPLACE FUNCTION analyses_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    changed text[];
    paid boolean;
    free boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' OR NEW.credits_charged <> 0 OR NEW.result IS NOT NULL
           OR NEW.finished_at IS NOT NULL OR NEW.lead_id IS NOT NULL THEN
            RAISE EXCEPTION 'a run starts pending, uncharged and without a result'
                USING ERRCODE = 'check_violation';
        END IF;
        -- An item joins its batch as the batch is accepted, never once it is paid.
        IF NEW.batch_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM public.batches b
            WHERE b.id = NEW.batch_id AND b.status = 'pending'
              AND NEW.batch_position < b.total AND NEW.credits_cost = b.credits_cost
              AND NEW.analysis_type = b.analysis_type
              AND NEW.business_profile_id = b.business_profile_id) THEN
            RAISE EXCEPTION 'run % cannot join batch %', NEW.id, NEW.batch_id
                USING ERRCODE = 'check_violation';
        END IF;
        -- A free allowance is promised for the current month only; in a batch, to its
        -- first `free_items` items, exactly.
        IF (NEW.allowance_month IS NOT NULL
            AND NEW.allowance_month <> date_trunc('month', now() AT TIME ZONE 'UTC')::date)
           OR (NEW.batch_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM public.batches b
                WHERE b.id = NEW.batch_id
                  AND (NEW.batch_position < b.free_items) = (NEW.allowance_month IS NOT NULL)
                  AND (NEW.allowance_month IS NULL OR NEW.allowance_month = b.allowance_month)))
        THEN
            RAISE EXCEPTION 'run % cannot be promised the allowance of %', NEW.id,
                NEW.allowance_month USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    SELECT coalesce(array_agg(n.key), '{}') INTO changed
    FROM jsonb_each(to_jsonb(NEW)) AS n
    WHERE n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key;

    IF changed && ARRAY['id', 'account_id', 'business_profile_id', 'username',
                        'analysis_type', 'credits_cost', 'request_hash', 'created_at',
                        'batch_id', 'batch_position', 'allowance_month'] THEN
        RAISE EXCEPTION 'what a run is (%) never changes', array_to_string(changed, ', ')
            USING ERRCODE = 'check_violation';
    END IF;

    IF OLD.status IN ('complete', 'failed', 'cancelled') THEN
        IF NOT changed <@ ARRAY['updated_at', 'requested_by', 'lead_id'] THEN
            RAISE EXCEPTION 'run % is % and can no longer change', OLD.id, OLD.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

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
    -- Paid: drew a unit of a free monthly allowance, charged itself its cost, or is an
    -- item of a charged batch.
    free := EXISTS (SELECT 1 FROM public.allowance_uses u
                    WHERE u.run_id = OLD.id AND u.returned_at IS NULL);
    IF free THEN
        paid := true;
    ELSIF OLD.batch_id IS NULL THEN
        paid := EXISTS (SELECT 1 FROM public.credit_ledger l
                        WHERE l.run_id = OLD.id AND l.kind = 'charge'
                          AND l.delta = -OLD.credits_cost);
    ELSE
        paid := EXISTS (SELECT 1 FROM public.credit_ledger l
                        WHERE l.idempotency_key = 'charge:batch:' || OLD.batch_id);
    END IF;
    IF OLD.status = 'pending' AND NEW.status = 'processing' AND NOT paid THEN
        RAISE EXCEPTION 'run % is processed only once charged', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'complete' AND ((free AND NEW.credits_charged <> 0)
                                    OR (NOT free AND NEW.credits_charged <> OLD.credits_cost))
    THEN
        RAISE EXCEPTION 'run % completes charged its cost of % (none when free)',
            OLD.id, OLD.credits_cost USING ERRCODE = 'check_violation';
    END IF;

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
       AND NOT paid
       AND NOT EXISTS (SELECT 1 FROM public.credit_ledger l
                       WHERE l.run_id = OLD.id AND l.kind = 'charge')
    THEN
        RETURN NEW;  -- a run that never started ends without a charge
    END IF;
    RAISE EXCEPTION 'the API may only flag a run for cancellation or end a run that never started'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Batches: as migration 0007, and a batch whose every item drew a unit of a free
-- allowance runs with no charge; what it was promised never changes.
CREATE OR REPLACE FUNCTION batches_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    changed text[];
    charged boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.total = 0 AND NEW.status = 'complete' AND NEW.finished_at IS NOT NULL THEN
            RETURN NEW;  -- nothing accepted: nothing to run or charge
        END IF;
        IF NEW.status <> 'pending' OR NEW.total = 0 OR NEW.started_at IS NOT NULL
           OR NEW.finished_at IS NOT NULL THEN
            RAISE EXCEPTION 'a batch starts pending, with items' USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.free_items > 0
           AND NEW.allowance_month <> date_trunc('month', now() AT TIME ZONE 'UTC')::date THEN
            RAISE EXCEPTION 'a batch is promised the allowance of the current month only'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    SELECT coalesce(array_agg(n.key), '{}') INTO changed
    FROM jsonb_each(to_jsonb(NEW)) AS n
    WHERE n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key;
    IF changed && ARRAY['id', 'account_id', 'business_profile_id', 'analysis_type',
                        'credits_cost', 'total', 'rejected', 'request_hash', 'created_at',
                        'free_items', 'allowance_month'] THEN
        RAISE EXCEPTION 'what a batch is (%) never changes', array_to_string(changed, ', ')
            USING ERRCODE = 'check_violation';
    END IF;
    IF changed <@ ARRAY['requested_by', 'updated_at'] AND NEW.requested_by IS NULL THEN
        RETURN NEW;  -- the member who asked for it left the account
    END IF;
    IF 'idempotency_key' = ANY(changed) AND NOT (
        OLD.status = 'pending' AND NEW.status = 'failed' AND NEW.idempotency_key IS NULL) THEN
        RAISE EXCEPTION 'a batch gives its idempotency key back only when it failed to start'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status IN ('complete', 'cancelled', 'failed') THEN
        IF NOT changed <@ ARRAY['updated_at', 'requested_by'] THEN
            RAISE EXCEPTION 'batch % is % and can no longer change', OLD.id, OLD.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'pending' AND NEW.status IN ('running', 'cancelled', 'failed'))
        OR (OLD.status = 'running' AND NEW.status IN ('complete', 'cancelled'))
    ) THEN
        RAISE EXCEPTION 'a batch cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    -- Paid: charged, or every one of its items drew a unit of a free allowance.
    charged := EXISTS (SELECT 1 FROM public.credit_ledger l
                       WHERE l.idempotency_key = 'charge:batch:' || OLD.id)
               OR (SELECT count(*) FROM public.analyses a
                   JOIN public.allowance_uses u ON u.run_id = a.id
                   WHERE a.batch_id = OLD.id) = OLD.total;
    IF OLD.status = 'pending' AND NEW.status = 'running' AND NOT charged THEN
        RAISE EXCEPTION 'batch % runs only once charged', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    IF pg_has_role(current_user, 'oslira_worker', 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF NEW.status = OLD.status AND changed <@ ARRAY['cancel_requested_at', 'updated_at']
       AND (OLD.cancel_requested_at IS NULL OR NEW.cancel_requested_at = OLD.cancel_requested_at)
       AND NEW.cancel_requested_at IS NOT NULL THEN
        RETURN NEW;  -- flagged for cancellation
    END IF;
    IF OLD.status = 'pending' AND NEW.status IN ('failed', 'cancelled') AND NOT charged
       AND NEW.finished_at IS NOT NULL AND NEW.cancel_requested_at IS NOT NULL THEN
        RETURN NEW;  -- its workflow could not be started, or does not exist
    END IF;
    RAISE EXCEPTION 'the API may only flag a batch for cancellation or end one that never started'
        USING ERRCODE = 'insufficient_privilege';
END
$$;
