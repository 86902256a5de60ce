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
-- A job taken gives up its unique_key (another job with that key may wait meanwhile);
-- for a job without one the value does not change and the update stays HOT.
WITH done AS (DELETE FROM delayed_jobs WHERE id = ANY(%(done)s::bigint[]))
UPDATE delayed_jobs AS j
   SET locked_at = now(), locked_by = %(locked_by)s, unique_key = NULL
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
RETURNING j.id, j.priority, j.attempts, j.handler, j.queue, j.run_at, j.run_alone,
          j.keep_finished, j.cancel_requested_at IS NOT NULL AS cancel_requested;

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
INSERT INTO delayed_jobs (handler, queue, priority, run_at, keep_finished)
VALUES (%(handler)s, %(queue)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
        %(keep_finished)s::float8)
RETURNING id;

-- name: insert_unique_job
-- Enqueue one job with a unique key, unless a job with that key already waits: then
-- nothing is written and that job's id comes back (created false). The unique index
-- decides, never an error: a caller's transaction is never aborted by a duplicate. No
-- row at all: the waiting job was taken (its key cleared) or was committed after this
-- statement's snapshot while it waited for it; the caller runs the statement again.
WITH inserted AS (
    INSERT INTO delayed_jobs (handler, queue, priority, run_at, keep_finished, unique_key)
    VALUES (%(handler)s, %(queue)s, %(priority)s,
            coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
            %(keep_finished)s::float8, %(unique_key)s)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id)
SELECT id, true AS created FROM inserted
UNION ALL
SELECT id, false AS created FROM delayed_jobs
 WHERE unique_key = %(unique_key)s AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: insert_jobs
-- Enqueue many jobs in one statement (one round trip, one NOTIFY), from parallel arrays.
INSERT INTO delayed_jobs (handler, queue, priority, run_at, keep_finished)
SELECT handler, queue, priority, coalesce(run_at, now() + make_interval(secs => delay)),
       keep_finished
  FROM unnest(%(handlers)s::text[], %(queues)s::varchar[], %(priorities)s::int[],
              %(run_ats)s::timestamptz[], %(delays)s::float8[], %(keep_finished)s::float8[])
       AS j(handler, queue, priority, run_at, delay, keep_finished)
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

-- name: finish_jobs
-- Jobs finished (succeeded, failed for good with destroy_failed_jobs, cancelled): delete
-- them, and keep those with %(keep)s > 0 seconds in delayed_jobs_finished with their
-- outcome, result (JSON text), error, attempts (runs made) and timings. %(ago)s: seconds
-- since each ended, %(run_times)s: how long its last run took (NULL: it never ran), both
-- measured by the worker, so that the times written are the database clock's.
WITH f AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(outcomes)s::varchar[], %(results)s::text[],
                         %(notes)s::text[], %(errors)s::text[], %(attempts)s::int[],
                         %(run_times)s::float8[], %(ago)s::float8[], %(keep)s::float8[])
           AS f(id, outcome, result, note, error, attempts, run_time, ago, keep)),
gone AS (
    DELETE FROM delayed_jobs AS j USING f WHERE j.id = f.id
    RETURNING j.id, j.queue, j.priority, j.handler, j.run_at, j.created_at, j.locked_by)
INSERT INTO delayed_jobs_finished AS h
       (job_id, outcome, queue, priority, handler, attempts, result, result_note, last_error,
        run_at, created_at, started_at, finished_at, run_time, finished_by, keep_until)
SELECT g.id, f.outcome, g.queue, g.priority, g.handler, f.attempts, f.result::jsonb, f.note,
       f.error, g.run_at, g.created_at,
       now() - make_interval(secs => f.ago + f.run_time),
       now() - make_interval(secs => f.ago),
       f.run_time, g.locked_by,
       now() - make_interval(secs => f.ago) + make_interval(secs => f.keep)
  FROM gone AS g JOIN f ON f.id = g.id
 WHERE f.keep > 0
ON CONFLICT (job_id) DO UPDATE
   SET outcome = EXCLUDED.outcome, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
       handler = EXCLUDED.handler, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
       result_note = EXCLUDED.result_note, last_error = EXCLUDED.last_error,
       run_at = EXCLUDED.run_at, created_at = EXCLUDED.created_at,
       started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
       run_time = EXCLUDED.run_time, finished_by = EXCLUDED.finished_by,
       keep_until = EXCLUDED.keep_until;

-- name: keep_failed_job
-- A job that failed for good stays in delayed_jobs (failed_at set, delayed_job's rule:
-- `djmaster jobs retry` can run it again); with keep_finished a copy of it, as fail_job
-- left it, goes to delayed_jobs_finished too.
INSERT INTO delayed_jobs_finished
       (job_id, outcome, queue, priority, handler, attempts, last_error, run_at, created_at,
        started_at, finished_at, run_time, finished_by, keep_until)
SELECT id, 'failed', queue, priority, handler, attempts, last_error, run_at, created_at,
       now() - make_interval(secs => %(run_time)s::float8), now(), %(run_time)s::float8,
       %(finished_by)s, now() + make_interval(secs => %(keep)s::float8)
  FROM delayed_jobs WHERE id = %(id)s
ON CONFLICT (job_id) DO UPDATE
   SET outcome = EXCLUDED.outcome, attempts = EXCLUDED.attempts, result = NULL,
       result_note = NULL, last_error = EXCLUDED.last_error,
       started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
       run_time = EXCLUDED.run_time, finished_by = EXCLUDED.finished_by,
       keep_until = EXCLUDED.keep_until;

