-- A fair order for calls waiting for a provider slot (DESIGN.md section 6). Temporal's
-- fairness orders only what still waits in Temporal; a call waiting for a slot is already
-- running on a worker, so the order in which slots are handed out is kept here:
--   * accounts take turns: a freed slot goes to the waiting account served longest ago;
--   * within an account, interactive single analyses (priority 1) go before batch items (2);
--   * then first come, first served.
-- A slot is handed straight from its releaser to the next waiter, in the releasing
-- transaction, so no slot idles while work waits.

CREATE TABLE provider_waiters (
    holder       uuid PRIMARY KEY,  -- the lease the waiter will hold
    provider     text NOT NULL,
    account_id   uuid NOT NULL,
    priority     smallint NOT NULL CHECK (priority IN (1, 2)),
    run_id       uuid NOT NULL,
    worker       text NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The waiting worker renews this; a waiter whose worker died is passed over.
    expires_at   timestamptz NOT NULL,
    slot         integer  -- set when a slot is handed over; the waiter then takes it up
);
CREATE INDEX provider_waiters_queue ON provider_waiters (provider, account_id, priority, enqueued_at)
    WHERE slot IS NULL;

-- When each account was last handed a slot of each provider: whose turn it is.
CREATE TABLE provider_turns (
    provider    text NOT NULL,
    account_id  uuid NOT NULL,
    served_at   timestamptz NOT NULL,
    PRIMARY KEY (provider, account_id)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON provider_waiters, provider_turns TO oslira_worker;

-- Hands every free slot of `p_provider` below `p_cap` to the next waiter in the fair order,
-- with a lease of `p_ttl` seconds; returns how many it handed out. Grants of one provider are
-- serialised by a transaction-level advisory lock, so two grants never pick the same waiter.
-- Waiting workers are told by NOTIFY, unless the only grant went to `p_self`, the caller.
CREATE FUNCTION provider_slots_grant(
    p_provider text, p_cap integer, p_ttl double precision, p_self uuid DEFAULT NULL
) RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    free_slot integer;
    next_waiter record;
    granted integer := 0;
    to_others integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('provider_slots'), hashtext(p_provider));
    -- Waiters whose workers stopped renewing them long ago.
    DELETE FROM provider_waiters
    WHERE provider = p_provider AND expires_at < now() - interval '1 minute';
    LOOP
        SELECT s.slot INTO free_slot FROM provider_slots s
        WHERE s.provider = p_provider AND s.slot < p_cap
          AND (s.holder IS NULL OR s.expires_at < now())
        ORDER BY s.slot LIMIT 1 FOR UPDATE;
        EXIT WHEN NOT FOUND;

        SELECT w.holder, w.account_id, w.run_id, w.worker INTO next_waiter
        FROM provider_waiters w
        LEFT JOIN provider_turns t ON t.provider = w.provider AND t.account_id = w.account_id
        WHERE w.provider = p_provider AND w.slot IS NULL AND w.expires_at > now()
        ORDER BY t.served_at NULLS FIRST, w.priority, w.enqueued_at
        LIMIT 1 FOR UPDATE OF w;
        EXIT WHEN NOT FOUND;

        UPDATE provider_slots
        SET holder = next_waiter.holder, run_id = next_waiter.run_id,
            worker = next_waiter.worker, acquired_at = now(),
            expires_at = now() + make_interval(secs => p_ttl)
        WHERE provider = p_provider AND slot = free_slot;
        UPDATE provider_waiters SET slot = free_slot WHERE holder = next_waiter.holder;
        INSERT INTO provider_turns (provider, account_id, served_at)
        VALUES (p_provider, next_waiter.account_id, clock_timestamp())
        ON CONFLICT (provider, account_id) DO UPDATE SET served_at = EXCLUDED.served_at;
        granted := granted + 1;
        IF next_waiter.holder IS DISTINCT FROM p_self THEN
            to_others := to_others + 1;
        END IF;
    END LOOP;
    IF to_others > 0 THEN
        PERFORM pg_notify('provider_slots', p_provider);  -- the waiters look for their grants
    END IF;
    RETURN granted;
END;
$$;
