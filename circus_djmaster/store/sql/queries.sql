-- circus-djmaster named queries. Each query starts with a "-- name: NAME" line; the
-- comment lines under it say what it does. Parameters use psycopg's %(name)s style.
--
-- A job is ready when it is due, not failed, and not locked (or its lock is older than
-- the settings' lock timeout, i.e. its worker's host died). Groups that name queues use
-- the *_in_queues queries (index range scans per queue); groups serving every queue use
-- their *_any_queue twins, which circus_djmaster/store/queries.py makes by dropping the
-- one line naming %(queues)s: keep that condition on a line of its own, never the first
-- of a WHERE. Unset min/max priority are passed as the int4 bounds, so the conditions
-- stay plain ranges that a prepared (generic) plan handles well.

-- name: reserve_jobs_in_queues
-- Lock up to %(limit)s ready jobs of the given queues for one worker, highest priority
-- (lowest number) first, then oldest run_at. SKIP LOCKED: racing workers never wait.
-- In the same round trip, delete the jobs this worker completed since its last call
-- (%(done)s): completions are batched, one statement per pass instead of one per job.
WITH done AS (DELETE FROM delayed_jobs WHERE id = ANY(%(done)s::bigint[]))
UPDATE delayed_jobs AS j
   SET locked_at = now(), locked_by = %(locked_by)s
  FROM (SELECT id FROM delayed_jobs
         WHERE failed_at IS NULL
           AND queue = ANY(%(queues)s::varchar[])
           AND run_at <= now()
           AND (locked_at IS NULL OR locked_at < now() - make_interval(secs => %(lock_timeout)s))
           AND priority BETWEEN %(min_priority)s AND %(max_priority)s
         ORDER BY priority, run_at
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) AS picked
 WHERE j.id = picked.id
RETURNING j.id, j.priority, j.attempts, j.handler, j.queue, j.run_at, j.run_alone;

-- name: complete_jobs
-- Jobs succeeded: delete them (when they could not wait for the next reserve).
DELETE FROM delayed_jobs WHERE id = ANY(%(ids)s::bigint[]);

-- name: touch_jobs
-- Refresh the locks of jobs this worker holds (reserved ahead, or a timed-out job whose
-- thread is still running: the lock must hold until the process is gone).
UPDATE delayed_jobs SET locked_at = now()
 WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(locked_by)s;

-- name: retry_job
-- A job failed and has attempts left: unlock it and schedule it again, at %(run_at)s
-- when the job defines reschedule_at, else at now() + attempts**4 + 5 seconds.
UPDATE delayed_jobs
   SET attempts = %(attempts)s,
       last_error = %(last_error)s,
       run_at = coalesce(%(run_at)s::timestamptz,
                         now() + make_interval(secs => power(%(attempts)s, 4) + 5)),
       locked_at = NULL, locked_by = NULL, updated_at = now()
 WHERE id = %(id)s;

-- name: fail_job
-- A job failed for good (attempts exhausted, or its handler cannot be decoded): keep it
-- for inspection with failed_at set.
UPDATE delayed_jobs
   SET attempts = %(attempts)s, last_error = %(last_error)s, failed_at = now(),
       locked_at = NULL, locked_by = NULL, updated_at = now()
 WHERE id = %(id)s;

-- name: fail_exhausted_job
-- A job reserved with no attempt left: its worker died on its last attempt while the
-- master could not tell its own max_attempts, or a deploy lowered max_attempts. It fails
-- without running; %(note)s says why, above the error it had.
UPDATE delayed_jobs
   SET failed_at = now(),
       last_error = %(note)s || coalesce(E'\n' || last_error, ''),
       locked_at = NULL, locked_by = NULL, updated_at = now()
 WHERE id = %(id)s;

-- name: delete_job
-- A failed job of a group (or job) with destroy_failed_jobs.
DELETE FROM delayed_jobs WHERE id = %(id)s;

