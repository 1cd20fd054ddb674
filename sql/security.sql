--
-- Privileges, row-level security and the audit view (SPEC section 8, and
-- the actor checks of section 4): what each extension role may execute,
-- read and write, that nothing is granted to PUBLIC, and what each role
-- sees of two organisations when it reads the tables directly.
--
\set owner_a    'c1000000-0000-4000-8000-00000000000a'
\set admin_a    'c1000000-0000-4000-8000-0000000000a2'
\set user_a     'c1000000-0000-4000-8000-0000000000a3'
\set readonly_a 'c1000000-0000-4000-8000-0000000000a4'
\set owner_b    'c1000000-0000-4000-8000-00000000000b'
\set stranger   'c1000000-0000-4000-8000-0000000000ff'

--
-- Catalog checks
--

-- EXECUTE on every function of the schema, for each extension role and for
-- PUBLIC.  The verifier may run apikey_verify and nothing else; PUBLIC
-- nothing at all; the trigger and helper functions nobody.
SELECT replace(p.oid::regprocedure::text, 'timestamp with time zone', 'timestamptz')
         AS function,
       has_function_privilege('flowella_apikey_verifier', p.oid, 'EXECUTE') AS verifier,
       has_function_privilege('flowella_apikey_manager', p.oid, 'EXECUTE') AS manager,
       has_function_privilege('flowella_apikey_admin', p.oid, 'EXECUTE') AS admin,
       has_function_privilege('flowella_apikey_auditor', p.oid, 'EXECUTE') AS auditor,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public
  FROM pg_proc p
 WHERE p.pronamespace = 'flowella'::regnamespace
 ORDER BY p.oid::regprocedure::text;

-- No ACL entry of any object in the schema names PUBLIC (grantee 0), the
-- defaults of a NULL ACL included: schema, functions, tables, views,
-- sequences and types (array types take their element type's privileges).
SELECT 'schema' AS kind, n.nspname AS name, a.privilege_type
  FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
 WHERE n.nspname = 'flowella' AND a.grantee = 0
UNION ALL
SELECT 'function', p.oid::regprocedure::text, a.privilege_type
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.pronamespace = 'flowella'::regnamespace AND a.grantee = 0
UNION ALL
SELECT 'relation', c.relname, a.privilege_type
  FROM pg_class c,
       aclexplode(coalesce(c.relacl,
                           acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                      c.relowner))) a
 WHERE c.relnamespace = 'flowella'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'p', 'm', 'f')
   AND a.grantee = 0
UNION ALL
SELECT 'type', t.typname, a.privilege_type
  FROM pg_type t, aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) a
 WHERE t.typnamespace = 'flowella'::regnamespace AND t.typcategory <> 'A'
   AND a.grantee = 0
ORDER BY 1, 2, 3;

-- The same from the other side: a role granted nothing may use nothing.
SELECT has_schema_privilege('regress_nobody', 'flowella', 'USAGE') AS nobody_schema_usage,
       has_schema_privilege('public', 'flowella', 'USAGE') AS public_schema_usage,
       has_schema_privilege('public', 'flowella', 'CREATE') AS public_schema_create,
       has_type_privilege('public', 'flowella.verification', 'USAGE') AS public_verification_type,
       has_sequence_privilege('public', 'flowella.audit_records_event_id_seq', 'USAGE') AS public_seq;

-- Every SECURITY DEFINER function pins search_path (to pg_catalog, pg_temp).
SELECT p.oid::regprocedure AS security_definer_function,
       p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'flowella'::regnamespace AND p.prosecdef
 ORDER BY p.oid::regprocedure::text;
SELECT count(*) AS secdef_without_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'flowella'::regnamespace AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\_path=%');

-- Row-level security is enabled and forced on every table of the schema.
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
  FROM pg_class c
 WHERE c.relnamespace = 'flowella'::regnamespace AND c.relkind IN ('r', 'p')
 ORDER BY c.relname;

