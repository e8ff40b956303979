-- Stripe webhook events (DESIGN.md section 8): each stored once, by its id, as received
-- (the signature was checked on the raw body first), then processed by a workflow named
-- after it. `failed` is the dead-letter state an operator sees and replays.

CREATE TABLE stripe_events (
    id            text PRIMARY KEY CHECK (id ~ '^evt_[A-Za-z0-9_]{1,200}$'),
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'received'
                  CHECK (status IN ('received', 'processed', 'ignored', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX stripe_events_failed ON stripe_events (received_at) WHERE status = 'failed';

ALTER TABLE stripe_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE stripe_events FORCE ROW LEVEL SECURITY;
CREATE POLICY system ON stripe_events TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON stripe_events TO oslira_worker;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY definer ON stripe_events TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;

-- The webhook endpoint (the API role, no tenant) stores an event and learns whether it was
-- new; it can neither read nor change stored events.
CREATE FUNCTION receive_stripe_event(event_id text, event_type text, body jsonb)
    RETURNS boolean
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        WITH stored AS (
            INSERT INTO public.stripe_events (id, type, payload)
            VALUES (event_id, event_type, body)
            ON CONFLICT (id) DO NOTHING
            RETURNING 1)
        SELECT EXISTS (SELECT 1 FROM stored);
    $$;
REVOKE EXECUTE ON FUNCTION receive_stripe_event(text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION receive_stripe_event(text, text, jsonb) TO oslira_api;
