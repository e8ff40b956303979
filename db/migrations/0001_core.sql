-- Accounts, business profiles, the credit ledger, analysis runs, leads and the profile cache,
-- with row level security: the API role sees one tenant per transaction, the worker role
-- (system work: workflows, schedules, webhooks) sees all.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'oslira_api') THEN
        CREATE ROLE oslira_api LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'oslira_worker') THEN
        CREATE ROLE oslira_worker LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- The tenant and user of the current API transaction, set with set_config(..., true).
CREATE FUNCTION app_account_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.account_id', true), '')::uuid $$;

CREATE FUNCTION app_user_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;

CREATE TABLE accounts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    email       text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE account_members (
    account_id  uuid NOT NULL REFERENCES accounts (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX account_members_user ON account_members (user_id);

CREATE TABLE business_profiles (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id       uuid NOT NULL REFERENCES accounts (id),
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    offering         text NOT NULL DEFAULT '',
    target_audience  text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX business_profiles_account ON business_profiles (account_id, created_at DESC);

-- The cached sum of an account's ledger.
CREATE TABLE credit_balances (
    account_id  uuid PRIMARY KEY REFERENCES accounts (id),
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per movement of credits; never updated or deleted.
CREATE TABLE credit_ledger (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id),
    delta            bigint NOT NULL CHECK (delta <> 0),
    balance_after    bigint NOT NULL CHECK (balance_after >= 0),
    kind             text NOT NULL
                     CHECK (kind IN ('purchase', 'grant', 'renewal', 'charge', 'refund', 'adjustment')),
    run_id           uuid,
    reference        text,
    description      text NOT NULL DEFAULT '',
    idempotency_key  text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (kind NOT IN ('charge', 'refund') OR run_id IS NOT NULL),
    CHECK (kind <> 'charge' OR delta < 0),
    CHECK (kind <> 'refund' OR delta > 0)
);
CREATE INDEX credit_ledger_account ON credit_ledger (account_id, id DESC);
CREATE INDEX credit_ledger_run ON credit_ledger (run_id) WHERE run_id IS NOT NULL;

CREATE FUNCTION credit_ledger_is_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'credit_ledger rows are never updated or deleted'; END $$;
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_is_append_only();

-- One row per analysis run; id is the run_id, workflow id is analysis-<id>.
CREATE TABLE analyses (
    id                   uuid PRIMARY KEY,
    account_id           uuid NOT NULL REFERENCES accounts (id),
    business_profile_id  uuid NOT NULL REFERENCES business_profiles (id),
    requested_by         uuid REFERENCES users (id),
    username             text NOT NULL,
    analysis_type        text NOT NULL CHECK (analysis_type IN ('light', 'deep', 'xray')),
    credits_cost         integer NOT NULL CHECK (credits_cost > 0),
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'processing', 'complete', 'failed', 'cancelled')),
    progress             smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    current_step         text,
    steps                jsonb NOT NULL DEFAULT '{}',
    error_code           text,
    error_message        text,
    idempotency_key      text,
    request_hash         text,
    cancel_requested_at  timestamptz,
    lead_id              uuid,
    result               jsonb,
    cost                 jsonb,
    credits_charged      integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz
);
-- Step 3: at most one run in flight per account, business profile and username.
CREATE UNIQUE INDEX analyses_one_in_flight ON analyses (account_id, business_profile_id, username)
    WHERE status IN ('pending', 'processing');
CREATE UNIQUE INDEX analyses_idempotency_key ON analyses (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX analyses_account ON analyses (account_id, created_at DESC);
CREATE INDEX analyses_in_flight_age ON analyses (updated_at) WHERE status IN ('pending', 'processing');

CREATE TABLE leads (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id           uuid NOT NULL REFERENCES accounts (id),
    business_profile_id  uuid NOT NULL REFERENCES business_profiles (id),
    username             text NOT NULL,
    full_name            text NOT NULL DEFAULT '',
    biography            text NOT NULL DEFAULT '',
    external_url         text,
    profile_pic_url      text,
    followers_count      bigint NOT NULL DEFAULT 0,
    follows_count        bigint NOT NULL DEFAULT 0,
    posts_count          bigint NOT NULL DEFAULT 0,
    is_private           boolean NOT NULL DEFAULT false,
    is_verified          boolean NOT NULL DEFAULT false,
    is_business          boolean NOT NULL DEFAULT false,
    business_category    text,
    engagement_rate      double precision,
    last_score           smallint,
    last_analysis_id     uuid,
    last_analyzed_at     timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    deleted_at           timestamptz
);
CREATE UNIQUE INDEX leads_identity ON leads (account_id, business_profile_id, username)
    WHERE deleted_at IS NULL;

-- The local profile cache (an S3 store replaces it where configured). Public data, shared
-- by all tenants, read and written by workers only.
CREATE TABLE profile_cache (
    key         text PRIMARY KEY,
    profile     jsonb NOT NULL,
    size_bytes  integer NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);

-- Row level security. FORCE applies it to the tables' owner too.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['business_profiles', 'credit_balances', 'credit_ledger',
                             'analyses', 'leads']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant ON %I TO oslira_api
                        USING (account_id = app_account_id())
                        WITH CHECK (account_id = app_account_id())', t);
        EXECUTE format('CREATE POLICY system ON %I TO oslira_worker USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$$;

ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
-- A user sees the accounts they belong to (needed to choose one), nothing else.
CREATE POLICY member ON accounts TO oslira_api
    USING (EXISTS (SELECT 1 FROM account_members m
                   WHERE m.account_id = accounts.id AND m.user_id = app_user_id()));
CREATE POLICY system ON accounts TO oslira_worker USING (true) WITH CHECK (true);

-- The API resolves the tenant from the signed-in user, so membership rows are visible by
-- user, before any account is chosen.
ALTER TABLE account_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE account_members FORCE ROW LEVEL SECURITY;
CREATE POLICY member ON account_members TO oslira_api USING (user_id = app_user_id());
CREATE POLICY system ON account_members TO oslira_worker USING (true) WITH CHECK (true);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY self ON users TO oslira_api USING (id = app_user_id());
CREATE POLICY system ON users TO oslira_worker USING (true) WITH CHECK (true);

ALTER TABLE profile_cache ENABLE ROW LEVEL SECURITY;
ALTER TABLE profile_cache FORCE ROW LEVEL SECURITY;
CREATE POLICY system ON profile_cache TO oslira_worker USING (true) WITH CHECK (true);

-- The API reads, creates runs and business profiles, and flags cancellations. It never
-- moves credits: only workers write the ledger and balances.
GRANT SELECT ON accounts, users, account_members, credit_balances, credit_ledger, leads
    TO oslira_api;
GRANT SELECT, INSERT, UPDATE ON business_profiles TO oslira_api;
GRANT SELECT ON analyses TO oslira_api;
GRANT INSERT (id, account_id, business_profile_id, requested_by, username, analysis_type,
              credits_cost, progress, current_step, steps, idempotency_key, request_hash)
    ON analyses TO oslira_api;
GRANT UPDATE (status, error_code, error_message, idempotency_key, cancel_requested_at,
              updated_at, finished_at) ON analyses TO oslira_api;
-- On top of the tenant policy (restrictive policies are ANDed): the API creates runs only
-- as pending and can only fail or cancel them, never complete one.
CREATE POLICY api_creates_pending ON analyses AS RESTRICTIVE FOR INSERT TO oslira_api
    WITH CHECK (status = 'pending' AND cancel_requested_at IS NULL);
CREATE POLICY api_never_completes ON analyses AS RESTRICTIVE FOR UPDATE TO oslira_api
    USING (true) WITH CHECK (status <> 'complete');

GRANT SELECT, INSERT, UPDATE ON accounts, users, account_members, business_profiles,
    credit_balances, analyses, leads, profile_cache TO oslira_worker;
GRANT SELECT, INSERT ON credit_ledger TO oslira_worker;
GRANT DELETE ON profile_cache TO oslira_worker;
GRANT EXECUTE ON FUNCTION app_account_id(), app_user_id() TO oslira_api, oslira_worker;
-- Neither role may create objects of its own (the default from PostgreSQL 15 on).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
