-- The daily cleanup deletes Stripe events applied more than 90 days ago (DESIGN.md section 8).
GRANT DELETE ON stripe_events TO oslira_worker;
CREATE INDEX stripe_events_received ON stripe_events (received_at) WHERE status = 'received';
