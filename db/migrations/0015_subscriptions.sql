-- Stripe billing (DESIGN.md section 8): each account's Stripe customer, and its subscriptions
-- as Stripe last said they are (the webhook handlers re-read them from Stripe).

ALTER TABLE accounts ADD COLUMN stripe_customer_id text UNIQUE
    CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9_]{1,200}$');

CREATE TABLE subscriptions (
    id                    text PRIMARY KEY CHECK (id ~ '^sub_[A-Za-z0-9_]{1,200}$'),
    account_id            uuid NOT NULL REFERENCES accounts (id),
    customer_id           text NOT NULL,
    plan                  text NOT NULL CHECK (plan ~ '^[a-z0-9_-]{1,40}$'),
    -- Stripe's statuses: active, past_due, canceled, incomplete, ...
    status                text NOT NULL,
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    canceled_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_account ON subscriptions (account_id, created_at DESC);

ALTER TABLE subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON subscriptions FOR SELECT TO oslira_api
    USING (account_id = app_account_id());
CREATE POLICY system ON subscriptions TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON subscriptions TO oslira_api;
GRANT SELECT, INSERT, UPDATE ON subscriptions TO oslira_worker;
-- The API writes what Stripe answered when a user cancels, without waiting for the event.
GRANT UPDATE (cancel_at_period_end, updated_at) ON subscriptions TO oslira_api;
CREATE POLICY tenant_cancel ON subscriptions FOR UPDATE TO oslira_api
    USING (account_id = app_account_id()) WITH CHECK (account_id = app_account_id());

-- The API records the account's Stripe customer, once: the first one recorded stays, and
-- the function answers it (two concurrent purchases agree on one customer).
DO $$
BEGIN
    EXECUTE format('CREATE POLICY definer_customer ON accounts FOR UPDATE TO %I '
                   'USING (true) WITH CHECK (true)', current_user);
END
$$;
CREATE FUNCTION set_stripe_customer(account uuid, customer text) RETURNS text
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        WITH stored AS (
            UPDATE public.accounts SET stripe_customer_id = customer
            WHERE id = account AND account = public.app_account_id()
              AND stripe_customer_id IS NULL
            RETURNING stripe_customer_id)
        SELECT coalesce((SELECT stripe_customer_id FROM stored),
                        (SELECT stripe_customer_id FROM public.accounts
                         WHERE id = account AND account = public.app_account_id()));
    $$;
REVOKE EXECUTE ON FUNCTION set_stripe_customer(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION set_stripe_customer(uuid, text) TO oslira_api;
