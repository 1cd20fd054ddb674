--
-- apikey_set_scopes (SPEC sections 2, 4, 5 and 8): narrowing a key's
-- scopes, inheriting the plan again, the key.scopes_changed record, and
-- every error.
--
\set owner    'b4000000-0000-4000-8000-000000000001'
\set admin    'b4000000-0000-4000-8000-000000000002'
\set user     'b4000000-0000-4000-8000-000000000003'
\set other    'b4000000-0000-4000-8000-000000000006'
\set nokey    'b4000000-0000-4000-8000-0000000000ff'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

-- This file's own plan, so that changing it affects no other test.
SET ROLE regress_admin;
SELECT flowella.plan_set('scopes_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
SELECT flowella.org_create('Scopes Ltd', 'scopes_plan', :'owner') AS org \gset
SELECT flowella.org_create('Scopes Other Ltd', 'scopes_plan', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k, token AS t FROM flowella.apikey_create(:'org', 'integration') \gset
SELECT key_id AS kr, token AS tr FROM flowella.apikey_create(:'org', 'to revoke') \gset
SELECT flowella.apikey_revoke(:'kr') IS NOT NULL AS revoked;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT key_id AS ko FROM flowella.apikey_create(:'other_org', 'other org key') \gset
COMMIT;
RESET ROLE;

-- A new key inherits the plan: every plan scope is effective.
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t');
RESET ROLE;

--
-- Narrowing
--

-- An admin narrows the key to messages:send; verify shows the new set at
-- once, and a removed scope is INSUFFICIENT_SCOPE.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin', '192.0.2.44', :'tp') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']);
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t');
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t', 'messages:send');
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t', 'messages:read');
SELECT valid, code FROM flowella.apikey_verify(:'t', 'analytics:read');
RESET ROLE;

-- One key.scopes_changed record with the old (NULL = inherit) and new
-- scopes, attributed to the actor.
SELECT action, actor_user_id = :'admin' AS actor_admin, actor_ip, trace_context = :'tp' AS traced,
       details->'old_scopes' AS old_scopes, details->'new_scopes' AS new_scopes,
       details->>'prefix' = (SELECT prefix FROM flowella.api_keys WHERE key_id = :'k') AS d_prefix,
       (SELECT array_agg(x ORDER BY x) FROM jsonb_object_keys(details) x) AS detail_keys
  FROM flowella.audit_records WHERE key_id = :'k' AND action = 'key.scopes_changed';

-- Setting the scopes the key already has (in any order, with duplicates)
-- changes nothing and writes no record.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']) \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send', 'messages:send']) \gset
COMMIT;
RESET ROLE;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';

-- A change to two scopes, given unsorted and duplicated, is stored sorted
-- and audited with old and new.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:read', 'analytics:read', 'messages:read']) \gset
-- the same set in another order: no change
SELECT flowella.apikey_set_scopes(:'k', ARRAY['analytics:read', 'messages:read']) \gset
COMMIT;
RESET ROLE;
SELECT scopes FROM flowella.api_keys WHERE key_id = :'k';
SELECT details->'old_scopes' AS old_scopes, details->'new_scopes' AS new_scopes,
       actor_user_id = :'owner' AS actor_owner
  FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET :audit_before;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t', 'analytics:read');
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send');
RESET ROLE;

-- NULL: the key inherits the plan again (list shows NULL, verify all the
-- plan's scopes); audited with new_scopes null.  NULL again: no record.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', NULL) \gset
SELECT flowella.apikey_set_scopes(:'k', NULL) \gset
SELECT label, scopes IS NULL AS inherits, scopes FROM flowella.apikey_list(:'org') WHERE key_id = :'k';
COMMIT;
RESET ROLE;
SELECT details->'old_scopes' AS old_scopes, details->'new_scopes' AS new_scopes
  FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET :audit_before;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t', 'messages:send');
RESET ROLE;

-- A rolled-back change leaves the scopes and writes no record.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['analytics:read']) \gset
ROLLBACK;
RESET ROLE;
SELECT scopes IS NULL AS still_inherits FROM flowella.api_keys WHERE key_id = :'k';
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';

--
-- Effective scopes follow the plan: a scope the plan drops is gone from
-- the key at once (the stored set is kept), and cannot be set again.
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send', 'analytics:read']) \gset
COMMIT;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.plan_set('scopes_plan', ARRAY['messages:send', 'messages:read'], false) \gset
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t');
SELECT code FROM flowella.apikey_verify(:'t', 'analytics:read');
RESET ROLE;
SELECT scopes AS stored FROM flowella.api_keys WHERE key_id = :'k';
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['analytics:read']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.plan_set('scopes_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t', 'analytics:read');
RESET ROLE;

--
-- Errors; after them the key's scopes and the audit trail are unchanged.
--
SELECT scopes AS scopes_before FROM flowella.api_keys WHERE key_id = :'k' \gset
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_manager;

-- 22023: scopes the plan does not offer (named), an empty array, a NULL
-- element, two dimensions, a malformed name
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['channels:manage']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send', 'channels:manage', 'admin:all']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY[]::text[]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send', NULL]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY[['messages:send'], ['messages:read']]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['Messages:Send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 55000: a revoked key keeps the scopes it had (also with valid scopes,
-- and also for NULL)
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'kr', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'kr', NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 42704: an unknown key, a NULL key, another org's key, a plain user, and
-- the other org's owner on this org's (revoked or active) keys: the same
-- answer, which says nothing about whether the key is revoked
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'nokey', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(NULL, ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'ko', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT flowella.apikey_set_scopes(:'kr', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- an outsider's bad scopes are 42704 too, not a validation error
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT flowella.apikey_set_scopes(:'k', ARRAY['channels:manage']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- 42501: no actor
BEGIN;
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
-- and roles without the manager grant
SET ROLE regress_verifier;
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:send']);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT scopes = :'scopes_before' AS scopes_unchanged FROM flowella.api_keys WHERE key_id = :'k';
SELECT scopes IS NULL AS revoked_key_inherits, revoked_at IS NOT NULL AS revoked
  FROM flowella.api_keys WHERE key_id = :'kr';
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records;