-- name: unlock_jobs
-- A worker stops at once (QUIT): hand back the jobs it holds, as they were. No attempt is
-- charged: the worker chose to stop, the jobs did nothing wrong.
UPDATE delayed_jobs SET locked_at = NULL, locked_by = NULL
 WHERE locked_by = %(locked_by)s AND failed_at IS NULL
RETURNING id;

-- name: unlock_job_ids
-- A stopping worker hands back jobs it reserved ahead and never started.
UPDATE delayed_jobs SET locked_at = NULL, locked_by = NULL
 WHERE id = ANY(%(ids)s::bigint[]) AND locked_by = %(locked_by)s;

-- name: release_dead_workers_jobs
-- Workers of this host died (kill -9, OOM, a job calling os._exit): release their jobs for
-- an immediate retry, keeping their place in line (a job due long ago stays ahead of the
-- backlog instead of going to its end). What each job gets (docs/RELIABILITY.md):
-- * the job a worker was running alone when it died (%(charged_ids)s) is charged an
--   attempt against its own max_attempts (%(charged_max_attempts)s, as the worker
--   resolved it): a job that kills its worker every time ends failed (or deleted, with
--   %(charged_destroy)s) instead of looping;
-- * the jobs of a worker that died running several at once (%(isolated_ids)s; all of its
--   jobs when %(isolate_all)s: nobody knows what it ran) are not charged: nobody knows
--   which one killed it. They get run_alone, so a worker runs each with nothing beside
--   it from then on, and only the guilty one can be charged;
-- * jobs the worker only held (reserved ahead, done but not deleted yet) go back as they
--   were.
-- Returns each job's id, attempts and outcome: released, isolated, retry, failed or
-- destroyed.
WITH owned AS (
    SELECT j.id, j.attempts, c.max_attempts, c.destroy,
           (%(isolate_all)s OR j.id = ANY(%(isolated_ids)s::bigint[])) AS isolate,
           (c.id IS NOT NULL AND j.attempts + 1 >= c.max_attempts) AS final
      FROM delayed_jobs AS j
      LEFT JOIN unnest(%(charged_ids)s::bigint[], %(charged_max_attempts)s::int[],
                       %(charged_destroy)s::bool[]) AS c(id, max_attempts, destroy)
             ON c.id = j.id
     WHERE j.locked_by = ANY(%(locked_by)s::varchar[]) AND j.failed_at IS NULL
       FOR UPDATE OF j),
destroyed AS (
    DELETE FROM delayed_jobs AS j
     USING owned AS o
     WHERE j.id = o.id AND o.final AND o.destroy
    RETURNING j.id, o.attempts + 1 AS attempts, 'destroyed' AS outcome),
updated AS (
    UPDATE delayed_jobs AS j
       SET attempts = j.attempts + (o.max_attempts IS NOT NULL)::int,
           last_error = CASE WHEN o.max_attempts IS NOT NULL THEN %(charged_error)s
                             WHEN o.isolate THEN %(isolated_error)s
                             ELSE j.last_error END,
           failed_at = CASE WHEN o.final THEN now() END,
           run_alone = j.run_alone OR (o.isolate AND o.max_attempts IS NULL),
           run_at = least(j.run_at, now()),
           locked_at = NULL, locked_by = NULL, updated_at = now()
      FROM owned AS o
     WHERE j.id = o.id AND NOT (o.final AND o.destroy)
    RETURNING j.id, j.attempts,
              CASE WHEN o.final THEN 'failed'
                   WHEN o.max_attempts IS NOT NULL THEN 'retry'
                   WHEN o.isolate THEN 'isolated'
                   ELSE 'released' END AS outcome)
SELECT id, attempts, outcome FROM destroyed
UNION ALL
SELECT id, attempts, outcome FROM updated;

