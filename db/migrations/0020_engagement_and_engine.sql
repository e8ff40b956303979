-- Issue 10, the AI part. Each lead keeps the engagement figures computed from its latest
-- posts (core/engagement.py), refreshed by every analysis; each complete run records which
-- engine produced its result: 'ai' (the model) or 'rules' (the rule-based fallback used when
-- the AI provider was down; such a run is refunded in the transaction that completes it).
ALTER TABLE leads ADD COLUMN engagement jsonb;
ALTER TABLE analyses ADD COLUMN engine text CHECK (engine IN ('ai', 'rules'));

-- The run guard, as migration 0011, and a run the rules completed is refunded: it completes
-- charged nothing, holds no allowance unit, and its charge (its own or its batch's) has been
-- given back in the same transaction.
CREATE OR REPLACE FUNCTION analyses_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    changed text[];
    paid boolean;
    free boolean;
    drew boolean;
    refunded boolean;
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
    refunded := EXISTS (SELECT 1 FROM public.credit_ledger l
                        WHERE l.run_id = OLD.id AND l.kind = 'refund');
    IF NEW.status = 'complete' AND NEW.engine = 'rules' THEN
        -- Refunded: its unit given back (a free run, or a free item of a charged batch), or
        -- its credits; and charged nothing.
        drew := EXISTS (SELECT 1 FROM public.allowance_uses u WHERE u.run_id = OLD.id);
        IF NEW.credits_charged <> 0 OR free OR (paid AND NOT drew AND NOT refunded) THEN
            RAISE EXCEPTION 'run % completed by the rules is refunded and charged nothing',
                OLD.id USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status = 'complete' AND (refunded
                                       OR (free AND NEW.credits_charged <> 0)
                                       OR (NOT free AND NEW.credits_charged <> OLD.credits_cost))
    THEN
        RAISE EXCEPTION 'run % completes charged its cost of % (none when free), unrefunded',
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
