--
-- Usage history (SPEC section 10): every verify that identifies a key is
-- counted per minute, client IP, required scope and code in shared memory;
-- the flush worker appends them to flowella.api_key_usage_log (one row per
-- key, minute and flush round), read with flowella.apikey_usage and the view
-- flowella.api_key_usage by the key's owners/admins and by auditors.
--
ALTER SYSTEM SET flowella.usage_flush_interval = 1;
SELECT pg_reload_conf();

-- Wait until a flush worker has run since the call and no count is pending;
-- false after 3 minutes, however slow the machine.
CREATE FUNCTION regress_wait_for_usage() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	start bigint := (SELECT flushes FROM flowella.usage_stats());
	deadline timestamptz := clock_timestamp() + interval '3 minutes';
BEGIN
	WHILE clock_timestamp() < deadline LOOP
		IF (SELECT flushes > start AND requests_pending = 0 AND pending = 0
			  FROM flowella.usage_stats()) THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN false;
END
$$;

-- The client IP argument of apikey_verify, through the same C function
-- (the SQL signature with client_ip comes with the policy part of 1.3).
CREATE FUNCTION regress_verify_from(token text, required_scope text, client_ip inet)
RETURNS flowella.verification
AS '$libdir/flowella_apikey', 'flowella_apikey_verify' LANGUAGE C;

SET ROLE regress_admin;
SELECT flowella.org_create('History Ltd', 'free', 'b1000000-0000-4000-8000-000000000001') AS org \gset
SELECT flowella.org_create('Elsewhere Ltd', 'pro', 'b2000000-0000-4000-8000-000000000002') AS other_org \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor('b1000000-0000-4000-8000-000000000001') \gset
SELECT key_id AS k, token AS t FROM flowella.apikey_create(:'org', 'history') \gset
SELECT key_id AS k_rev, token AS t_rev FROM flowella.apikey_create(:'org', 'to revoke') \gset
SELECT key_id AS k_exp, token AS t_exp
  FROM flowella.apikey_create(:'org', 'short lived', NULL, 'live',
                              clock_timestamp() + interval '1 second') \gset
SELECT flowella.apikey_revoke(:'k_rev') IS NOT NULL AS revoked;
COMMIT;
-- a well-formed token of no key: its key was rolled back
BEGIN;
SELECT flowella.set_actor('b1000000-0000-4000-8000-000000000001') \gset
SELECT token AS t_ghost FROM flowella.apikey_create(:'org', 'ghost') \gset
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('b2000000-0000-4000-8000-000000000002') \gset
SELECT key_id AS k_other, token AS t_other FROM flowella.apikey_create(:'other_org', 'other') \gset
COMMIT;
RESET ROLE;
SELECT pg_sleep_until(expires_at + interval '10 ms')
  FROM flowella.api_keys WHERE key_id = :'k_exp' \gset

-- 3 + 1 + 2 + 1 + 1 + 1 + 2 = 11 requests of History's keys and one of
-- Elsewhere's are counted; the malformed and unknown tokens are not.
SELECT code, count(*) FROM (
	SELECT (regress_verify_from(:'t', 'messages:read', '192.0.2.10')).code FROM generate_series(1, 3)
	UNION ALL SELECT (regress_verify_from(:'t', NULL, '2001:db8::1')).code
	UNION ALL SELECT (regress_verify_from(:'t', 'channels:manage', '192.0.2.11')).code FROM generate_series(1, 2)
	UNION ALL SELECT (regress_verify_from(:'t', 'Not a scope!', '192.0.2.11')).code
	UNION ALL SELECT (flowella.apikey_verify(:'t')).code
	UNION ALL SELECT (flowella.apikey_verify(:'t_rev', 'messages:read')).code
	UNION ALL SELECT (regress_verify_from(:'t_exp', NULL, '192.0.2.12')).code FROM generate_series(1, 2)
	UNION ALL SELECT (flowella.apikey_verify(:'t_other', 'messages:send')).code
	UNION ALL SELECT (flowella.apikey_verify('flwl_live_garbage')).code
	UNION ALL SELECT (regress_verify_from(:'t_ghost', NULL, '192.0.2.13')).code
) v GROUP BY code ORDER BY code;
SELECT regress_wait_for_usage() AS flushed;

