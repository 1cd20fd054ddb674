--
-- Revocation is irreversible and keys are undeletable (SPEC section 7):
-- not even a superuser, who is also the tables' owner here and bypasses
-- privileges and row-level security, can clear revoked_at, change what
-- identifies a key, or delete or truncate key rows -- whatever the
-- session_replication_role -- unless the guard trigger is disabled on
-- purpose.  last_used_at alone may move, and only forwards.
--
\set owner    'c2000000-0000-4000-8000-000000000001'
\set owner_b  'c2000000-0000-4000-8000-000000000002'

SET ROLE regress_admin;
SELECT flowella.org_create('Immutable Ltd', 'pro', :'owner') AS org \gset
SELECT flowella.org_create('Immutable B Ltd', 'pro', :'owner_b') AS org_b \gset
RESET ROLE;

-- Three keys: one stays active, one is revoked, one expires in a year.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_active FROM flowella.apikey_create(:'org', 'active key', ARRAY['messages:read']) \gset
SELECT key_id AS k_revoked FROM flowella.apikey_create(:'org', 'revoked key', ARRAY['messages:send']) \gset
SELECT key_id AS k_expiring FROM flowella.apikey_create(:'org', 'expiring key', NULL, 'test', now() + interval '1 year') \gset
SELECT flowella.apikey_revoke(:'k_revoked') IS NOT NULL AS revoked;
COMMIT;
RESET ROLE;

-- The tables' owner is the superuser running this file.
SELECT pg_get_userbyid(relowner) = current_user AS owner_is_me,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser
  FROM pg_class WHERE oid = 'flowella.api_keys'::regclass;

-- The rows as they are now, to compare with after every refused change.
CREATE TEMP TABLE imm_before AS SELECT * FROM flowella.api_keys WHERE org_id = :'org';
CREATE TEMP VIEW imm_changed AS
  SELECT count(*) AS changed_rows FROM (
    (SELECT * FROM imm_before EXCEPT SELECT * FROM flowella.api_keys)
    UNION ALL
    (SELECT * FROM flowella.api_keys WHERE org_id IN (SELECT org_id FROM imm_before)
     EXCEPT SELECT * FROM imm_before)) d;
SELECT count(*) FROM imm_before;
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset

--
-- Direct UPDATEs of the revoked key's revocation and of any key's identity
--

-- Clearing revoked_at (alone, or together with revoked_by), or moving it.
UPDATE flowella.api_keys SET revoked_at = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET revoked_at = NULL, revoked_by = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET revoked_at = revoked_at + interval '1 year' WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET revoked_by = :'owner_b' WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
-- all rows at once, as a careless maintenance statement would
UPDATE flowella.api_keys SET revoked_at = NULL, revoked_by = NULL WHERE revoked_at IS NOT NULL;
\echo :LAST_ERROR_SQLSTATE

-- Changing the hash, prefix, org, creation time, creator or label, of an
-- active key and of a revoked one.
UPDATE flowella.api_keys SET secret_hash = digest('another token', 'sha256') WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET secret_hash = digest('another token', 'sha256') WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET prefix = 'flwl_live_AAAAAAAA' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET prefix = 'flwl_live_AAAAAAAA' WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET org_id = :'org_b' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET org_id = :'org_b' WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET created_at = created_at - interval '2 years' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET created_by = :'owner_b' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET label = 'renamed' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET label = 'renamed' WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
-- and the other identifying fields: key id, mode, expiry, replaced key
UPDATE flowella.api_keys SET key_id = gen_random_uuid() WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET mode = 'live', prefix = overlay(prefix placing 'live' from 6 for 4)
 WHERE key_id = :'k_expiring';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET expires_at = NULL WHERE key_id = :'k_expiring';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET replaces_key_id = :'k_revoked' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE

-- Changing the scopes of a revoked key is refused as a state error.
UPDATE flowella.api_keys SET scopes = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET scopes = ARRAY['messages:read'] WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE

-- The same changes through INSERT ... ON CONFLICT DO UPDATE and MERGE.
INSERT INTO flowella.api_keys SELECT * FROM imm_before WHERE key_id = :'k_revoked'
ON CONFLICT (key_id) DO UPDATE SET revoked_at = NULL, revoked_by = NULL;
\echo :LAST_ERROR_SQLSTATE
MERGE INTO flowella.api_keys k USING imm_before b ON k.key_id = b.key_id
 WHEN MATCHED THEN UPDATE SET revoked_at = NULL, revoked_by = NULL;
