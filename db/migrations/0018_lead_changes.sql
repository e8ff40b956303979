-- What changed on a lead's profile between two of its analyses (DESIGN.md section 7):
-- followers by more than 10%, the bio by more than 30%, private or verified flipped. Written
-- by the run that saw the change, in the transaction that saves its result.
CREATE TABLE lead_changes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   uuid NOT NULL,
    lead_id      uuid NOT NULL,
    analysis_id  uuid NOT NULL,
    field        text NOT NULL
                 CHECK (field IN ('followers_count', 'biography', 'is_private', 'is_verified')),
    before       jsonb NOT NULL,
    after        jsonb NOT NULL,
    amount       double precision,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (analysis_id, field),
    FOREIGN KEY (lead_id, account_id) REFERENCES leads (id, account_id) ON DELETE CASCADE
);
CREATE INDEX lead_changes_lead ON lead_changes (lead_id, detected_at DESC);

ALTER TABLE lead_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE lead_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON lead_changes FOR SELECT TO oslira_api
    USING (account_id = app_account_id());
CREATE POLICY system ON lead_changes TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON lead_changes TO oslira_api;
GRANT SELECT, INSERT, DELETE ON lead_changes TO oslira_worker;

-- The API reads a lead's cached profile (is it stale for a tier?) and drops it on a user's
-- request (the next analysis scrapes). Cached profiles are public data shared by every
-- tenant; the routes only ever touch the profile of a lead the caller's account has.
CREATE POLICY api_read ON profile_cache FOR SELECT TO oslira_api USING (true);
CREATE POLICY api_drop ON profile_cache FOR DELETE TO oslira_api USING (true);
GRANT SELECT, DELETE ON profile_cache TO oslira_api;