-- name: locked_by_on_host
-- The owners (locked_by) of live locked jobs on one host: the master releases those whose
-- worker process no longer exists, e.g. one that died while no master was running.
SELECT DISTINCT locked_by FROM delayed_jobs
 WHERE left(locked_by, length(%(prefix)s)) = %(prefix)s AND failed_at IS NULL;

-- name: count_ready_in_queues
-- Ready jobs of the given queues, counted up to %(limit)s (the master never needs more
-- than the free worker slots, and a capped count stays cheap at millions of rows).
SELECT count(*) AS ready FROM (
    SELECT 1 FROM delayed_jobs
     WHERE failed_at IS NULL
       AND queue = ANY(%(queues)s::varchar[])
       AND run_at <= now()
       AND (locked_at IS NULL OR locked_at < now() - make_interval(secs => %(lock_timeout)s))
       AND priority BETWEEN %(min_priority)s AND %(max_priority)s
     LIMIT %(limit)s) AS ready;

-- name: seconds_to_next_in_queues
-- Seconds (database clock) until the next scheduled job of the given queues is due; NULL
-- when none is scheduled. One short index scan per queue (the (queue, run_at) index, in
-- run_at order, up to the first match): min(run_at) over every scheduled job of the
-- queues would read them all (millions, benchmark B7), and the master runs this for
-- every group and database in every scaling pass.
SELECT extract(epoch FROM min(next.run_at) - now())::float8 AS seconds
  FROM unnest(%(queues)s::varchar[]) AS q(queue)
  CROSS JOIN LATERAL (
        SELECT run_at FROM delayed_jobs
         WHERE queue = q.queue AND failed_at IS NULL AND locked_at IS NULL AND run_at > now()
           AND priority BETWEEN %(min_priority)s AND %(max_priority)s
         ORDER BY run_at LIMIT 1) AS next;

-- name: seconds_to_next_any_queue
-- As seconds_to_next_in_queues, for a group that serves every queue (written by hand: its
-- queues are found by a loose index scan, one step per distinct queue of the live jobs,
-- then one short scan each, and one for the jobs without a queue).
WITH RECURSIVE queues(queue) AS (
    SELECT min(queue) FROM delayed_jobs WHERE failed_at IS NULL
    UNION ALL
    SELECT (SELECT min(queue) FROM delayed_jobs WHERE failed_at IS NULL AND queue > q.queue)
      FROM queues AS q
     WHERE q.queue IS NOT NULL)
SELECT extract(epoch FROM min(due) - now())::float8 AS seconds
  FROM (SELECT next.run_at AS due
          FROM queues AS q
          CROSS JOIN LATERAL (
                SELECT run_at FROM delayed_jobs
                 WHERE queue = q.queue AND failed_at IS NULL AND locked_at IS NULL
                   AND run_at > now()
                   AND priority BETWEEN %(min_priority)s AND %(max_priority)s
                 ORDER BY run_at LIMIT 1) AS next
         WHERE q.queue IS NOT NULL
        UNION ALL
        (SELECT run_at FROM delayed_jobs
          WHERE queue IS NULL AND failed_at IS NULL AND locked_at IS NULL AND run_at > now()
            AND priority BETWEEN %(min_priority)s AND %(max_priority)s
          ORDER BY run_at LIMIT 1)) AS nexts;

-- name: insert_job
-- Enqueue one job. run_at defaults to now() + %(delay)s seconds on the database clock.
INSERT INTO delayed_jobs (handler, queue, priority, run_at)
VALUES (%(handler)s, %(queue)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)))
RETURNING id;

-- name: insert_jobs
-- Enqueue many jobs in one statement (one round trip, one NOTIFY), from parallel arrays.
INSERT INTO delayed_jobs (handler, queue, priority, run_at)
SELECT handler, queue, priority, coalesce(run_at, now() + make_interval(secs => delay))
  FROM unnest(%(handlers)s::text[], %(queues)s::varchar[], %(priorities)s::int[],
              %(run_ats)s::timestamptz[], %(delays)s::float8[])
       AS j(handler, queue, priority, run_at, delay)
