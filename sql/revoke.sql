--
-- apikey_revoke (SPEC sections 4, 5, 7 and 8): immediate, idempotent,
-- attributed and audited; 42704 for every key the actor may not manage.
--
\set owner    'b3000000-0000-4000-8000-000000000001'
\set admin    'b3000000-0000-4000-8000-000000000002'
\set user     'b3000000-0000-4000-8000-000000000003'
\set readonly 'b3000000-0000-4000-8000-000000000004'
\set stranger 'b3000000-0000-4000-8000-000000000005'
\set other    'b3000000-0000-4000-8000-000000000006'
\set nokey    'b3000000-0000-4000-8000-0000000000ff'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

SET ROLE regress_admin;
SELECT flowella.org_create('Revoke Ltd', 'pro', :'owner') AS org \gset
SELECT flowella.org_create('Revoke Other Ltd', 'pro', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
SELECT flowella.member_set(:'org', :'readonly', 'read_only') \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k1, token AS t1 FROM flowella.apikey_create(:'org', 'first') \gset
SELECT key_id AS k2, token AS t2 FROM flowella.apikey_create(:'org', 'second', ARRAY['messages:send']) \gset
SELECT key_id AS k3, token AS t3 FROM flowella.apikey_create(:'org', 'third') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT key_id AS ko, token AS tko FROM flowella.apikey_create(:'other_org', 'other org key') \gset
COMMIT;
RESET ROLE;

-- All valid to begin with.
SET ROLE regress_verifier;
SELECT code FROM flowella.apikey_verify(:'t1');
RESET ROLE;

--
-- Revoking
--

-- An admin (not the key's creator) revokes k1: the call returns the
-- revocation time, a timestamptz taken inside the transaction.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin', '198.51.100.23', :'tp') \gset
SELECT r AS r1, pg_typeof(r) AS r_type, r >= now() AND r <= clock_timestamp() AS in_txn
  FROM flowella.apikey_revoke(:'k1') r \gset
\echo :r_type :in_txn
COMMIT;
RESET ROLE;

-- The next verify answers REVOKED (not valid; the key is still identified).
SET ROLE regress_verifier;
SELECT valid, code, key_id = :'k1' AS same_key, scopes FROM flowella.apikey_verify(:'t1');
SELECT valid, code FROM flowella.apikey_verify(:'t1', 'messages:read');
-- the other keys are untouched
SELECT code FROM flowella.apikey_verify(:'t2');
RESET ROLE;

-- The row: revoked_at is the returned time, revoked_by the actor; nothing
-- else changed.
SELECT label, revoked_at = :'r1' AS at_returned_time, revoked_by = :'admin' AS by_admin,
       created_by = :'owner' AS created_by_owner
  FROM flowella.api_keys WHERE org_id = :'org' ORDER BY label;

-- One key.revoked record, attributed, with old/new facts and never hash or
-- token.
SELECT action, actor_user_id = :'admin' AS actor_admin, actor_ip,
       trace_context = :'tp' AS traced,
       (details->>'revoked_at')::timestamptz = :'r1' AS d_revoked_at,
       (details->>'revoked_by')::uuid = :'admin' AS d_revoked_by,
       details->>'label' AS d_label,
       details->>'prefix' = (SELECT prefix FROM flowella.api_keys WHERE key_id = :'k1') AS d_prefix,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(details) k) AS detail_keys,
       details::text LIKE '%' || :'t1' || '%' AS has_token,
       details::text LIKE '%' || (SELECT encode(secret_hash, 'hex') FROM flowella.api_keys
                                   WHERE key_id = :'k1') || '%' AS has_hash
  FROM flowella.audit_records WHERE key_id = :'k1' AND action = 'key.revoked';

-- Revoking again (here by the owner, in a later transaction) returns the
-- first time and writes no second record; revoked_by stays the admin.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner', '203.0.113.99') \gset
SELECT flowella.apikey_revoke(:'k1') = :'r1' AS same_time;
SELECT flowella.apikey_revoke(:'k1') = :'r1' AS same_time_again;
COMMIT;
RESET ROLE;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';
SELECT count(*) AS revoked_records FROM flowella.audit_records
 WHERE key_id = :'k1' AND action = 'key.revoked';
SELECT revoked_at = :'r1' AS at_first_time, revoked_by = :'admin' AS by_admin
  FROM flowella.api_keys WHERE key_id = :'k1';

-- The revoked key is still listed, with status revoked, revoked_at and
-- revoked_by; the others stay active.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, status, revoked_at = :'r1' AS at_first_time, revoked_by = :'admin' AS by_admin
  FROM flowella.apikey_list(:'org') ORDER BY label;
COMMIT;
RESET ROLE;

-- Revocation is irreversible, even for the table's owner (a superuser here).
UPDATE flowella.api_keys SET revoked_at = NULL, revoked_by = NULL WHERE key_id = :'k1';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET revoked_at = revoked_at + interval '1 day' WHERE key_id = :'k1';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.api_keys WHERE key_id = :'k1';
\echo :LAST_ERROR_SQLSTATE
SET ROLE regress_verifier;
SELECT code FROM flowella.apikey_verify(:'t1');
RESET ROLE;

--
-- A rolled-back revoke leaves the key active and writes no record.
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k2') IS NOT NULL AS revoked_in_txn;
ROLLBACK;
-- the same inside a savepoint of a transaction that commits
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SAVEPOINT s;
SELECT flowella.apikey_revoke(:'k2') IS NOT NULL AS revoked_in_savepoint;
ROLLBACK TO s;
COMMIT;
RESET ROLE;
SELECT revoked_at IS NULL AND revoked_by IS NULL AS active
  FROM flowella.api_keys WHERE key_id = :'k2';
SELECT count(*) AS k2_revoked_records FROM flowella.audit_records
 WHERE key_id = :'k2' AND action = 'key.revoked';
SET ROLE regress_verifier;
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t2', 'messages:send');
RESET ROLE;

--
-- Keys the actor may not revoke: unknown id, NULL id, a key of another
-- org, an actor who is user, read_only or not a member.  All 42704 with the
-- same message, and nothing changes.
--
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'nokey');
\echo :LAST_ERROR_SQLSTATE
\set msg_unknown :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(NULL);
\echo :LAST_ERROR_SQLSTATE
\set msg_null :LAST_ERROR_MESSAGE
ROLLBACK;
-- the owner of this org, on the other org's key
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'ko');
\echo :LAST_ERROR_SQLSTATE
\set msg_other_org :LAST_ERROR_MESSAGE
ROLLBACK;
-- the other org's owner, on this org's key
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT flowella.apikey_revoke(:'k2');
\echo :LAST_ERROR_SQLSTATE
\set msg_foreign :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT flowella.apikey_revoke(:'k2');
\echo :LAST_ERROR_SQLSTATE
\set msg_user :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'readonly') \gset
SELECT flowella.apikey_revoke(:'k2');
\echo :LAST_ERROR_SQLSTATE
\set msg_readonly :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'stranger') \gset
SELECT flowella.apikey_revoke(:'k2');
\echo :LAST_ERROR_SQLSTATE
\set msg_stranger :LAST_ERROR_MESSAGE
ROLLBACK;
-- an already revoked key is no different: the user learns nothing about it
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT flowella.apikey_revoke(:'k1');
\echo :LAST_ERROR_SQLSTATE
\set msg_user_revoked :LAST_ERROR_MESSAGE
ROLLBACK;
RESET ROLE;
SELECT count(DISTINCT m) AS distinct_messages, min(m) AS message
  FROM unnest(ARRAY[:'msg_unknown', :'msg_null', :'msg_other_org', :'msg_foreign',
                    :'msg_user', :'msg_readonly', :'msg_stranger', :'msg_user_revoked']) m;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records;
SELECT label, revoked_at IS NULL AS active FROM flowella.api_keys
 WHERE org_id IN (:'org', :'other_org') ORDER BY label;

-- A member demoted from admin loses the right at once.
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'admin', 'user') \gset
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT flowella.apikey_revoke(:'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
RESET ROLE;

-- Roles without the manager grant cannot call it at all (42501).
SET ROLE regress_verifier;
SELECT flowella.apikey_revoke(:'k3');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_nobody;
SELECT flowella.apikey_revoke(:'nokey');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT revoked_at IS NULL AS k3_active FROM flowella.api_keys WHERE key_id = :'k3';

-- Revoking without a client address or trace context records NULLs.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k3') IS NOT NULL AS revoked;
COMMIT;
RESET ROLE;
SELECT action, actor_user_id = :'owner' AS actor_owner, actor_ip, trace_context
  FROM flowella.audit_records WHERE key_id = :'k3' ORDER BY event_id;
SET ROLE regress_verifier;
SELECT code FROM flowella.apikey_verify(:'t3');
RESET ROLE;
