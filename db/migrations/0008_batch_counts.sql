-- A batch's items counted by status, kept up to date by the statements that change them, so
-- a batch's progress is one short read however many items it has (DESIGN.md section 6:
-- polled by scripts while 10,000 items run). Written only by the triggers below.

CREATE TABLE batch_counts (
    batch_id    uuid NOT NULL,
    account_id  uuid NOT NULL,
    status      text NOT NULL,
    items       integer NOT NULL,
    PRIMARY KEY (batch_id, status),
    FOREIGN KEY (batch_id, account_id) REFERENCES batches (id, account_id)
);

-- Not FORCEd: the table's owner, which the triggers run as, is the one writer.
ALTER TABLE batch_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant ON batch_counts TO oslira_api
    USING (account_id = app_account_id()) WITH CHECK (account_id = app_account_id());
CREATE POLICY system ON batch_counts TO oslira_worker USING (true) WITH CHECK (true);
GRANT SELECT ON batch_counts TO oslira_api, oslira_worker;

-- Owned by the migrating role and run with its rights: neither app role writes the counts
-- itself. Rows are added in (batch, status) order, so concurrent items of one batch lock
-- the counters they share in the same order.
CREATE FUNCTION batch_counts_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    INSERT INTO public.batch_counts AS c (batch_id, account_id, status, items)
    SELECT batch_id, account_id, status, count(*) FROM added
    WHERE batch_id IS NOT NULL
    GROUP BY batch_id, account_id, status
    ORDER BY batch_id, status
    ON CONFLICT (batch_id, status) DO UPDATE SET items = c.items + excluded.items;
    RETURN NULL;
END
$$;

CREATE FUNCTION batch_counts_updated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    INSERT INTO public.batch_counts AS c (batch_id, account_id, status, items)
    SELECT batch_id, account_id, status, sum(delta) FROM (
        SELECT o.batch_id, o.account_id, o.status, -1 AS delta
        FROM before_rows o JOIN after_rows n ON n.id = o.id
        WHERE o.batch_id IS NOT NULL AND o.status <> n.status
        UNION ALL
        SELECT n.batch_id, n.account_id, n.status, 1
        FROM before_rows o JOIN after_rows n ON n.id = o.id
        WHERE n.batch_id IS NOT NULL AND o.status <> n.status
    ) moved
    GROUP BY batch_id, account_id, status
    HAVING sum(delta) <> 0
    ORDER BY batch_id, status
    ON CONFLICT (batch_id, status) DO UPDATE SET items = c.items + excluded.items;
    RETURN NULL;
END
$$;

CREATE TRIGGER batch_counts_inserted AFTER INSERT ON analyses
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION batch_counts_inserted();
CREATE TRIGGER batch_counts_updated AFTER UPDATE ON analyses
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_counts_updated();

INSERT INTO batch_counts (batch_id, account_id, status, items)
SELECT batch_id, account_id, status, count(*) FROM analyses
WHERE batch_id IS NOT NULL
GROUP BY batch_id, account_id, status;