RETURNING id;

-- name: database_now
SELECT now() AS now;

-- name: probe
-- A round trip that fails if the connection died silently (the master's LISTEN probe).
SELECT 1;

-- name: listen
-- The channel of the trigger's NOTIFY (circus_djmaster/contracts/notify.py, CHANNEL).
LISTEN delayed_jobs;

-- name: stats_in_queues
-- Counts for `djmaster status`, `wait`, the demo and the metrics: ready, running (locked
-- and fresh), scheduled (retries waiting for their back-off included), retrying (those
-- retries: attempts made, due later), failed, the age in seconds of the oldest ready
-- job and the seconds until the next retry is due. A full pass over the group's jobs:
-- for people, not for the master's hot path.
SELECT count(*) FILTER (WHERE failed_at IS NULL AND run_at <= now()
                          AND (locked_at IS NULL
                               OR locked_at < now() - make_interval(secs => %(lock_timeout)s)))
           AS ready,
       count(*) FILTER (WHERE failed_at IS NULL
                          AND locked_at >= now() - make_interval(secs => %(lock_timeout)s))
           AS running,
       count(*) FILTER (WHERE failed_at IS NULL AND run_at > now() AND locked_at IS NULL)
           AS scheduled,
       count(*) FILTER (WHERE failed_at IS NULL AND run_at > now() AND locked_at IS NULL
                          AND attempts > 0)
           AS retrying,
       extract(epoch FROM min(run_at) FILTER (
           WHERE failed_at IS NULL AND run_at > now() AND locked_at IS NULL
             AND attempts > 0) - now())::float8
           AS next_retry_in,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
       extract(epoch FROM now() - min(run_at) FILTER (
           WHERE failed_at IS NULL AND run_at <= now()
             AND (locked_at IS NULL
                  OR locked_at < now() - make_interval(secs => %(lock_timeout)s))))::float8
           AS oldest_ready_age
  FROM delayed_jobs
 WHERE priority BETWEEN %(min_priority)s AND %(max_priority)s
   AND queue = ANY(%(queues)s::varchar[]);

-- name: list_jobs
-- Jobs for `djmaster jobs list`, newest first; %(failed)s picks failed or live jobs and
-- %(queue)s (NULL: any) one queue.
SELECT id, queue, priority, attempts, run_at, locked_by, failed_at, handler, last_error
  FROM delayed_jobs
 WHERE (failed_at IS NOT NULL) = %(failed)s
   AND (%(queue)s::varchar IS NULL OR queue = %(queue)s::varchar)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: retry_failed_jobs
-- Give failed jobs a fresh start: due now, attempts reset, last_error kept for reference.
-- %(ids)s NULL means every failed job.
UPDATE delayed_jobs
   SET failed_at = NULL, attempts = 0, run_at = now(), updated_at = now()
 WHERE failed_at IS NOT NULL
   AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id;

-- name: delete_failed_jobs
-- %(ids)s NULL means every failed job.
DELETE FROM delayed_jobs
 WHERE failed_at IS NOT NULL
   AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id;

-- name: due_now_jobs
-- The admin's "due now" on scheduled jobs: waiting (not failed, not locked) jobs of
-- %(ids)s become due at once (the update trigger wakes the master).
UPDATE delayed_jobs
   SET run_at = now(), updated_at = now()
 WHERE failed_at IS NULL AND locked_at IS NULL
   AND id = ANY(%(ids)s::bigint[])
RETURNING id;

-- name: delete_waiting_jobs
-- The admin's delete on scheduled jobs: only those no worker holds.
DELETE FROM delayed_jobs
 WHERE failed_at IS NULL AND locked_at IS NULL
   AND id = ANY(%(ids)s::bigint[])
RETURNING id;
