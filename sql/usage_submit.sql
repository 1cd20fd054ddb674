--
-- Usage from hot standbys, the primary's side (SPEC section 13):
-- flowella.usage_submit adds a standby's batch of counts and last uses,
-- checked whole before anything is written, once per source and batch
-- number, for a role granted flowella_apikey_replica, which may do nothing
-- else.  (The standby's side, batches in flight and the link, is
-- t/014_standby.pl.)
--
\set owner    'b9000000-0000-4000-8000-000000000001'
\set src      'b9000000-0000-4000-8000-0000000000aa'
\set src2     'b9000000-0000-4000-8000-0000000000bb'
\set nokey    'b9000000-0000-4000-8000-0000000000ff'

CREATE ROLE regress_replica;
GRANT flowella_apikey_replica TO regress_replica;

SET ROLE regress_admin;
SELECT flowella.plan_set('submit_plan', ARRAY['messages:send'], false) \gset
SELECT flowella.org_create('Submit Ltd', 'submit_plan', :'owner') AS org \gset
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k FROM flowella.apikey_create(:'org', 'used on a standby') \gset
SELECT key_id AS k2 FROM flowella.apikey_create(:'org', 'never used') \gset
COMMIT;
RESET ROLE;

-- Shorthands: a batch of this key's counts at the start of this minute.
\set minute 'date_trunc(''minute'', now())'

-- Only the replica role (and superusers) may submit.
SET ROLE regress_replica;
SELECT flowella.usage_submit(:'src', 1,
	ARRAY[:'k', :'k', :'nokey']::uuid[], ARRAY[:minute, :minute, :minute],
	ARRAY['192.0.2.1', NULL, '192.0.2.1']::inet[], ARRAY['messages:send', NULL, NULL],
	ARRAY['VALID', 'IP_DENIED', 'VALID'], ARRAY[5, 2, 7]::bigint[],
	ARRAY[:'k']::uuid[], ARRAY[now() - interval '10 seconds']) AS applied;
-- the same batch again (its answer was lost): changes nothing
SELECT flowella.usage_submit(:'src', 1,
	ARRAY[:'k']::uuid[], ARRAY[:minute], ARRAY['192.0.2.1']::inet[],
	ARRAY['messages:send'], ARRAY['VALID'], ARRAY[5]::bigint[], '{}', '{}') AS applied;
-- an earlier number of that source: also already applied
SELECT flowella.usage_submit(:'src', 1, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}') AS applied;
-- the next one, and another source's first: applied
SELECT flowella.usage_submit(:'src', 2,
	ARRAY[:'k']::uuid[], ARRAY[:minute], ARRAY['192.0.2.1']::inet[],
	ARRAY['messages:send'], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}') AS applied;
SELECT flowella.usage_submit(:'src2', 1,
	ARRAY[:'k']::uuid[], ARRAY[:minute], ARRAY['2001:db8::1']::inet[],
	ARRAY['messages:send'], ARRAY['RATE_LIMITED'], ARRAY[3]::bigint[],
	ARRAY[:'k']::uuid[], ARRAY[now() + interval '1 day']) AS applied;
-- and nothing else
SELECT count(*) FROM flowella.api_keys;
SELECT count(*) FROM flowella.usage_submissions;
SELECT count(*) FROM flowella.api_key_usage;
SELECT * FROM flowella.apikey_verify('flwl_live_x');
RESET ROLE;

-- The key's usage: the unknown key skipped, each batch once, the rounds of
-- one bucket summed.
SELECT client_ip, scope, code, requests
  FROM flowella.api_key_usage WHERE key_id = :'k' ORDER BY client_ip, scope, code;
SELECT count(*) AS unknown_key FROM flowella.api_key_usage_log WHERE key_id = :'nokey';
-- the last use: written, and a standby's clock a day ahead does not put it
-- in the future
SELECT last_used_at BETWEEN now() - interval '1 minute' AND now() AS last_used_now
  FROM flowella.api_keys WHERE key_id = :'k';
SELECT last_used_at IS NULL AS untouched FROM flowella.api_keys WHERE key_id = :'k2';
SELECT source, last_batch FROM flowella.usage_submissions ORDER BY source;

-- Other roles may not call it.
SET ROLE regress_manager;
SELECT flowella.usage_submit(:'src', 3, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_verifier;
SELECT flowella.usage_submit(:'src', 3, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Bad input: 22023, nothing written, and the batch number not used up.
--
\set VERBOSITY default
SET ROLE regress_replica;
-- nulls
SELECT flowella.usage_submit(NULL, 3, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, NULL, '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[NULL]::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[NULL]::timestamptz[],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[NULL]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, '{}', '{}', '{}', '{}', '{}', '{}',
	ARRAY[:'k']::uuid[], ARRAY[NULL]::timestamptz[]);
\echo :LAST_ERROR_SQLSTATE
-- a batch number below 1
SELECT flowella.usage_submit(:'src', 0, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- arrays of different lengths, or of two dimensions
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k', :'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, '{}', '{}', '{}', '{}', '{}', '{}',
	ARRAY[:'k']::uuid[], '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[[:'k']]::uuid[], ARRAY[[:minute]],
	ARRAY[[NULL]]::inet[], ARRAY[[NULL]]::text[], ARRAY[['VALID']], ARRAY[[1]]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a minute that is not on a minute
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute + interval '1 second'],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- codes that count no request of a key, or none at all
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['NOT_FOUND'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['valid'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a scope that is not a scope name, or token-shaped
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY['Messages Send'], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY['flwl_live_abc'], ARRAY['VALID'], ARRAY[1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- counts of zero or below; a bad element after good ones
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k']::uuid[], ARRAY[:minute],
	ARRAY[NULL]::inet[], ARRAY[NULL]::text[], ARRAY['VALID'], ARRAY[0]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.usage_submit(:'src', 3, ARRAY[:'k', :'k']::uuid[], ARRAY[:minute, :minute],
	ARRAY[NULL, NULL]::inet[], ARRAY[NULL, NULL]::text[], ARRAY['VALID', 'VALID'],
	ARRAY[4, -1]::bigint[], '{}', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
\set VERBOSITY terse

-- Nothing of it was written, and batch 3 is still to come.
SELECT sum(requests) AS requests FROM flowella.api_key_usage WHERE key_id = :'k';
SELECT last_batch FROM flowella.usage_submissions WHERE source = :'src';
SET ROLE regress_replica;
SELECT flowella.usage_submit(:'src', 3, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}') AS applied;
RESET ROLE;
