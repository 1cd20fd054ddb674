--
-- Last-used tracking (SPEC section 6): uses are noted in shared memory and
-- flushed to api_keys.last_used_at by a background worker, at most once per
-- key per flush interval.  Verify itself writes nothing.
--
-- A short interval keeps this file fast; the guarantee is the same.
ALTER SYSTEM SET flowella.usage_flush_interval = 2;
SELECT pg_reload_conf();

-- Wait until a flush has completed since the call and nothing is pending
-- (entries leave shared memory only once written and counted); false
-- after 3 minutes (the TAP tests' default timeout), however slow the
-- machine.
CREATE FUNCTION regress_wait_for_flush() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	start bigint := (SELECT flushes FROM flowella.usage_stats());
	deadline timestamptz := clock_timestamp() + interval '3 minutes';
BEGIN
	WHILE clock_timestamp() < deadline LOOP
		IF (SELECT flushes > start AND pending = 0 FROM flowella.usage_stats()) THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN false;
END
$$;

-- Wait until a flush worker has finished since the call, whatever it
-- wrote or skipped; false after 3 minutes.
CREATE FUNCTION regress_wait_for_round() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	start bigint := (SELECT flushes FROM flowella.usage_stats());
	deadline timestamptz := clock_timestamp() + interval '3 minutes';
BEGIN
	WHILE clock_timestamp() < deadline LOOP
		IF (SELECT flushes > start FROM flowella.usage_stats()) THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN false;
END
$$;

SET ROLE regress_admin;
SELECT flowella.org_create('Usage Ltd', 'pro', 'a1000000-0000-4000-8000-000000000001') AS org \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor('a1000000-0000-4000-8000-000000000001') \gset
SELECT key_id AS hot_id, token AS hot FROM flowella.apikey_create(:'org', 'hot key') \gset
SELECT key_id AS idle_id, token AS idle FROM flowella.apikey_create(:'org', 'idle key') \gset
SELECT key_id AS warm_id, token AS warm FROM flowella.apikey_create(:'org', 'warm key') \gset
COMMIT;
RESET ROLE;

-- The tracker runs: the library is preloaded.
SELECT pending IS NOT NULL AS preloaded FROM flowella.usage_stats();

-- A failed or refused verify is not a use.
SELECT code FROM flowella.apikey_verify(:'idle', 'channels:manage');

-- A use of the warm key, written by the next flush; then nothing is pending.
SELECT code FROM flowella.apikey_verify(:'warm');
SELECT regress_wait_for_flush() AS flushed;
SELECT rows_updated AS updated_before FROM flowella.usage_stats() \gset

-- 2 000 uses of one key...  They take a fraction of a second, or seconds
-- on a loaded machine or under valgrind, and a flush round may fall among
-- them.  This transaction holds the key's row lock meanwhile: a flush skips
-- a locked row and keeps its use pending, so what is seen before the
-- commit is verify's own doing, on any machine.
SELECT clock_timestamp() AS uses_start \gset
BEGIN;
SELECT label FROM flowella.api_keys WHERE key_id = :'hot_id' FOR UPDATE;
SELECT count(*) FILTER (WHERE (flowella.apikey_verify(:'hot')).valid) AS valid_uses
  FROM generate_series(1, 2000);
-- ...verify wrote no row itself: last_used_at is still empty.  Before the
-- lock goes, the flush worker under way (if any) ends: it may have read an
-- earlier use and would write it after the commit, before the next round
-- writes the last one; every later worker reads the last use.
SELECT last_used_at IS NULL AS not_yet_written
  FROM flowella.api_keys WHERE key_id = :'hot_id';
SELECT regress_wait_for_round() AS round_ended;
COMMIT;
-- ...and after the next flush it is set, by exactly one row update.
SELECT regress_wait_for_flush() AS flushed;
SELECT rows_updated - :updated_before = 1 AS one_row_update
  FROM flowella.usage_stats();
SELECT last_used_at >= :'uses_start' AS recent,
       last_used_at <= clock_timestamp() AS not_in_future
  FROM flowella.api_keys WHERE key_id = :'hot_id';
-- the refused key was never marked used; the warm one was
SELECT label, last_used_at IS NOT NULL AS used
  FROM flowella.api_keys WHERE org_id = :'org' ORDER BY label;

-- The list shows it to the owner.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor('a1000000-0000-4000-8000-000000000001') \gset
SELECT label, last_used_at IS NOT NULL AS used FROM flowella.apikey_list(:'org') ORDER BY label;
COMMIT;
RESET ROLE;

-- Verify works in a READ ONLY transaction, and the use still lands.
SELECT last_used_at AS hot_before FROM flowella.api_keys WHERE key_id = :'hot_id' \gset
SELECT pg_sleep(0.01);
BEGIN TRANSACTION READ ONLY;
SELECT valid, code FROM flowella.apikey_verify(:'hot');
COMMIT;
SET default_transaction_read_only = on;
SELECT valid, code FROM flowella.apikey_verify(:'hot');
RESET default_transaction_read_only;
SELECT regress_wait_for_flush() AS flushed;
SELECT last_used_at > :'hot_before' AS moved_forward
  FROM flowella.api_keys WHERE key_id = :'hot_id';

-- A key in constant use costs one row update per interval, never more,
-- whatever wakes the launcher early (here a reload every quarter second;
-- also its own workers' exits); and it is written while in use.  The uses
-- go on for 6 seconds and until a flush has written the key (for at most
-- 3 minutes: a launcher that never flushes a key in constant use fails
-- here).  Rounds start an interval (2 s) apart, so in T seconds at most
-- floor(T / 2) + 1 start, and one more may have been under way at the
-- start: the bound is taken from the time the uses really took, which a
-- loaded machine or valgrind stretches.  A launcher that started a round
-- at every wake-up would make about 24 row updates in 6 s.
CREATE TEMP TABLE regress_hot AS SELECT :'hot'::text AS token;
SELECT clock_timestamp() AS t0 \gset
SELECT rows_updated AS updated_before FROM flowella.usage_stats() \gset
DO $$
DECLARE
	start timestamptz := clock_timestamp();
	hot text := (SELECT token FROM regress_hot);
	written_before bigint := (SELECT rows_updated FROM flowella.usage_stats());
	next_reload timestamptz := clock_timestamp();
BEGIN
	WHILE clock_timestamp() < start + interval '6 seconds'
	   OR (SELECT rows_updated = written_before FROM flowella.usage_stats()) LOOP
		IF clock_timestamp() > start + interval '3 minutes' THEN
			RAISE EXCEPTION 'a key in constant use was not written in 3 minutes';
		END IF;
		PERFORM flowella.apikey_verify(hot);
		PERFORM pg_sleep(0.01);
		IF clock_timestamp() >= next_reload THEN
			PERFORM pg_reload_conf();
			next_reload := clock_timestamp() + interval '250 ms';
		END IF;
	END LOOP;
END
$$;
SELECT rows_updated - :updated_before AS row_updates FROM flowella.usage_stats() \gset
SELECT floor(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) / 2)::int + 2
       AS max_updates \gset
SELECT :row_updates BETWEEN 1 AND :max_updates AS one_update_per_interval \gset
\echo one update per interval: :one_update_per_interval
\if :one_update_per_interval
\else
\echo row updates: :row_updates, at most :max_updates
\endif
DROP TABLE regress_hot;

-- The interval cannot be set above 60 seconds.
ALTER SYSTEM SET flowella.usage_flush_interval = 61;
\echo :LAST_ERROR_SQLSTATE

ALTER SYSTEM RESET flowella.usage_flush_interval;
SELECT pg_reload_conf();
DROP FUNCTION regress_wait_for_flush();
DROP FUNCTION regress_wait_for_round();
