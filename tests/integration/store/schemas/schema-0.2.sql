-- The schema of circus-djmaster 0.2 (main before issue 15: run_alone, no unique keys, no history, no recurring runs), as it shipped.
-- circus-djmaster schema. Idempotent: `djmaster migrate` runs it on every call, inside one
-- transaction under an advisory lock, so concurrent migrations wait for each other.
--
-- The table keeps delayed_job_active_record's columns, names and meaning, so tools that
-- know delayed_job can read it. Times always come from the database clock (now()).

CREATE TABLE IF NOT EXISTS delayed_jobs (
    id          bigserial PRIMARY KEY,
    priority    integer     NOT NULL DEFAULT 0,
    attempts    integer     NOT NULL DEFAULT 0,
    handler     text        NOT NULL,
    last_error  text,
    -- NOT NULL (delayed_job allows NULL): a job without run_at would never be found.
    run_at      timestamptz NOT NULL DEFAULT now(),
    locked_at   timestamptz,
    failed_at   timestamptz,
    locked_by   varchar,
    queue       varchar,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Columns added after 0.1 upgrade a database in place. Each ALTER runs only when the
-- column is missing: ALTER TABLE takes the strongest lock even when it has nothing to
-- do, and migrate runs on every deploy. With a constant default, PostgreSQL (11 and
-- later) only records the column in the catalog: no table rewrite.
-- run_alone: the job was running beside other jobs when its worker died, so nobody
-- knows which one killed it; a worker runs it with nothing else running beside it
-- from then on (docs/RELIABILITY.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'delayed_jobs'::regclass AND attname = 'run_alone'
                      AND NOT attisdropped) THEN
        ALTER TABLE delayed_jobs ADD COLUMN run_alone boolean NOT NULL DEFAULT false;
    END IF;
END
$$;

-- delayed_job's own index, (priority, run_at), made partial: the reserve query walks it
-- in its ORDER BY priority, run_at order; failed rows, which pile up over time and keep
-- their old run_at, are not in it, so they are never scanned and thrown away.
CREATE INDEX IF NOT EXISTS delayed_jobs_priority
    ON delayed_jobs (priority, run_at) WHERE failed_at IS NULL;

-- Live jobs by queue and due time: the master's ready count and next-run_at lookups are
-- range scans on it, whatever the priorities.
CREATE INDEX IF NOT EXISTS delayed_jobs_live_by_run_at
    ON delayed_jobs (queue, run_at) WHERE failed_at IS NULL;

-- No index on locked_by or locked_at, on purpose: reserving a job then changes no
-- indexed column, so PostgreSQL updates the row in place (a HOT update: no new index
-- entries, much less bloat), the hot path of every job. Finding a dead worker's jobs
-- (rare) walks the live jobs instead. The fill factor leaves each page room for that.
DROP INDEX IF EXISTS delayed_jobs_locked_by;
ALTER TABLE delayed_jobs SET (fillfactor = 80);

-- NOTIFY on insert: one notification per statement, whatever the number of rows, whose
-- payload is a JSON array of the distinct queue names ("" for NULL), never job data.
-- Scheduled jobs notify too: the master learns their run_at and wakes up at that time.
CREATE OR REPLACE FUNCTION delayed_jobs_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    SELECT json_agg(DISTINCT coalesce(queue, ''))::text INTO payload
      FROM delayed_jobs_inserted WHERE failed_at IS NULL;
    IF payload IS NOT NULL THEN
        -- pg_notify payloads are limited to 8000 bytes; "*" means "look at every queue".
        IF octet_length(payload) > 7900 THEN
            payload := '"*"';
        END IF;
        PERFORM pg_notify('delayed_jobs', payload);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS delayed_jobs_notify_insert ON delayed_jobs;
CREATE TRIGGER delayed_jobs_notify_insert
    AFTER INSERT ON delayed_jobs
    REFERENCING NEW TABLE AS delayed_jobs_inserted
    FOR EACH STATEMENT EXECUTE FUNCTION delayed_jobs_notify_insert();

-- NOTIFY when a job becomes available again (released, retried, rescheduled, unfailed).
-- Row level with a WHEN clause, so the hot path (reserving sets locked_at, success deletes)
-- never runs it; Postgres folds identical payloads of one transaction into one notification.
CREATE OR REPLACE FUNCTION delayed_jobs_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('delayed_jobs', json_build_array(coalesce(NEW.queue, ''))::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS delayed_jobs_notify_update ON delayed_jobs;
CREATE TRIGGER delayed_jobs_notify_update
    AFTER UPDATE OF locked_at, failed_at, run_at, queue ON delayed_jobs
    FOR EACH ROW
    WHEN (NEW.locked_at IS NULL AND NEW.failed_at IS NULL
          AND (OLD.locked_at IS NOT NULL OR OLD.failed_at IS NOT NULL
               OR OLD.run_at IS DISTINCT FROM NEW.run_at
               OR OLD.queue IS DISTINCT FROM NEW.queue))
    EXECUTE FUNCTION delayed_jobs_notify_update();
