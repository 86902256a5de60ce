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
-- unique_key (0.3): a job enqueued with a key holds it while it waits; a worker that
-- takes the job clears it (reserve_jobs_*), so at most one job per key waits (the partial
-- unique index below) while any number may run. NULL for every other job.
-- keep_finished (0.3): seconds a finished job is kept in delayed_jobs_finished, set at
-- enqueue (NULL: the worker group's keep_finished decides).
-- cancel_requested_at (0.3): `djmaster jobs cancel` asked the worker running this job
-- to stop; job code sees it as current_job().cancel_requested.
-- The new columns hold NULL for every row that does not use them: not one is indexed
-- but unique_key (partially), so reserving a job stays a HOT update.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'delayed_jobs'::regclass AND attname = 'run_alone'
                      AND NOT attisdropped) THEN
        ALTER TABLE delayed_jobs ADD COLUMN run_alone boolean NOT NULL DEFAULT false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'delayed_jobs'::regclass AND attname = 'unique_key'
                      AND NOT attisdropped) THEN
        ALTER TABLE delayed_jobs ADD COLUMN unique_key varchar,
                                 ADD COLUMN keep_finished float8,
                                 ADD COLUMN cancel_requested_at timestamptz;
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

-- At most one waiting job per unique_key (enqueue(..., unique_key=...)). Only rows with
-- a key are in it: every other insert, and every reserve of a job without a key, leaves
-- it alone.
CREATE UNIQUE INDEX IF NOT EXISTS delayed_jobs_unique_key
    ON delayed_jobs (unique_key) WHERE unique_key IS NOT NULL;

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

-- Finished jobs kept on request (keep_finished): one row per job, written by its worker
-- when it succeeded, failed for good or was cancelled, and deleted by the master once
-- keep_until passes (prune_finished_jobs). delayed_jobs keeps delayed_job's meaning: a
-- succeeded job leaves it, a failed one stays there with failed_at (so that it can be
-- retried) and is copied here.
CREATE TABLE IF NOT EXISTS delayed_jobs_finished (
    job_id       bigint      PRIMARY KEY,  -- delayed_jobs.id
    outcome      varchar     NOT NULL,     -- succeeded, failed, cancelled
    queue        varchar,
    priority     integer     NOT NULL,
    handler      text        NOT NULL,
    attempts     integer     NOT NULL,     -- runs made, the last one included
    result       jsonb,                    -- what the job returned (succeeded), size-capped
    result_note  text,                     -- why the result was not kept, if it was not
    last_error   text,
    run_at       timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,              -- of the last run
    finished_at  timestamptz NOT NULL,
    run_time     float8,                   -- seconds, of the last run
    finished_by  varchar,                  -- locked_by of the worker that ran it
    keep_until   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS delayed_jobs_finished_keep_until
    ON delayed_jobs_finished (keep_until);

-- Recurring jobs: one row per (entry, due time) enqueued. The master inserts it in the
-- statement that inserts the job (enqueue_recurring_job), ON CONFLICT DO NOTHING: however
-- many masters (hosts, restarts) try, the primary key lets exactly one enqueue each due
-- time. Old rows are pruned by the master (each entry's latest is kept).
CREATE TABLE IF NOT EXISTS delayed_jobs_recurring_runs (
    name         varchar     NOT NULL,
    due_at       timestamptz NOT NULL,
    job_id       bigint      NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, due_at)
);