\echo :LAST_ERROR_SQLSTATE
MERGE INTO flowella.api_keys k USING imm_before b ON k.key_id = b.key_id
 WHEN MATCHED THEN DELETE;
\echo :LAST_ERROR_SQLSTATE

--
-- Direct INSERTs of rows the API would never write: one row check names
-- the bad field (and, unlike a plain CHECK, does not print the row).
--
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', '  ', 'flwl_live_Direct01', digest('x', 'sha256'), 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', E'tab\there', 'flwl_live_Direct01', digest('x', 'sha256'), 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Short', digest('x', 'sha256'), 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', 'direct', 'flwl_prod_Direct01', digest('x', 'sha256'), 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct-1', digest('x', 'sha256'), 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), 'test', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', '\x00', 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), '{}', 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), ARRAY['Bad Scope'], 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), ARRAY[NULL::text], 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode, created_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'),
        ARRAY[['messages:read'], ['messages:send']], 'live', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by, expires_at)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), 'live', :'owner',
        now() - interval '1 day');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by, revoked_by)
VALUES (:'org', 'direct', 'flwl_live_Direct01', digest('x', 'sha256'), 'live', :'owner', :'owner');
-- and through an UPDATE of a column the guard lets through
UPDATE flowella.api_keys SET scopes = '{}' WHERE key_id = :'k_active';

--
-- Deleting and truncating
--
DELETE FROM flowella.api_keys WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.api_keys WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.api_keys WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
-- TRUNCATE is refused by the guard triggers, with or without CASCADE.
TRUNCATE flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.api_keys CASCADE;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.api_keys, flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
-- nor by emptying the tables the keys hang off
TRUNCATE flowella.orgs CASCADE;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.plans CASCADE;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.members;
\echo :LAST_ERROR_SQLSTATE

-- Nothing changed: same rows, same values, no audit record written.
SELECT * FROM imm_changed;
SELECT count(*) AS keys FROM flowella.api_keys WHERE org_id = :'org';
SELECT count(*) = :audit_before AS audit_unchanged FROM flowella.audit_records WHERE org_id = :'org';
SELECT count(*) > 0 AS orgs_still_there FROM flowella.orgs;

--
-- With session_replication_role = replica (as logical replication and some
-- restore tools run), the guards still fire: they are ENABLE ALWAYS.
--
SELECT tgrelid::regclass AS tbl, tgname, tgenabled
  FROM pg_trigger
 WHERE tgrelid IN ('flowella.api_keys'::regclass, 'flowella.audit_records'::regclass,
                   'flowella.orgs'::regclass, 'flowella.plans'::regclass,
                   'flowella.members'::regclass)
   AND tgname LIKE '%guard%'
 ORDER BY 1, 2;
SET session_replication_role = replica;
UPDATE flowella.api_keys SET revoked_at = NULL, revoked_by = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET secret_hash = digest('another token', 'sha256') WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET org_id = :'org_b' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET scopes = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.api_keys WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.api_keys CASCADE;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
SELECT * FROM imm_changed;