-- Table-level privileges of each role on each table and view: SELECT only,
-- where the role should read, and never a write.  TRUNCATE is held by no
-- role: no ACL entry grants it, not even to the owning role (a superuser
-- bypasses privileges; the guard triggers stop it, see immutability).
SELECT c.relname,
       string_agg(CASE WHEN has_table_privilege(r.rolname, c.oid, 'SELECT') THEN r.tag END, ',' ORDER BY r.tag) AS may_select,
       string_agg(CASE WHEN has_table_privilege(r.rolname, c.oid, 'INSERT,UPDATE,DELETE,REFERENCES,TRIGGER')
                       THEN r.tag END, ',' ORDER BY r.tag) AS may_write,
       string_agg(CASE WHEN has_table_privilege(r.rolname, c.oid, 'TRUNCATE') THEN r.tag END, ',' ORDER BY r.tag) AS may_truncate,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.privilege_type = 'TRUNCATE') AS truncate_in_acl
  FROM pg_class c,
       (VALUES ('flowella_apikey_verifier', 'verifier'), ('flowella_apikey_manager', 'manager'),
               ('flowella_apikey_admin', 'admin'), ('flowella_apikey_auditor', 'auditor'),
               ('public', 'public')) r(rolname, tag)
 WHERE c.relnamespace = 'flowella'::regnamespace AND c.relkind IN ('r', 'v', 'p')
 GROUP BY c.relname, c.relowner, c.oid
 ORDER BY c.relname;

-- (api_keys shows no table-wide SELECT: the manager and auditor hold column
-- privileges only.)  Columns of api_keys they may read: all but secret_hash.
SELECT a.attname,
       has_column_privilege('flowella_apikey_manager', a.attrelid, a.attnum, 'SELECT') AS manager,
       has_column_privilege('flowella_apikey_auditor', a.attrelid, a.attnum, 'SELECT') AS auditor,
       has_column_privilege('flowella_apikey_admin', a.attrelid, a.attnum, 'SELECT') AS admin,
       has_column_privilege('flowella_apikey_verifier', a.attrelid, a.attnum, 'SELECT') AS verifier
  FROM pg_attribute a
 WHERE a.attrelid = 'flowella.api_keys'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- The sequence behind event_id: nobody but the owner may use or reset it.
SELECT r AS role, has_sequence_privilege(r, 'flowella.audit_records_event_id_seq', 'USAGE,SELECT,UPDATE') AS any_privilege
  FROM unnest(ARRAY['flowella_apikey_verifier', 'flowella_apikey_manager',
                    'flowella_apikey_admin', 'flowella_apikey_auditor']) r
 ORDER BY r;

--
-- Fixtures: org A on enterprise (audit log included) with one member of
-- each role, org B on pro (no audit log); keys in both.
--
SET ROLE regress_admin;
SELECT flowella.org_create('Security A Ltd', 'enterprise', :'owner_a') AS org_a \gset
SELECT flowella.org_create('Security B Ltd', 'pro', :'owner_b') AS org_b \gset
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT flowella.member_set(:'org_a', :'admin_a', 'admin') \gset
SELECT flowella.member_set(:'org_a', :'user_a', 'user') \gset
SELECT flowella.member_set(:'org_a', :'readonly_a', 'read_only') \gset
COMMIT;
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT key_id AS key_a1, token AS token_a1 FROM flowella.apikey_create(:'org_a', 'A one', ARRAY['messages:send']) \gset
SELECT key_id AS key_a2 FROM flowella.apikey_create(:'org_a', 'A two') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT key_id AS key_b1 FROM flowella.apikey_create(:'org_b', 'B one') \gset
COMMIT;
RESET ROLE;

-- A key made a year and a half ago, as a restore would bring it back: due
-- for rotation.
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by)
VALUES (:'org_a', 'A old', 'flwl_live_SecOld01', digest('security old key', 'sha256'), 'live',
        now() - interval '18 months', :'owner_a');

-- What a superuser sees, to compare the roles' views with.
SELECT count(*) AS all_orgs FROM flowella.orgs \gset
SELECT count(*) AS all_members FROM flowella.members \gset
SELECT count(*) AS all_keys FROM flowella.api_keys \gset
SELECT count(*) AS all_plans FROM flowella.plans \gset
SELECT count(*) AS all_audit FROM flowella.audit_records \gset
SELECT count(*) AS a_audit FROM flowella.audit_records WHERE org_id = :'org_a' \gset
SELECT count(*) AS b_audit FROM flowella.audit_records WHERE org_id = :'org_b' \gset
SELECT count(*) AS all_due FROM flowella.rotation_due \gset
SELECT :all_orgs >= 2 AS orgs_exist, :a_audit > 0 AS a_has_audit, :b_audit > 0 AS b_has_audit;

