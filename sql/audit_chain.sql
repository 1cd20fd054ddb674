--
-- The audit hash chain (SPEC section 14): every record carries record_hash,
-- SHA-256 of the org's previous record's hash (32 zero bytes for its first)
-- and the UTF-8 bytes of the record's canonical text, in event_id order;
-- a recompute with pgcrypto alone gives every stored hash; audit_digest and
-- audit_verify, with their privileges and errors; a record edited or
-- deleted with the guard disabled is named; a chain rewritten consistently
-- after an edit passes a plain verify but not one against an earlier
-- digest.
--
\set owner  'c5000000-0000-4000-8000-000000000001'
\set admin  'c5000000-0000-4000-8000-000000000002'
\set member 'c5000000-0000-4000-8000-000000000003'
\set owner2 'c5000000-0000-4000-8000-000000000004'
\set nobody 'c5000000-0000-4000-8000-0000000000ff'
\set tp     '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

SET ROLE regress_admin;
-- enterprise includes the audit log, pro does not
SELECT flowella.org_create('Chain Ltd', 'enterprise', :'owner') AS org \gset
SELECT flowella.org_create('Plain Ltd', 'pro', :'owner2') AS org2 \gset
BEGIN;
SELECT flowella.set_actor(:'owner', '192.0.2.10', :'tp') \gset
SELECT flowella.member_set(:'org', :'admin', 'admin');
SELECT flowella.member_set(:'org', :'member', 'user');
COMMIT;
RESET ROLE;

-- Records of every kind, with and without client address and trace context.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner', '2001:db8::5', :'tp') \gset
SELECT key_id AS k1 FROM flowella.apikey_create(:'org', 'chain one', ARRAY['messages:send']) \gset
SELECT key_id AS k2 FROM flowella.apikey_create(:'org', 'chain "two" ünïcode', NULL, 'test',
                                                 '2999-01-01 00:00:00+00') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT flowella.apikey_set_scopes(:'k1', ARRAY['messages:read']);
SELECT flowella.apikey_set_policy(:'k1', ARRAY['198.51.100.0/24']::cidr[], 60);
SELECT count(*) FROM flowella.apikey_replace(:'k1', interval '1 day');
SELECT flowella.apikey_revoke(:'k2') IS NOT NULL AS revoked;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner2') \gset
SELECT count(*) FROM flowella.apikey_create(:'org2', 'plain one');
COMMIT;
RESET ROLE;

--
-- Every record has a 32-byte hash; audit_events shows it, last.
--
SELECT count(*) AS records, count(*) FILTER (WHERE octet_length(record_hash) = 32) AS hashed,
       count(DISTINCT record_hash) AS distinct_hashes
  FROM flowella.audit_records WHERE org_id = :'org';
SELECT string_agg(attname, ', ' ORDER BY attnum) AS audit_events_columns
  FROM pg_attribute WHERE attrelid = 'flowella.audit_events'::regclass AND attnum > 0;
SELECT pg_get_constraintdef(oid) AS hash_check FROM pg_constraint
 WHERE conname = 'audit_records_record_hash_check';
SELECT attnotnull AS hash_not_null FROM pg_attribute
 WHERE attrelid = 'flowella.audit_records'::regclass AND attname = 'record_hash';

