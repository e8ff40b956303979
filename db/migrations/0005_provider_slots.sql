-- The global provider cap (DESIGN.md section 6): at most N calls to a provider in flight
-- across every worker process. A call holds one of the provider's N slots by a lease that
-- its worker renews while the call lasts; a worker that dies stops renewing, and its slots
-- come back when their leases expire (seconds). Workers only: the API never calls a provider.
CREATE TABLE provider_slots (
    provider     text NOT NULL,
    slot         integer NOT NULL CHECK (slot >= 0),
    holder       uuid,  -- one lease: whoever took it renews and releases with it
    run_id       uuid,  -- for operators: which run holds it
    worker       text,  -- and which worker process (pid@host, as Temporal names workers)
    acquired_at  timestamptz,
    expires_at   timestamptz,
    PRIMARY KEY (provider, slot)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON provider_slots TO oslira_worker;