--
-- Manager role reading the tables directly
--

-- With the owner of A as actor: A's org, its 4 members, its 3 keys and its
-- plan; nothing of B.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs,
       (SELECT count(*) FROM flowella.orgs WHERE org_id = :'org_a') AS org_a,
       (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.members WHERE org_id <> :'org_a') AS members_not_a,
       (SELECT count(*) FROM flowella.api_keys) AS keys,
       (SELECT count(*) FROM flowella.api_keys WHERE org_id <> :'org_a') AS keys_not_a,
       (SELECT string_agg(plan, ',') FROM flowella.plans) AS plans;
SELECT label FROM flowella.api_keys ORDER BY label;
-- Asking for B's rows by id finds nothing.
SELECT (SELECT count(*) FROM flowella.orgs WHERE org_id = :'org_b') AS org_b,
       (SELECT count(*) FROM flowella.api_keys WHERE key_id = :'key_b1') AS key_b1,
       (SELECT count(*) FROM flowella.members WHERE user_id = :'owner_b') AS owner_b;
COMMIT;

-- The admin of A sees the same.
BEGIN;
SELECT flowella.set_actor(:'admin_a') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.api_keys) AS keys, (SELECT count(*) FROM flowella.plans) AS plans;
COMMIT;

-- The owner of B sees B only.
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT string_agg(label, ',') FROM flowella.api_keys) AS keys,
       (SELECT string_agg(plan, ',') FROM flowella.plans) AS plans;
COMMIT;

-- Members of A with role user or read_only, a stranger, and no actor at all
-- see nothing in any table.
BEGIN;
SELECT flowella.set_actor(:'user_a') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.api_keys) AS keys, (SELECT count(*) FROM flowella.plans) AS plans;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'readonly_a') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.api_keys) AS keys, (SELECT count(*) FROM flowella.plans) AS plans;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'stranger') \gset
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.api_keys) AS keys, (SELECT count(*) FROM flowella.plans) AS plans;
COMMIT;
SELECT (SELECT count(*) FROM flowella.orgs) AS orgs, (SELECT count(*) FROM flowella.members) AS members,
       (SELECT count(*) FROM flowella.api_keys) AS keys, (SELECT count(*) FROM flowella.plans) AS plans;

-- The actor is gone once the transaction that set it ends.
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
COMMIT;
SELECT count(*) AS keys_after_commit FROM flowella.api_keys;

-- secret_hash is never readable, not by name and not through *.
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT secret_hash FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT * FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(secret_hash) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
-- audit_records is not readable directly (only through the view).
SELECT count(*) FROM flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE

