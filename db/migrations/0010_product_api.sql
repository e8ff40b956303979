-- The product API (DESIGN.md section 10). The leads list: filtered by business profile,
-- score, tier and date, sorted by date, score or followers, soft-deleted by the API and
-- restorable for 30 days.

-- Each sort the list offers, over the account's live leads, with the id as tie-breaker (the
-- export walks these in keyset order). The expressions are the ones db/leads.py sorts by:
-- a lead never scored sorts as -1, one never analysed at its creation.
CREATE INDEX leads_by_analyzed
    ON leads (account_id, (coalesce(last_analyzed_at, created_at)) DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX leads_by_score ON leads (account_id, (coalesce(last_score, -1)) DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX leads_by_followers ON leads (account_id, followers_count DESC, id DESC)
    WHERE deleted_at IS NULL;
-- Deleted leads by age, for restore and the daily cleanup.
CREATE INDEX leads_deleted ON leads (account_id, deleted_at) WHERE deleted_at IS NOT NULL;
-- A lead's analysis history.
CREATE INDEX analyses_lead ON analyses (lead_id, created_at DESC) WHERE lead_id IS NOT NULL;

-- The API deletes and restores leads, and changes nothing else about them.
GRANT UPDATE (deleted_at, updated_at) ON leads TO oslira_api;

-- A request's own account row is readable in its tenant transaction (an API key's request
-- has no user, so the membership policy alone hid it).
CREATE POLICY tenant ON accounts FOR SELECT TO oslira_api USING (id = app_account_id());
