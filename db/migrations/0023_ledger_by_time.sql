-- The analytics summary reads an account's ledger rows by time (credits spent and refunded
-- in a window): an index for that, beside the one by id the transaction list uses.
CREATE INDEX credit_ledger_account_time ON credit_ledger (account_id, created_at);
