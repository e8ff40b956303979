-- The daily cleanup (DESIGN.md section 8) hard-deletes what was soft-deleted more than 30
-- days ago: leads, and business profiles nothing else refers to. Never ledger rows.
GRANT DELETE ON leads, business_profiles TO oslira_worker;
