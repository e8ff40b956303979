-- Batches (DESIGN.md sections 4 and 6). A batch is a request for many runs: its items are
-- ordinary `analyses` rows carrying `batch_id` and their place in it. A batch is paid once,
-- up front, for all its accepted items (ledger key `charge:batch:<batch_id>`, written by the
-- batch's workflow as its first step, in the transaction that makes it `running`); an item
-- that does not complete is refunded once (`refund:<run_id>`). Until it is charged, an
-- accepted batch counts as promised, as a pending single run does.

CREATE TABLE batches (
    id                   uuid PRIMARY KEY,
    account_id           uuid NOT NULL REFERENCES accounts (id),
    business_profile_id  uuid NOT NULL,
    requested_by         uuid,
    analysis_type        text NOT NULL CHECK (analysis_type IN ('light', 'deep', 'xray')),
    credits_cost         integer NOT NULL CHECK (credits_cost > 0),  -- per item
    -- Accepted items; 0 when every username was rejected (the batch is complete at once).
    total                integer NOT NULL CHECK (total BETWEEN 0 AND 10000),
    rejected             jsonb NOT NULL DEFAULT '[]',  -- as the request was answered
    -- pending: accepted, not yet charged; running: charged, items under way; complete: every
    -- item finished, whatever its outcome; cancelled; failed: never started, nothing charged.
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'running', 'complete', 'cancelled', 'failed')),
    idempotency_key      text,
    request_hash         text,
    cancel_requested_at  timestamptz,
    error_code           text,
    error_message        text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, account_id),
    FOREIGN KEY (business_profile_id, account_id) REFERENCES business_profiles (id, account_id),
    FOREIGN KEY (account_id, requested_by) REFERENCES account_members (account_id, user_id)
        ON DELETE SET NULL (requested_by)
);
CREATE UNIQUE INDEX batches_idempotency_key ON batches (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_account ON batches (account_id, created_at DESC);
-- The credits promised to batches accepted but not yet charged.
CREATE INDEX batches_pending_cost ON batches (account_id) INCLUDE (total, credits_cost)
    WHERE status = 'pending' AND cancel_requested_at IS NULL;

ALTER TABLE analyses ADD COLUMN batch_id uuid, ADD COLUMN batch_position integer;
ALTER TABLE analyses ADD CONSTRAINT analyses_batch
    FOREIGN KEY (batch_id, account_id) REFERENCES batches (id, account_id);
ALTER TABLE analyses ADD CONSTRAINT analyses_batch_position
    CHECK ((batch_id IS NULL) = (batch_position IS NULL) AND batch_position >= 0);
CREATE UNIQUE INDEX analyses_batch_items ON analyses (batch_id, batch_position)
    WHERE batch_id IS NOT NULL;
-- A batch's counts by status, read by its progress while it runs.
CREATE INDEX analyses_batch_status ON analyses (batch_id, status) WHERE batch_id IS NOT NULL;
-- Single runs only: a batch's items are promised by their batch.
DROP INDEX analyses_pending_cost;
CREATE INDEX analyses_pending_cost ON analyses (account_id) INCLUDE (credits_cost)
    WHERE status = 'pending' AND cancel_requested_at IS NULL AND batch_id IS NULL;

ALTER TABLE credit_ledger ADD COLUMN batch_id uuid;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_batch
    FOREIGN KEY (batch_id, account_id) REFERENCES batches (id, account_id);
CREATE INDEX credit_ledger_batch ON credit_ledger (batch_id, kind) INCLUDE (delta)
    WHERE batch_id IS NOT NULL;

ALTER TABLE batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE batches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON batches TO oslira_api
    USING (account_id = app_account_id()) WITH CHECK (account_id = app_account_id());
CREATE POLICY system ON batches TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON batches TO oslira_api;
GRANT INSERT (id, account_id, business_profile_id, requested_by, analysis_type, credits_cost,
              total, rejected, idempotency_key, request_hash, status, finished_at)
    ON batches TO oslira_api;
GRANT UPDATE (cancel_requested_at, status, error_code, error_message, finished_at, updated_at,
              idempotency_key)
    ON batches TO oslira_api;
GRANT INSERT (batch_id, batch_position) ON analyses TO oslira_api;
GRANT SELECT, INSERT, UPDATE ON batches TO oslira_worker;

-- A batch moves only forward, and is `running` only once charged; the API role flags a batch
-- for cancellation, and ends one whose workflow never started (nothing charged), giving its
-- idempotency key back when it failed to start, so the client may retry with it.
CREATE FUNCTION batches_guard() RETURNS trigger
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
        RETURN NEW;
    END IF;

    SELECT coalesce(array_agg(n.key), '{}') INTO changed
    FROM jsonb_each(to_jsonb(NEW)) AS n
    WHERE n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key;
    IF changed && ARRAY['id', 'account_id', 'business_profile_id', 'analysis_type',
                        'credits_cost', 'total', 'rejected', 'request_hash', 'created_at'] THEN
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
    charged := EXISTS (SELECT 1 FROM public.credit_ledger l
                       WHERE l.idempotency_key = 'charge:batch:' || OLD.id);
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
CREATE TRIGGER batches_guard BEFORE INSERT OR UPDATE ON batches
    FOR EACH ROW EXECUTE FUNCTION batches_guard();

-- Runs: an item of a batch is paid by its batch's charge; which batch, and where in it, never
-- changes; and the API may end an item that never started only while its batch is unpaid.
CREATE OR REPLACE FUNCTION analyses_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    changed text[];
    paid boolean;
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
        RETURN NEW;
    END IF;

    SELECT coalesce(array_agg(n.key), '{}') INTO changed
    FROM jsonb_each(to_jsonb(NEW)) AS n
    WHERE n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key;

    IF changed && ARRAY['id', 'account_id', 'business_profile_id', 'username',
                        'analysis_type', 'credits_cost', 'request_hash', 'created_at',
                        'batch_id', 'batch_position'] THEN
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
    -- Paid: charged itself its cost, or an item of a charged batch.
    IF OLD.batch_id IS NULL THEN
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
    IF NEW.status = 'complete' AND NEW.credits_charged <> OLD.credits_cost THEN
        RAISE EXCEPTION 'run % completes charged its cost of %', OLD.id, OLD.credits_cost
            USING ERRCODE = 'check_violation';
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

-- A batch's charge belongs to the batch, not to one run.
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_charge_subject
    CHECK (kind NOT IN ('charge', 'refund') OR run_id IS NOT NULL
           OR (kind = 'charge' AND batch_id IS NOT NULL));