-- The owner reads the key's usage, on a plan without the audit log.  Rows
-- are per minute: summed over the minutes these calls took.  A scope that
-- is not a scope name is kept as none.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor('b1000000-0000-4000-8000-000000000001') \gset
SELECT client_ip, scope, code, sum(requests) AS requests
  FROM flowella.apikey_usage(:'k') GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
SELECT code, sum(requests) AS requests FROM flowella.apikey_usage(:'k_rev') GROUP BY 1;
SELECT client_ip, code, sum(requests) AS requests FROM flowella.apikey_usage(:'k_exp') GROUP BY 1, 2;
-- in the order the spec gives, within the default window
SELECT array_agg(u ORDER BY u.minute, u.client_ip, u.scope, u.code) = array_agg(u) AS ordered,
       bool_and(minute > now() - interval '24 hours' AND minute <= now()) AS in_window
  FROM flowella.apikey_usage(:'k') u;
-- a window with no use
SELECT count(*) FROM flowella.apikey_usage(:'k', now() + interval '1 hour', now() + interval '2 hours');
-- the view and the table read directly show the actor's orgs only
SELECT count(DISTINCT key_id) AS keys, sum(requests) AS requests,
       bool_and(org_id = :'org') AS own_org_only
  FROM flowella.api_key_usage;
SELECT count(DISTINCT l.key_id) AS keys, sum(r.n) AS requests,
       bool_and(l.org_id = :'org') AS own_org_only
  FROM flowella.api_key_usage_log l, unnest(l.requests) r(n);