--
-- The recompute an auditor runs with pgcrypto alone (the README's SQL):
-- each record's hash is SHA-256 of the previous record's stored hash and
-- its canonical text.  Every record of every org agrees, the first of each
-- org chaining from 32 zero bytes; so every stored hash is the chain's.
--
CREATE TEMP VIEW pgcrypto_recompute AS
SELECT event_id, org_id, record_hash,
       digest(coalesce(lag(record_hash) OVER (PARTITION BY org_id ORDER BY event_id),
                       decode(repeat('00', 32), 'hex'))
              || convert_to(jsonb_build_object(
                     'event_id', event_id, 'org_id', org_id, 'key_id', key_id,
                     'action', action, 'actor_user_id', actor_user_id,
                     'actor_ip', actor_ip::text, 'trace_context', trace_context,
                     'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
                                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                     'details', details)::text, 'UTF8'),
              'sha256') AS recomputed
  FROM flowella.audit_events;
SELECT count(*) > 0 AS some_records, count(*) FILTER (WHERE recomputed = record_hash) = count(*) AS all_equal
  FROM pgcrypto_recompute;
SELECT count(*) AS chain_ltd_records, count(*) FILTER (WHERE recomputed <> record_hash) AS mismatches
  FROM pgcrypto_recompute WHERE org_id = :'org';
-- ... and the same chained from the recomputed hashes themselves (a
-- recursive CTE: trusts nothing stored but the records).
WITH RECURSIVE rec AS MATERIALIZED (
  SELECT row_number() OVER (ORDER BY event_id) AS n, event_id, record_hash,
         convert_to(jsonb_build_object(
             'event_id', event_id, 'org_id', org_id, 'key_id', key_id,
             'action', action, 'actor_user_id', actor_user_id,
             'actor_ip', actor_ip::text, 'trace_context', trace_context,
             'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
             'details', details)::text, 'UTF8') AS canonical
    FROM flowella.audit_events WHERE org_id = :'org'),
chain AS (
  SELECT n, record_hash, digest(decode(repeat('00', 32), 'hex') || canonical, 'sha256') AS h
    FROM rec WHERE n = 1
  UNION ALL
  SELECT r.n, r.record_hash, digest(c.h || r.canonical, 'sha256')
    FROM chain c JOIN rec r ON r.n = c.n + 1)
SELECT count(*) AS chained, count(*) FILTER (WHERE h = record_hash) AS equal FROM chain;
-- The canonical text of a record, as the chain hashes it (ids masked).
SELECT regexp_replace(regexp_replace(jsonb_build_object(
           'event_id', event_id, 'org_id', org_id, 'key_id', key_id,
           'action', action, 'actor_user_id', actor_user_id,
           'actor_ip', actor_ip::text, 'trace_context', trace_context,
           'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'details', details)::text,
         '[0-9a-f]{8}-[0-9a-f-]{27}', '<uuid>', 'g'),
         '"event_id": [0-9]+|"\d{4}-\d\d-\d\dT[0-9:.]+Z"|"flwl_test_[0-9A-Za-z]{8}"|"\d{4}-\d\d-\d\dT[0-9:.+]+"',
         '<masked>', 'g') AS canonical_text
  FROM flowella.audit_records WHERE org_id = :'org' AND action = 'key.created' AND key_id = :'k2';

--
-- audit_digest and an untouched chain's audit_verify.
--
SELECT last_event_id AS d1_id, head_hash AS d1_hash, records AS d1_records
  FROM flowella.audit_digest(:'org') \gset
SELECT :d1_id = max(event_id) AS digest_is_last,
       :'d1_hash'::bytea = (SELECT record_hash FROM flowella.audit_records WHERE event_id = :d1_id)
           AS digest_is_its_hash,
       :d1_records = count(*) AS digest_counts
  FROM flowella.audit_records WHERE org_id = :'org';
SELECT ok, checked = :d1_records AS checked_all, first_bad_event_id,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org');
SELECT ok, checked = :d1_records AS checked_all, first_bad_event_id,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org', :d1_id, :'d1_hash');
-- an org without records
SELECT * FROM flowella.audit_digest('c5000000-0000-4000-8000-00000000dead');
SELECT * FROM flowella.audit_verify('c5000000-0000-4000-8000-00000000dead');

--
-- Who may call them: the auditor for any org; an owner or admin of an org
-- whose plan has the audit log; nobody else (42501).
--
\set VERBOSITY terse
SET ROLE regress_auditor;
SELECT records = :d1_records AS auditor_digest FROM flowella.audit_digest(:'org');
SELECT ok AS auditor_verify FROM flowella.audit_verify(:'org2');
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT records = :d1_records AS owner_digest FROM flowella.audit_digest(:'org');
SELECT ok AS owner_verify FROM flowella.audit_verify(:'org');
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT ok AS admin_verify FROM flowella.audit_verify(:'org', :d1_id, :'d1_hash');
COMMIT;
-- a member with role user
BEGIN;
SELECT flowella.set_actor(:'member') \gset
SELECT * FROM flowella.audit_digest(:'org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- the owner of an org whose plan has no audit log
BEGIN;
SELECT flowella.set_actor(:'owner2') \gset
SELECT * FROM flowella.audit_verify(:'org2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- an owner asking about another org, or one that does not exist
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.audit_digest(:'org2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.audit_verify('c5000000-0000-4000-8000-00000000dead');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- no actor
SELECT * FROM flowella.audit_digest(:'org');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.audit_verify(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- roles without the grant
SET ROLE regress_admin;
SELECT * FROM flowella.audit_digest(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_nobody;
SELECT * FROM flowella.audit_verify(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- bad arguments (22023)
SELECT * FROM flowella.audit_digest(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.audit_verify(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.audit_verify(:'org', :d1_id);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.audit_verify(:'org', NULL, :'d1_hash');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.audit_verify(:'org', :d1_id, '\x0102');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

--
-- Tampering, by a superuser who disables the guard.
--
-- The records of the chain by position: the 3rd is the one edited or
-- deleted, the 4th the one after it.
SELECT event_id AS e3 FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET 2 LIMIT 1 \gset
SELECT event_id AS e4 FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET 3 LIMIT 1 \gset
ALTER TABLE flowella.audit_records DISABLE TRIGGER audit_records_guard;

-- An edited record is named.
UPDATE flowella.audit_records SET details = details || '{"role_hidden": true}' WHERE event_id = :e3;
SELECT ok, checked, first_bad_event_id = :e3 AS names_edited,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org');
SELECT count(*) FILTER (WHERE recomputed <> record_hash) AS pgcrypto_mismatches,
       min(event_id) FILTER (WHERE recomputed <> record_hash) = :e3 AS pgcrypto_names_it
  FROM pgcrypto_recompute WHERE org_id = :'org';
-- edited back: the chain verifies again
UPDATE flowella.audit_records SET details = details - 'role_hidden' WHERE event_id = :e3;
SELECT ok FROM flowella.audit_verify(:'org');

-- A changed actor, address or time is named too.
UPDATE flowella.audit_records SET occurred_at = occurred_at + interval '1 microsecond'
 WHERE event_id = :e4;
SELECT ok, first_bad_event_id = :e4 AS names_edited FROM flowella.audit_verify(:'org');
UPDATE flowella.audit_records SET occurred_at = occurred_at - interval '1 microsecond'
 WHERE event_id = :e4;
UPDATE flowella.audit_records SET actor_ip = '192.0.2.99' WHERE event_id = :e3;
SELECT ok, first_bad_event_id = :e3 AS names_edited FROM flowella.audit_verify(:'org');
UPDATE flowella.audit_records SET actor_ip = '192.0.2.10' WHERE event_id = :e3;
SELECT ok FROM flowella.audit_verify(:'org');

-- A deleted record shows as the next one not chaining, named with a detail
-- that says so.
CREATE TEMP TABLE deleted_record AS SELECT * FROM flowella.audit_records WHERE event_id = :e3;
DELETE FROM flowella.audit_records WHERE event_id = :e3;
SELECT ok, checked, first_bad_event_id = :e4 AS names_next,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org');
-- put back as it was: the chain verifies again
INSERT INTO flowella.audit_records SELECT * FROM deleted_record;
SELECT ok FROM flowella.audit_verify(:'org');

-- A chain rewritten consistently from an edited record on: every hash
-- recomputed after the edit, so a plain verify passes ...
UPDATE flowella.audit_records SET details = details || '{"role_hidden": true}' WHERE event_id = :e3;
SELECT set_config('regress.org', :'org', false) IS NOT NULL AS org_set;
DO $$
DECLARE
	r record;
	prev bytea;
BEGIN
	FOR r IN SELECT a.event_id,
					convert_to(jsonb_build_object(
						'event_id', event_id, 'org_id', org_id, 'key_id', key_id,
						'action', action, 'actor_user_id', actor_user_id,
						'actor_ip', actor_ip::text, 'trace_context', trace_context,
						'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
											   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
						'details', details)::text, 'UTF8') AS canonical
			   FROM flowella.audit_records a
			  WHERE a.org_id = current_setting('regress.org')::uuid
			  ORDER BY a.event_id
	LOOP
		prev := digest(coalesce(prev, decode(repeat('00', 32), 'hex')) || r.canonical, 'sha256');
		UPDATE flowella.audit_records SET record_hash = prev WHERE event_id = r.event_id;
	END LOOP;
END
$$;
SELECT ok, first_bad_event_id, regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org');
SELECT count(*) FILTER (WHERE recomputed <> record_hash) AS pgcrypto_mismatches
  FROM pgcrypto_recompute WHERE org_id = :'org';
-- ... but not one against the digest taken before: the record it names
-- has another hash now.
SELECT ok, first_bad_event_id = :d1_id AS names_digest_record,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org', :d1_id, :'d1_hash');
SELECT head_hash <> :'d1_hash' AS head_differs FROM flowella.audit_digest(:'org');

-- Records written after a digest do not disturb it: a new one chains on
-- from the rewritten head (the chain was consistent), and the old
-- digest's record is found.
SELECT last_event_id AS d2_id, head_hash AS d2_hash FROM flowella.audit_digest(:'org') \gset
ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_guard;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) FROM flowella.apikey_create(:'org', 'after the digest');
COMMIT;
RESET ROLE;
SELECT ok, regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org', :d2_id, :'d2_hash');

-- The last record deleted: no later record shows the break, so only a
-- digest that names it catches it.
SELECT last_event_id AS d3_id, head_hash AS d3_hash FROM flowella.audit_digest(:'org') \gset
ALTER TABLE flowella.audit_records DISABLE TRIGGER audit_records_guard;
DELETE FROM flowella.audit_records WHERE event_id = :d3_id;
ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_guard;
SELECT ok AS plain_verify_ok FROM flowella.audit_verify(:'org');
SELECT ok, first_bad_event_id = :d3_id AS names_digest_record,
       regexp_replace(detail, '\d+', 'N', 'g') AS detail
  FROM flowella.audit_verify(:'org', :d3_id, :'d3_hash');
-- the guard is back on
SELECT tgenabled FROM pg_trigger
 WHERE tgrelid = 'flowella.audit_records'::regclass AND tgname = 'audit_records_guard';

--
-- The chain needs event_ids that rise in the order records are chained: a
-- sequence set back is refused (55000), the change with it.
--
SELECT max(event_id) AS max_event FROM flowella.audit_records \gset
SELECT setval('flowella.audit_records_event_id_seq', :max_event + 100) > 0 AS moved_on;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) FROM flowella.apikey_create(:'org', 'numbered on');
COMMIT;
RESET ROLE;
SELECT setval('flowella.audit_records_event_id_seq', :max_event + 50) > 0 AS set_back;
SET ROLE regress_manager;
-- (the message names the event numbers, which depend on earlier tests)
\set VERBOSITY sqlstate
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) FROM flowella.apikey_create(:'org', 'numbered back');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
\set VERBOSITY default
RESET ROLE;
SELECT setval('flowella.audit_records_event_id_seq', :max_event + 101) > 0 AS restored;
SELECT count(*) AS numbered_back_keys FROM flowella.api_keys WHERE label = 'numbered back';

-- An org's records rise in event_id order with every change; the other
-- org's chain was never touched.
SELECT ok FROM flowella.audit_verify(:'org2');
