--
-- apikey_replace (SPEC sections 5 and 9): a new key with the old one's
-- org, label, scopes and mode; the old key left as it is.
--
\set owner    'b5000000-0000-4000-8000-000000000001'
\set admin    'b5000000-0000-4000-8000-000000000002'
\set user     'b5000000-0000-4000-8000-000000000003'
\set other    'b5000000-0000-4000-8000-000000000006'
\set nokey    'b5000000-0000-4000-8000-0000000000ff'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

-- This file's own plan, so that downgrading it affects no other test.
SET ROLE regress_admin;
SELECT flowella.plan_set('replace_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
SELECT flowella.org_create('Replace Ltd', 'replace_plan', :'owner') AS org \gset
SELECT flowella.org_create('Replace Other Ltd', 'replace_plan', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
-- a narrowed test-mode key, an inheriting live key, one with an expiry
SELECT key_id AS k1, token AS t1, prefix AS p1
  FROM flowella.apikey_create(:'org', 'webhook sender', ARRAY['messages:send'], 'test') \gset
SELECT key_id AS k2, token AS t2, prefix AS p2
  FROM flowella.apikey_create(:'org', 'inheriting') \gset
SELECT key_id AS k3, token AS t3
  FROM flowella.apikey_create(:'org', 'expiring', ARRAY['analytics:read'], 'live',
                              clock_timestamp() + interval '30 days 12:34:56.789') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT key_id AS ko FROM flowella.apikey_create(:'other_org', 'other org key') \gset
COMMIT;
RESET ROLE;

--
-- Replacing
--

-- An admin replaces k1: a new, well-formed key id, token and prefix, all
-- different from the old ones.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin', '192.0.2.55', :'tp') \gset
SELECT key_id AS n1, token AS nt1, prefix AS np1,
       regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_replace(:'k1') \gset
\echo :ok :shape
COMMIT;
RESET ROLE;
SELECT :'n1' <> :'k1' AS new_id, :'nt1' <> :'t1' AS new_token, :'np1' <> :'p1' AS new_prefix;

-- The new row: same org, label, scopes and mode; created by the actor,
-- linked to the old key; no expiry as the old had none.  The old row is
-- untouched and still active.
SELECT key_id = :'n1' AS is_new, org_id = :'org' AS same_org, label, scopes, mode,
       created_by = :'admin' AS by_admin, created_by = :'owner' AS by_owner,
       replaces_key_id = :'k1' AS replaces_k1, replaces_key_id IS NULL AS replaces_nothing,
       expires_at IS NULL AS never_expires, revoked_at IS NULL AS active
  FROM flowella.api_keys WHERE key_id IN (:'k1', :'n1') ORDER BY is_new;

-- Both keys verify VALID with the same effective scopes and mode.
SET ROLE regress_verifier;
SELECT key_id = :'k1' AS old, valid, code, scopes, mode FROM flowella.apikey_verify(:'t1', 'messages:send');
SELECT key_id = :'n1' AS new, valid, code, scopes, mode FROM flowella.apikey_verify(:'nt1', 'messages:send');
SELECT code FROM flowella.apikey_verify(:'nt1', 'messages:read');
RESET ROLE;

-- One key.created record for the new key, with replaces_key_id and the
-- actor; no record for the old key.
SELECT action, key_id = :'n1' AS new_key, actor_user_id = :'admin' AS actor_admin, actor_ip,
       trace_context = :'tp' AS traced,
       (details->>'replaces_key_id')::uuid = :'k1' AS d_replaces_k1,
       details->>'label' AS d_label, details->'scopes' AS d_scopes, details->>'mode' AS d_mode,
       details->>'prefix' = :'np1' AS d_prefix, details::text LIKE '%' || :'nt1' || '%' AS has_token
  FROM flowella.audit_records WHERE key_id IN (:'k1', :'n1') ORDER BY event_id;

-- Both listed, newest first.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id = :'n1' AS new, key_id = :'k1' AS old, label, status
  FROM flowella.apikey_list(:'org') WHERE key_id IN (:'k1', :'n1');
COMMIT;
RESET ROLE;

-- An inheriting key's replacement inherits too (scopes NULL).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n2, token AS nt2 FROM flowella.apikey_replace(:'k2') \gset
COMMIT;
RESET ROLE;
SELECT label, scopes IS NULL AS inherits, mode, replaces_key_id = :'k2' AS replaces_k2
  FROM flowella.api_keys WHERE key_id = :'n2';
SET ROLE regress_verifier;
SELECT code, scopes, mode FROM flowella.apikey_verify(:'nt2');
RESET ROLE;

-- A key with an expiry: the replacement gets the same lifetime, counted
-- from its own creation, exactly.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n3 FROM flowella.apikey_replace(:'k3') \gset
COMMIT;
RESET ROLE;
SELECT n.expires_at - n.created_at = o.expires_at - o.created_at AS same_lifetime,
       n.expires_at > o.expires_at AS later_expiry, n.scopes, n.mode
  FROM flowella.api_keys n JOIN flowella.api_keys o ON o.key_id = n.replaces_key_id
 WHERE n.key_id = :'n3';

-- A revoked key can be replaced (after a suspected exposure: revoke, then
-- replace); the old key stays revoked, the new one is valid.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k2') IS NOT NULL AS revoked;
SELECT key_id AS n2b, token AS nt2b FROM flowella.apikey_replace(:'k2') \gset
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT code FROM flowella.apikey_verify(:'t2');
SELECT code FROM flowella.apikey_verify(:'nt2b');
RESET ROLE;
SELECT revoked_at IS NULL AS active, replaces_key_id = :'k2' AS replaces_k2, label
  FROM flowella.api_keys WHERE key_id = :'n2b';
-- replacing the same key twice gives two distinct keys
SELECT count(*) AS replacements_of_k2, count(DISTINCT prefix) AS distinct_prefixes
  FROM flowella.api_keys WHERE replaces_key_id = :'k2';

-- An expired key (restored by a superuser, as pg_restore would: no actor,
-- so not audited anew) can be replaced; the new key gets the old lifetime
-- from now, so it is active.
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode,
                               created_at, created_by, expires_at)
VALUES (:'org', 'restored expired', 'flwl_live_RPLCexp1', digest('replace.sql expired', 'sha256'),
        ARRAY['messages:read'], 'live', now() - interval '960 hours', :'owner',
        now() - interval '240 hours')
RETURNING label \gset
SELECT key_id AS kx FROM flowella.api_keys WHERE prefix = 'flwl_live_RPLCexp1' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS nx FROM flowella.apikey_replace(:'kx') \gset
SELECT key_id = :'kx' AS old, status FROM flowella.apikey_list(:'org')
 WHERE key_id IN (:'kx', :'nx') ORDER BY old;
COMMIT;
RESET ROLE;
SELECT expires_at - created_at AS lifetime, expires_at > now() AS in_future, scopes
  FROM flowella.api_keys WHERE key_id = :'nx';

--
-- After a plan downgrade the replacement gets only the scopes the plan
-- still offers; if none is left, replacing fails (22023).
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k4 FROM flowella.apikey_create(:'org', 'two scopes', ARRAY['messages:send', 'analytics:read']) \gset
SELECT key_id AS k5 FROM flowella.apikey_create(:'org', 'analytics only', ARRAY['analytics:read']) \gset
COMMIT;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.plan_set('replace_plan', ARRAY['messages:send', 'messages:read'], false) \gset
RESET ROLE;
SELECT count(*) AS keys_before FROM flowella.api_keys WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n4, token AS nt4 FROM flowella.apikey_replace(:'k4') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_replace(:'k5');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SELECT o.scopes AS old_scopes, n.scopes AS new_scopes
  FROM flowella.api_keys n JOIN flowella.api_keys o ON o.key_id = n.replaces_key_id
 WHERE n.key_id = :'n4';
SELECT details->'scopes' AS audited_scopes FROM flowella.audit_records
 WHERE key_id = :'n4' AND action = 'key.created';
SELECT count(*) - :keys_before AS new_keys, count(*) FILTER (WHERE replaces_key_id = :'k5') AS k5_replacements
  FROM flowella.api_keys WHERE org_id = :'org';
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'nt4');
RESET ROLE;
-- an inheriting key's replacement still inherits after the downgrade
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n2c, token AS nt2c FROM flowella.apikey_replace(:'n2') \gset
COMMIT;
RESET ROLE;
SELECT scopes IS NULL AS inherits FROM flowella.api_keys WHERE key_id = :'n2c';
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'nt2c');
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.plan_set('replace_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
RESET ROLE;

--
-- Errors: 42704 for an unknown key, a NULL key, another org's key, and
-- actors who may not manage the key; 42501 without an actor or without
-- the manager role.  No key and no record is created.
--
SELECT count(*) AS keys_before FROM flowella.api_keys \gset
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_replace(:'nokey');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_replace(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_replace(:'ko');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT * FROM flowella.apikey_replace(:'k1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT * FROM flowella.apikey_replace(:'k1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT * FROM flowella.apikey_replace(:'k1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_verifier;
SELECT * FROM flowella.apikey_replace(:'k1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- a replace that is rolled back leaves nothing either
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS replaced FROM flowella.apikey_replace(:'k1');
ROLLBACK;
RESET ROLE;
SELECT count(*) - :keys_before AS new_keys FROM flowella.api_keys;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records;
