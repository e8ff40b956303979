-- The AI circuit breakers' states (providers/breaker.py), written by each worker process when
-- one of its circuits changes state, read by the API's /health: a circuit opened within the
-- breaker's pause is open now (after it, the next call probes). One row per worker process
-- and circuit; rows of workers long gone are ignored by age and deleted by the cleanup job.
CREATE TABLE provider_circuits (
    worker      text NOT NULL,  -- pid@host, as the Temporal UI names workers
    circuit     text NOT NULL,  -- openai:<model>
    state       text NOT NULL CHECK (state IN ('closed', 'opened', 'half-opened')),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker, circuit)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON provider_circuits TO oslira_worker;
GRANT SELECT ON provider_circuits TO oslira_api;