-- The manager writes no table directly, even for the orgs its actor owns:
-- every INSERT, UPDATE, DELETE and TRUNCATE is refused.
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SAVEPOINT s;
INSERT INTO flowella.plans (plan, scopes) VALUES ('sec_hack', ARRAY['messages:read']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
UPDATE flowella.plans SET audit_log = false WHERE plan = 'enterprise';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
DELETE FROM flowella.plans WHERE plan = 'enterprise';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
INSERT INTO flowella.orgs (name, plan) VALUES ('Sec Hack', 'enterprise');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
UPDATE flowella.orgs SET plan = 'enterprise' WHERE org_id = :'org_a';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
DELETE FROM flowella.orgs WHERE org_id = :'org_a';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
INSERT INTO flowella.members (org_id, user_id, role) VALUES (:'org_b', :'owner_a', 'owner');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
UPDATE flowella.members SET role = 'owner' WHERE user_id = :'user_a';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
DELETE FROM flowella.members WHERE user_id = :'admin_a';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
VALUES (:'org_a', 'planted', 'flwl_live_SecHack1', digest('planted', 'sha256'), 'live', :'owner_a');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
UPDATE flowella.api_keys SET scopes = NULL WHERE key_id = :'key_a1';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
UPDATE flowella.api_keys SET last_used_at = now() WHERE key_id = :'key_a1';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
DELETE FROM flowella.api_keys WHERE key_id = :'key_a1';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
INSERT INTO flowella.audit_records (org_id, action) VALUES (:'org_a', 'key.created');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
TRUNCATE flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
TRUNCATE flowella.members;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT nextval('flowella.audit_records_event_id_seq');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- Nothing changed.
SELECT (SELECT count(*) FROM flowella.orgs) = :all_orgs AS orgs_same,
       (SELECT count(*) FROM flowella.members) = :all_members AS members_same,
       (SELECT count(*) FROM flowella.api_keys) = :all_keys AS keys_same,
       (SELECT count(*) FROM flowella.plans) = :all_plans AS plans_same,
       (SELECT count(*) FROM flowella.audit_records) = :all_audit AS audit_same,
       (SELECT scopes FROM flowella.api_keys WHERE key_id = :'key_a1') AS a1_scopes,
       (SELECT last_used_at IS NULL FROM flowella.api_keys WHERE key_id = :'key_a1') AS a1_unused,
       (SELECT audit_log FROM flowella.plans WHERE plan = 'enterprise') AS enterprise_audit_log;

--
-- Auditor: every org's keys (without hash), orgs, members, plans and every
-- audit record; no writes.
--
SET ROLE regress_auditor;
SELECT (SELECT count(*) FROM flowella.orgs) = :all_orgs AS all_orgs,
       (SELECT count(*) FROM flowella.members) = :all_members AS all_members,
       (SELECT count(*) FROM flowella.api_keys) = :all_keys AS all_keys,
       (SELECT count(*) FROM flowella.plans) = :all_plans AS all_plans,
       (SELECT count(*) FROM flowella.api_keys WHERE org_id IN (:'org_a', :'org_b')) AS keys_a_b,
       (SELECT count(*) FROM flowella.audit_events) = :all_audit AS all_audit_events,
       (SELECT count(*) FROM flowella.rotation_due) = :all_due AS all_rotation_due;
SELECT secret_hash FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET label = 'x' WHERE key_id = :'key_a1';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.members WHERE org_id = :'org_a';
\echo :LAST_ERROR_SQLSTATE
-- The auditor has no actor function and no key function.
SELECT flowella.set_actor(:'owner_a');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.apikey_list(:'org_a');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.apikey_revoke(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Provisioning admin: reads orgs, members and plans; not keys or audit.
--
SET ROLE regress_admin;
SELECT (SELECT count(*) FROM flowella.orgs) = :all_orgs AS all_orgs,
       (SELECT count(*) FROM flowella.members) = :all_members AS all_members,
       (SELECT count(*) FROM flowella.plans) = :all_plans AS all_plans;
SELECT count(*) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(label) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.audit_events;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.rotation_due;
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.orgs SET name = 'renamed' WHERE org_id = :'org_a';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO flowella.members (org_id, user_id, role) VALUES (:'org_a', :'stranger', 'owner');
\echo :LAST_ERROR_SQLSTATE
-- Nor may it use the key functions, with or without an actor.
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT count(*) FROM flowella.apikey_create(:'org_a', 'by provisioning admin');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT flowella.apikey_revoke(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- A role with no grant: the schema itself is closed.
--
SET ROLE regress_nobody;
-- (errors at parse time quote the statement: only fixed values appear in it)
SELECT count(*) FROM flowella.orgs;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.audit_events;
\echo :LAST_ERROR_SQLSTATE
SELECT code FROM flowella.apikey_verify('flwl_live_0');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.set_actor(:'owner_a');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.apikey_list(:'stranger');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('Nobody Ltd', 'free', :'stranger');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Verifier: verify works, with no table privilege; nothing else does.
--
SET ROLE regress_verifier;
SELECT valid, code, key_id = :'key_a1' AS right_key, org_id = :'org_a' AS right_org, scopes, mode
  FROM flowella.apikey_verify(:'token_a1', 'messages:send');
SELECT count(*) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.orgs;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.audit_events;
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.set_actor(:'owner_a');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.apikey_create(:'org_a', 'by verifier');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.apikey_revoke(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.usage_stats();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Another org's owner on org A's keys: key-addressed calls answer 42704 as
-- for a key that does not exist; org-addressed calls 42501.
--
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SAVEPOINT s;
SELECT flowella.apikey_revoke(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_scopes(:'key_a1', NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) FROM flowella.apikey_replace(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a key id that exists nowhere gives the same answer
SELECT flowella.apikey_revoke('c1000000-0000-4000-8000-00000000dead');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) FROM flowella.apikey_create(:'org_a', 'planted by B');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) FROM flowella.apikey_list(:'org_a');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- and an org that does not exist is refused alike
SELECT count(*) FROM flowella.apikey_list('c1000000-0000-4000-8000-00000000dead');
\echo :LAST_ERROR_SQLSTATE
COMMIT;
-- members of A without a managing role are refused the same way
BEGIN;
SELECT flowella.set_actor(:'user_a') \gset
SAVEPOINT s;
SELECT flowella.apikey_revoke(:'key_a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) FROM flowella.apikey_list(:'org_a');
\echo :LAST_ERROR_SQLSTATE
COMMIT;
RESET ROLE;

-- Nothing changed: A's keys as they were, no key added, no audit record.
SELECT label, scopes, revoked_at IS NULL AS active
  FROM flowella.api_keys WHERE org_id = :'org_a' ORDER BY label;
SELECT (SELECT count(*) FROM flowella.api_keys) = :all_keys AS keys_same,
       (SELECT count(*) FROM flowella.audit_records) = :audit_before AS audit_same;

--
-- The audit view: owners and admins of an org whose plan includes the
-- audit log read its records; others, and managers without actor, none.
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT count(*) = :a_audit AS all_of_a, count(*) FILTER (WHERE org_id <> :'org_a') AS not_a
  FROM flowella.audit_events;
SELECT action, count(*) FROM flowella.audit_events GROUP BY action ORDER BY action;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin_a') \gset
SELECT count(*) = :a_audit AS all_of_a, count(*) FILTER (WHERE org_id <> :'org_a') AS not_a
  FROM flowella.audit_events;
COMMIT;
-- B's plan (pro) has no audit log: its owner reads nothing, though B has records.
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT count(*) AS b_owner_sees FROM flowella.audit_events;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'user_a') \gset
SELECT count(*) AS a_user_sees FROM flowella.audit_events;
COMMIT;
SELECT count(*) AS no_actor_sees FROM flowella.audit_events;
RESET ROLE;
SET ROLE regress_auditor;
SELECT count(*) = :all_audit AS auditor_sees_all,
       count(*) FILTER (WHERE org_id = :'org_b') = :b_audit AS auditor_sees_b
  FROM flowella.audit_events;
RESET ROLE;

-- The plan decides at read time: once B's plan includes the audit log its
-- owner reads B's records, and when it is taken away, no more.
SET ROLE regress_admin;
SELECT flowella.plan_set('sec_audited', ARRAY['messages:read', 'messages:send', 'analytics:read'], true);
RESET ROLE;
-- (there is no API to move an org to another plan; a superuser does it)
UPDATE flowella.orgs SET plan = 'sec_audited' WHERE org_id = :'org_b';
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT count(*) = :b_audit AS b_owner_sees_b, count(*) FILTER (WHERE org_id <> :'org_b') AS not_b
  FROM flowella.audit_events;
COMMIT;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.plan_set('sec_audited', ARRAY['messages:read', 'messages:send', 'analytics:read'], false);
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT count(*) AS b_owner_sees FROM flowella.audit_events;
COMMIT;
RESET ROLE;

--
-- The rotation view filters the same way: the old key of A shows for A's
-- owner and the auditor, not for B's owner nor without actor.
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner_a') \gset
SELECT label FROM flowella.rotation_due ORDER BY label;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner_b') \gset
SELECT count(*) AS b_owner_due FROM flowella.rotation_due;
COMMIT;
SELECT count(*) AS no_actor_due FROM flowella.rotation_due;
RESET ROLE;
SET ROLE regress_auditor;
SELECT count(*) FILTER (WHERE org_id = :'org_a') AS auditor_due_a FROM flowella.rotation_due;
RESET ROLE;
