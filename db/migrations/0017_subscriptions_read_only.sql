-- Subscriptions are written by Stripe's events only (in order, under the subscription's
-- lock): the API answers a cancellation with what Stripe answered, and no longer writes it.
DROP POLICY tenant_cancel ON subscriptions;
REVOKE UPDATE (cancel_at_period_end, updated_at) ON subscriptions FROM oslira_api;
