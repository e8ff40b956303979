-- The version of the progress document the row keeps: a write from a retried or slow
-- activity never replaces a newer document (db.analyses.save_progress).
ALTER TABLE analyses ADD COLUMN progress_version integer NOT NULL DEFAULT 0;
