-- Live progress (DESIGN.md sections 9 and 10: GET .../events as Server-Sent Events). Each
-- change of a run's progress or status, and of a batch, is announced on one channel; each
-- API process listens on one connection and wakes the streams that follow that run or batch
-- (api/events.py), which then read it as any request does. A payload names what changed:
-- `run:<id>` or `batch:<id>`. PostgreSQL sends one notice per distinct payload and
-- transaction, so a statement ending 1,000 items of a batch announces the batch once.
CREATE FUNCTION notify_progress() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    IF TG_TABLE_NAME = 'analyses' THEN
        IF NEW.progress_version IS DISTINCT FROM OLD.progress_version
           OR NEW.status IS DISTINCT FROM OLD.status
           OR NEW.cancel_requested_at IS DISTINCT FROM OLD.cancel_requested_at THEN
            PERFORM pg_notify('oslira_progress', 'run:' || NEW.id);
            IF NEW.batch_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status THEN
                PERFORM pg_notify('oslira_progress', 'batch:' || NEW.batch_id);
            END IF;
        END IF;
    ELSE
        PERFORM pg_notify('oslira_progress', 'batch:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER analyses_notify_progress AFTER UPDATE ON analyses
    FOR EACH ROW EXECUTE FUNCTION notify_progress();
CREATE TRIGGER batches_notify_progress AFTER UPDATE ON batches
    FOR EACH ROW EXECUTE FUNCTION notify_progress();