-- name: cancel_jobs
-- Cancel live jobs: those of %(ids)s, or every one of queue %(queue)s. A job no worker
-- holds is deleted (kept as 'cancelled' in delayed_jobs_finished when its keep_finished,
-- else its queue's in %(keep_queues)s/%(keep_seconds)s, else %(keep_default)s is > 0
-- seconds); a job a worker holds gets cancel_requested_at: the worker tells the job,
-- which may stop (it is never interrupted), and never runs it again. FOR UPDATE: a
-- worker reserving at the same moment skips these rows until this commits.
WITH target AS (
    SELECT j.id, j.locked_at IS NULL AS waiting,
           coalesce(j.keep_finished, k.seconds, %(keep_default)s::float8) AS keep
      FROM delayed_jobs AS j
      LEFT JOIN unnest(%(keep_queues)s::varchar[], %(keep_seconds)s::float8[])
                AS k(queue, seconds) ON k.queue = j.queue
     WHERE j.failed_at IS NULL
       AND (j.id = ANY(%(ids)s::bigint[]) OR j.queue = %(queue)s::varchar)
       FOR UPDATE OF j),
removed AS (
    DELETE FROM delayed_jobs AS j USING target AS t
     WHERE j.id = t.id AND t.waiting
    RETURNING j.id, j.queue, j.priority, j.handler, j.attempts, j.last_error, j.run_at,
              j.created_at, t.keep),
kept AS (
    INSERT INTO delayed_jobs_finished
           (job_id, outcome, queue, priority, handler, attempts, last_error, run_at,
            created_at, finished_at, keep_until)
    SELECT id, 'cancelled', queue, priority, handler, attempts, last_error, run_at,
           created_at, now(), now() + make_interval(secs => keep)
      FROM removed WHERE keep > 0
    ON CONFLICT (job_id) DO NOTHING),
requested AS (
    UPDATE delayed_jobs AS j SET cancel_requested_at = coalesce(j.cancel_requested_at, now())
      FROM target AS t
     WHERE j.id = t.id AND NOT t.waiting
    RETURNING j.id)
SELECT id, 'cancelled' AS outcome FROM removed
UNION ALL
SELECT id, 'requested' AS outcome FROM requested;

-- name: cancel_requested
-- Which of the jobs a worker holds were asked to stop (pkey look-ups: cheap).
SELECT id FROM delayed_jobs
 WHERE id = ANY(%(ids)s::bigint[]) AND cancel_requested_at IS NOT NULL;

-- name: prune_finished_jobs
-- The master's background pruning: at most %(limit)s kept jobs past keep_until (an
-- index range scan; a bounded DELETE, never a long lock). Returns how many went.
WITH gone AS (
    DELETE FROM delayed_jobs_finished
     WHERE job_id IN (SELECT job_id FROM delayed_jobs_finished
                       WHERE keep_until < now() ORDER BY keep_until LIMIT %(limit)s)
    RETURNING 1)
SELECT count(*) AS deleted FROM gone;

-- name: finished_job
-- One kept finished job (`djmaster jobs show`, the django.tasks backend's get_result).
-- result_json: the result as JSON text, whatever loaders the connection has (Django's
-- returns jsonb as text).
SELECT job_id AS id, outcome, queue, priority, handler, attempts, result,
       result::text AS result_json, result_note,
       last_error, run_at, created_at, started_at, finished_at, run_time, finished_by,
       keep_until
  FROM delayed_jobs_finished WHERE job_id = %(id)s;

-- name: live_job
-- One job of delayed_jobs, whatever its state.
SELECT id, queue, priority, attempts, handler, last_error, run_at, locked_at, locked_by,
       failed_at, created_at, updated_at, unique_key, keep_finished, cancel_requested_at,
       now() AS now
  FROM delayed_jobs WHERE id = %(id)s;

-- name: recurring_last_runs
-- The database clock, and the latest due time enqueued of each recurring entry of
-- %(names)s (NULL: never): the primary key's index gives each max.
SELECT now() AS now, n.name,
       (SELECT max(r.due_at) FROM delayed_jobs_recurring_runs AS r WHERE r.name = n.name)
           AS last_due
  FROM unnest(%(names)s::varchar[]) AS n(name);

-- name: enqueue_recurring_job
-- Enqueue recurring entry %(name)s for its due time %(due_at)s, exactly once whatever the
-- number of masters trying: the run's primary key (name, due_at) admits one insert, and
-- the job is inserted by the same statement only if it did (its id taken beforehand, so
-- that the run names it). Returns the job's id, or no row when another master was first.
WITH claimed AS (
    INSERT INTO delayed_jobs_recurring_runs (name, due_at, job_id)
    VALUES (%(name)s, %(due_at)s, nextval(pg_get_serial_sequence('delayed_jobs', 'id')))
    ON CONFLICT DO NOTHING
    RETURNING job_id)
INSERT INTO delayed_jobs (id, handler, queue, priority, run_at)
SELECT job_id, %(handler)s, %(queue)s, %(priority)s, %(due_at)s FROM claimed
RETURNING id;

-- name: prune_recurring_runs
-- Forget runs enqueued more than %(older_than)s seconds ago, at most %(limit)s, keeping
-- each entry's latest (a master needs it to tell what it missed). Only due times within
-- a minute of now are ever enqueued without it, so a pruned one never comes back.
WITH old AS (
    SELECT r.name, r.due_at FROM delayed_jobs_recurring_runs AS r
     WHERE r.enqueued_at < now() - make_interval(secs => %(older_than)s::float8)
       AND r.due_at < (SELECT max(l.due_at) FROM delayed_jobs_recurring_runs AS l
                        WHERE l.name = r.name)
     LIMIT %(limit)s),
gone AS (
    DELETE FROM delayed_jobs_recurring_runs AS r USING old
     WHERE r.name = old.name AND r.due_at = old.due_at
    RETURNING 1)
SELECT count(*) AS deleted FROM gone;