--
-- last_used_at may be set, and never moves backwards
--
SELECT now() AS t0 \gset
UPDATE flowella.api_keys SET last_used_at = :'t0'::timestamptz - interval '1 hour' WHERE key_id = :'k_active';
SELECT last_used_at = :'t0'::timestamptz - interval '1 hour' AS set_once FROM flowella.api_keys WHERE key_id = :'k_active';
-- forwards: taken
UPDATE flowella.api_keys SET last_used_at = :'t0' WHERE key_id = :'k_active';
SELECT last_used_at = :'t0' AS moved_forward FROM flowella.api_keys WHERE key_id = :'k_active';
-- backwards or cleared: no error, the value stays
UPDATE flowella.api_keys SET last_used_at = :'t0'::timestamptz - interval '1 day' WHERE key_id = :'k_active';
SELECT last_used_at = :'t0' AS unchanged_by_backwards FROM flowella.api_keys WHERE key_id = :'k_active';
UPDATE flowella.api_keys SET last_used_at = NULL WHERE key_id = :'k_active';
SELECT last_used_at = :'t0' AS unchanged_by_null FROM flowella.api_keys WHERE key_id = :'k_active';
-- also in replica mode
SET session_replication_role = replica;
UPDATE flowella.api_keys SET last_used_at = '-infinity' WHERE key_id = :'k_active';
RESET session_replication_role;
SELECT last_used_at = :'t0' AS unchanged_in_replica FROM flowella.api_keys WHERE key_id = :'k_active';
-- and on a revoked key too (a use recorded just before the revoke lands)
UPDATE flowella.api_keys SET last_used_at = :'t0' WHERE key_id = :'k_revoked';
SELECT last_used_at = :'t0' AS revoked_key_last_used FROM flowella.api_keys WHERE key_id = :'k_revoked';
-- Nothing but last_used_at changed, and that wrote no audit record.
SELECT count(*) AS other_columns_changed
  FROM imm_before b JOIN flowella.api_keys k USING (key_id)
 WHERE (b.org_id, b.label, b.prefix, b.secret_hash, b.scopes, b.mode, b.created_at, b.created_by,
        b.expires_at, b.revoked_at, b.revoked_by, b.replaces_key_id)
       IS DISTINCT FROM
       (k.org_id, k.label, k.prefix, k.secret_hash, k.scopes, k.mode, k.created_at, k.created_by,
        k.expires_at, k.revoked_at, k.revoked_by, k.replaces_key_id);
SELECT count(*) = :audit_before AS audit_unchanged FROM flowella.audit_records WHERE org_id = :'org';

--
-- The escape hatch: a superuser who disables the guard on purpose can
-- change a key (here its label); ENABLE ALWAYS puts the guard back, and it
-- refuses again.
--
BEGIN;
ALTER TABLE flowella.api_keys DISABLE TRIGGER api_keys_guard;
SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'flowella.api_keys'::regclass AND tgname = 'api_keys_guard';
UPDATE flowella.api_keys SET label = 'renamed under maintenance' WHERE key_id = :'k_active';
SELECT label FROM flowella.api_keys WHERE key_id = :'k_active';
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_guard;
COMMIT;
SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'flowella.api_keys'::regclass AND tgname = 'api_keys_guard';
UPDATE flowella.api_keys SET label = 'active key' WHERE key_id = :'k_active';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET revoked_at = NULL, revoked_by = NULL WHERE key_id = :'k_revoked';
\echo :LAST_ERROR_SQLSTATE
SELECT label FROM flowella.api_keys WHERE key_id = :'k_active';
SELECT revoked_at IS NOT NULL AS still_revoked FROM flowella.api_keys WHERE key_id = :'k_revoked';

-- A plain ENABLE (not ALWAYS) would let replica mode past the guard; the
-- state after the hatch is ALWAYS again for every guard of the schema.
SELECT count(*) AS guards_not_always
  FROM pg_trigger
 WHERE tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'flowella'::regnamespace)
   AND tgname LIKE '%guard%' AND tgenabled <> 'A';

--
-- The API path agrees: the revoked key stays revoked, with its first
-- revocation time, and keeps its scopes.
--
SELECT revoked_at AS first_revoked_at FROM imm_before WHERE key_id = :'k_revoked' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k_revoked', NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k_revoked') = :'first_revoked_at' AS same_first_revocation;
SELECT label, scopes, status FROM flowella.apikey_list(:'org') ORDER BY label;
COMMIT;
RESET ROLE;

--
-- Plan names and members' roles: a direct write (here the superuser's)
-- meets the same rule as plan_set and member_set, one C function each.
--
INSERT INTO flowella.plans (plan, scopes) VALUES ('Bad Plan', ARRAY['messages:read']);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.plans (plan, scopes) VALUES (repeat('p', 64), ARRAY['messages:read']);
\echo :LAST_ERROR_SQLSTATE
BEGIN;
INSERT INTO flowella.plans (plan, scopes) VALUES ('imm-plan_' || repeat('p', 54), ARRAY['messages:read']);
SELECT length(plan) AS longest_plan_name FROM flowella.plans WHERE plan LIKE 'imm-plan%';
ROLLBACK;
UPDATE flowella.members SET role = 'superadmin' WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.members SET role = 'Owner' WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
SELECT DISTINCT role FROM flowella.members WHERE org_id = :'org' ORDER BY role;
SELECT conname, pg_get_constraintdef(oid) AS def
  FROM pg_constraint
 WHERE conname IN ('plans_plan_check', 'members_role_check')
 ORDER BY conname;