-- another org's key, an unknown key, no key: 42704; bad windows: 22023
\set VERBOSITY terse
\set ON_ERROR_ROLLBACK on
SELECT * FROM flowella.apikey_usage(:'k_other');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_usage('00000000-0000-4000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_usage(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_usage(:'k', now(), now() - interval '1 hour');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_usage(:'k', NULL);
\echo :LAST_ERROR_SQLSTATE
-- no write for managers, not even the owner's
INSERT INTO flowella.api_key_usage VALUES (:'org', :'k', now(), NULL, NULL, 'VALID', 1);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
VALUES (:'org', :'k', now(), '{NULL}', '{NULL}', '{VALID}', '{1}');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.api_key_usage_log;
\echo :LAST_ERROR_SQLSTATE
COMMIT;

-- The other org's owner sees none of History's usage, also not directly.
BEGIN;
SELECT flowella.set_actor('b2000000-0000-4000-8000-000000000002') \gset
SELECT * FROM flowella.apikey_usage(:'k');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('b2000000-0000-4000-8000-000000000002') \gset
SELECT count(*) FILTER (WHERE key_id = :'k') AS history_rows,
       sum(requests) FILTER (WHERE key_id = :'k_other') AS own_requests,
       count(*) FILTER (WHERE org_id = :'org') AS history_org_rows
  FROM flowella.api_key_usage;
SELECT count(*) FILTER (WHERE key_id = :'k') AS history_rows,
       count(*) FILTER (WHERE key_id = :'k_other') AS own_rows,
       count(*) FILTER (WHERE org_id = :'org') AS history_org_rows
  FROM flowella.api_key_usage_log;
COMMIT;
-- without an actor: 42501, as for every key call; the view and the table
-- show nothing
SELECT * FROM flowella.apikey_usage(:'k');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.api_key_usage;
SELECT count(*) FROM flowella.api_key_usage_log;
RESET ROLE;

-- The auditor reads every org's usage, with no actor.
SET ROLE regress_auditor;
SELECT sum(requests) AS history_requests FROM flowella.apikey_usage(:'k');
SELECT sum(requests) AS other_requests FROM flowella.apikey_usage(:'k_other');
SELECT count(DISTINCT org_id) >= 2 AS many_orgs FROM flowella.api_key_usage;
SELECT count(DISTINCT org_id) >= 2 AS many_orgs FROM flowella.api_key_usage_log;
-- the view and the table hold every request the superuser sees
SELECT (SELECT sum(requests) FROM flowella.api_key_usage) AS view_requests,
       (SELECT sum(r.n) FROM flowella.api_key_usage_log l, unnest(l.requests) r(n))
         AS table_requests \gset auditor_
RESET ROLE;
SELECT :auditor_view_requests = (SELECT sum(requests) FROM flowella.api_key_usage)
       AND :auditor_table_requests = (SELECT sum(r.n) FROM flowella.api_key_usage_log l,
                                             unnest(l.requests) r(n))
       AND :auditor_view_requests = :auditor_table_requests AS auditor_sees_all;

-- The verifier reads nothing.
SET ROLE regress_verifier;
SELECT count(*) FROM flowella.api_key_usage;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.api_key_usage_log;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_usage(:'k');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Every count is accounted for: written, pending, or counted as lost.
SELECT requests_counted = requests_written + requests_pending
                          + requests_overflowed + requests_discarded AS accounted,
       requests_overflowed = 0 AS none_overflowed
  FROM flowella.usage_stats();

-- A bucket written in two flush rounds is two rows of the table; apikey_usage
-- and the view show it once, summed.  (Written directly, at a fixed minute
-- long past, so that no minute boundary can split it.)
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, '2000-01-01 10:00+00', ARRAY['192.0.2.50', NULL]::inet[],
       ARRAY['messages:read', NULL], ARRAY['VALID', 'REVOKED'], ARRAY[2, 1]::bigint[]
  FROM flowella.api_keys WHERE key_id = :'k';
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, '2000-01-01 10:00+00', ARRAY['192.0.2.50']::inet[],
       ARRAY['messages:read'], ARRAY['VALID'], ARRAY[5]::bigint[]
  FROM flowella.api_keys WHERE key_id = :'k';
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor('b1000000-0000-4000-8000-000000000001') \gset
SELECT * FROM flowella.apikey_usage(:'k', '2000-01-01 09:00+00', '2000-01-01 11:00+00');
SELECT minute, client_ip, scope, code, requests FROM flowella.api_key_usage
 WHERE key_id = :'k' AND minute < '2001-01-01' ORDER BY client_ip, code;
COMMIT;
RESET ROLE;

-- The table's CHECKs: four one-dimensional arrays of one length (at least
-- one), codes among the six counted ones, requests above zero, no NULL in
-- either: 23514, and nothing written.
SELECT count(*) AS rows_before FROM flowella.api_key_usage_log \gset
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), ARRAY['192.0.2.1', '192.0.2.2']::inet[], ARRAY[NULL]::text[],
       ARRAY['VALID'], ARRAY[1]::bigint[] FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{}', '{}', '{}', '{}' FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{{NULL}}', '{{NULL}}', '{{VALID}}', '{{1}}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{NULL}', '{NULL}', '{MALFORMED}', '{1}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{NULL}', '{NULL}', '{NULL}', '{1}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{NULL,NULL}', '{NULL,NULL}', '{VALID,VALID}', '{1,0}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{NULL}', '{NULL}', '{VALID}', '{-3}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.api_key_usage_log
SELECT org_id, key_id, now(), '{NULL}', '{NULL}', '{VALID}', '{NULL}'
  FROM flowella.api_keys WHERE key_id = :'k';
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) = :rows_before AS nothing_written FROM flowella.api_key_usage_log;

\set VERBOSITY default
\set ON_ERROR_ROLLBACK off

-- Retention is a positive interval.
SHOW flowella.usage_retention;
ALTER SYSTEM SET flowella.usage_retention = 'soon';
\echo :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET flowella.usage_retention = '-1 day';
\echo :LAST_ERROR_SQLSTATE

ALTER SYSTEM RESET flowella.usage_flush_interval;
SELECT pg_reload_conf();
DROP FUNCTION regress_wait_for_usage();
DROP FUNCTION regress_verify_from(text, text, inet);
