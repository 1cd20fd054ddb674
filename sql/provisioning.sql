--
-- Provisioning (SPEC sections 2, 5 and 8): plan_set, org_create,
-- member_set and member_remove; their validation, who may call them, and
-- the member.role_changed audit records they write.
--
\set owner    'b2000000-0000-4000-8000-000000000001'
\set owner2   'b2000000-0000-4000-8000-000000000002'
\set u1       'b2000000-0000-4000-8000-000000000003'
\set u2       'b2000000-0000-4000-8000-000000000004'
\set opsadmin 'b2000000-0000-4000-8000-000000000005'
\set nosuch   'b2000000-0000-4000-8000-0000000000ff'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

-- Names for the uuids above, so that results never print a uuid.
CREATE TABLE regress_prov_people (name text, id uuid);
INSERT INTO regress_prov_people VALUES
	('owner', :'owner'), ('owner2', :'owner2'), ('u1', :'u1'), ('u2', :'u2'),
	('opsadmin', :'opsadmin');
CREATE FUNCTION regress_prov_who(uuid) RETURNS text LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT name FROM regress_prov_people WHERE id = $1),
					CASE WHEN $1 IS NULL THEN NULL ELSE 'unknown' END)
$$;

--
-- plan_set
--

-- Creating a plan stores its scopes sorted and without duplicates.
SET ROLE regress_admin;
SELECT flowella.plan_set('prov_basic', ARRAY['zeta:write', 'alpha:read', 'zeta:write', 'alpha:read'], false);
RESET ROLE;
SELECT plan, scopes, audit_log FROM flowella.plans WHERE plan = 'prov_basic';

-- Updating it replaces scopes and the audit flag; still one row.
SET ROLE regress_admin;
SELECT flowella.plan_set('prov_basic', ARRAY['messages:send', 'alpha:read', 'a.b-c_d:e1'], true) \gset
RESET ROLE;
SELECT plan, scopes, audit_log, count(*) OVER () AS rows
  FROM flowella.plans WHERE plan = 'prov_basic';

-- An empty scope list is allowed (a plan without API access); a 63-character
-- name is the longest accepted; digits, "_" and "-" after the first letter.
SET ROLE regress_admin;
SELECT flowella.plan_set('prov_empty', '{}', false) \gset
SELECT flowella.plan_set(repeat('p', 63), ARRAY['messages:read'], false) \gset
SELECT flowella.plan_set('prov-2_x', ARRAY['messages:read'], false) \gset
RESET ROLE;
SELECT length(plan) AS name_len, scopes, audit_log FROM flowella.plans
 WHERE plan IN ('prov_empty', repeat('p', 63), 'prov-2_x') ORDER BY plan;

-- Validation: 22023 naming the field, with a detail; nothing is stored.
SELECT count(*) AS plans_before FROM flowella.plans \gset
SET ROLE regress_admin;
-- NULL arguments
SELECT flowella.plan_set(NULL, ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', NULL, false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages:read'], NULL);
\echo :LAST_ERROR_SQLSTATE
-- bad plan names: upper case, a space, empty, 64 characters, a leading
-- digit, a dot, a quote
SELECT flowella.plan_set('Pro', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('my plan', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set(repeat('p', 64), ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('1pro', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('pro.v2', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('pro''; DROP TABLE flowella.plans; --', ARRAY['messages:read'], false);
\echo :LAST_ERROR_SQLSTATE
-- bad scope names: upper case, a space, an empty segment ("::", trailing
-- or leading ":"), empty, over 64 characters, an injection attempt (all
-- bad ones named, the good one not)
SELECT flowella.plan_set('prov_bad', ARRAY['Messages:Read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages::read'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages:'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY[':messages'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY[''], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY[repeat('s', 65)], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages:read', 'x''; DROP TABLE flowella.api_keys; --'], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY['messages:read', 'Bad', 'also bad', 'x::y'], false);
\echo :LAST_ERROR_SQLSTATE
-- a NULL element, a two-dimensional array
SELECT flowella.plan_set('prov_bad', ARRAY['messages:read', NULL], false);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('prov_bad', ARRAY[['messages:read', 'messages:send']], false);
\echo :LAST_ERROR_SQLSTATE
-- a bad update leaves the existing plan as it was
SELECT flowella.plan_set('prov_basic', ARRAY['BAD'], false);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT count(*) - :plans_before AS new_plans, count(*) FILTER (WHERE plan = 'prov_bad') AS prov_bad
  FROM flowella.plans;
SELECT scopes, audit_log FROM flowella.plans WHERE plan = 'prov_basic';
SELECT count(*) AS api_keys_table_still_there FROM flowella.api_keys WHERE false;

--
-- org_create
--

-- Returns the new org's id; the owner becomes a member with role owner, and
-- that is audited as member.role_changed (old_role NULL), with no actor
-- when none was set...
SET ROLE regress_admin;
SELECT flowella.org_create('Provisioning Ltd', 'pro', :'owner') AS org \gset
RESET ROLE;
SELECT pg_typeof(:'org'::uuid) AS id_type, name, plan FROM flowella.orgs WHERE org_id = :'org';
SELECT regress_prov_who(user_id) AS who, role FROM flowella.members WHERE org_id = :'org';
SELECT action, key_id IS NULL AS no_key, regress_prov_who((details->>'user_id')::uuid) AS who,
       details->'old_role' AS old_role, details->>'new_role' AS new_role,
       actor_user_id IS NULL AS no_actor, actor_ip, trace_context
  FROM flowella.audit_records WHERE org_id = :'org' ORDER BY event_id;

-- ... and with the actor, address and trace context when set_actor was
-- called in the transaction.
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'opsadmin', '192.0.2.10', :'tp') \gset
SELECT flowella.org_create('Attributed Ltd', 'enterprise', :'owner2') AS org2 \gset
COMMIT;
RESET ROLE;
SELECT action, regress_prov_who((details->>'user_id')::uuid) AS who, details->>'new_role' AS new_role,
       regress_prov_who(actor_user_id) AS actor, actor_ip, trace_context = :'tp' AS traced
  FROM flowella.audit_records WHERE org_id = :'org2' ORDER BY event_id;

-- A rolled-back org_create leaves no org, member or audit record.
SELECT count(*) AS orgs_before FROM flowella.orgs \gset
SELECT count(*) AS members_before FROM flowella.members \gset
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_admin;
BEGIN;
SELECT flowella.org_create('Rolled Back Ltd', 'pro', :'u1') AS gone \gset
ROLLBACK;
RESET ROLE;
SELECT (SELECT count(*) FROM flowella.orgs) - :orgs_before AS new_orgs,
       (SELECT count(*) FROM flowella.members) - :members_before AS new_members,
       (SELECT count(*) FROM flowella.audit_records) - :audit_before AS new_records,
       (SELECT count(*) FROM flowella.orgs WHERE org_id = :'gone') AS rolled_back_org;

-- Validation: 22023 and nothing is created.
SET ROLE regress_admin;
-- unknown plan, NULL plan, a plan name in the wrong case
SELECT flowella.org_create('No Plan Ltd', 'platinum', :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('No Plan Ltd', NULL, :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('No Plan Ltd', 'PRO', :'u1');
\echo :LAST_ERROR_SQLSTATE
-- NULL, empty, blank, overlong (101 characters) and control-character names
SELECT flowella.org_create(NULL, 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('', 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('   ', 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create(repeat('n', 101), 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create(E'Tab\tLtd', 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
-- a name holding something token-shaped (a pasted key must not reach a table)
SELECT flowella.org_create('Acme flwl_live_0123456789abcdefghijKLMNOP', 'pro', :'u1');
\echo :LAST_ERROR_SQLSTATE
-- NULL owner
SELECT flowella.org_create('No Owner Ltd', 'pro', NULL);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- a 100-character name is accepted (the boundary)
SET ROLE regress_admin;
SELECT flowella.org_create(repeat('n', 100), 'free', :'u1') AS org100 \gset
RESET ROLE;
SELECT length(name) AS name_len, plan FROM flowella.orgs WHERE org_id = :'org100';
SELECT (SELECT count(*) FROM flowella.orgs) - :orgs_before AS new_orgs,
       (SELECT count(*) FROM flowella.members) - :members_before AS new_members,
       (SELECT count(*) FROM flowella.audit_records) - :audit_before AS new_records;

--
-- member_set
--
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset

-- Adding a member, then changing its role: each is one audit record with
-- old and new role.
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'opsadmin', '192.0.2.10') \gset
SELECT flowella.member_set(:'org', :'u1', 'user') \gset
COMMIT;
SELECT flowella.member_set(:'org', :'u1', 'admin') \gset
SELECT flowella.member_set(:'org', :'u2', 'read_only') \gset
RESET ROLE;
SELECT regress_prov_who(user_id) AS who, role FROM flowella.members
 WHERE org_id = :'org' ORDER BY who;
SELECT action, regress_prov_who((details->>'user_id')::uuid) AS who,
       details->>'old_role' AS old_role, details->>'new_role' AS new_role,
       regress_prov_who(actor_user_id) AS actor, actor_ip
  FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET :audit_before;

-- Setting the role a member already has changes nothing: no record, the
-- row's updated_at stays.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SELECT updated_at AS u1_updated FROM flowella.members WHERE org_id = :'org' AND user_id = :'u1' \gset
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'u1', 'admin');
RESET ROLE;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';
SELECT role, updated_at = :'u1_updated' AS unchanged
  FROM flowella.members WHERE org_id = :'org' AND user_id = :'u1';

-- Validation and unknown orgs; nothing changes.
SELECT count(*) AS members_before FROM flowella.members WHERE org_id = :'org' \gset
SET ROLE regress_admin;
-- unknown roles (the check is exact: no case folding, no spaces)
SELECT flowella.member_set(:'org', :'u2', 'superuser');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', 'Owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', 'admin ');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', '');
\echo :LAST_ERROR_SQLSTATE
-- NULL arguments
SELECT flowella.member_set(NULL, :'u2', 'user');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', NULL, 'user');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', NULL);
\echo :LAST_ERROR_SQLSTATE
-- an org that does not exist
SELECT flowella.member_set(:'nosuch', :'u2', 'user');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT count(*) - :members_before AS new_members,
       (SELECT role FROM flowella.members WHERE org_id = :'org' AND user_id = :'u2') AS u2_role
  FROM flowella.members WHERE org_id = :'org';
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';
SELECT count(*) AS members_of_nosuch FROM flowella.members WHERE org_id = :'nosuch';

-- The last owner can be neither demoted nor removed (55000); nothing changes.
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'owner', 'admin');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'owner', 'read_only');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'org', :'owner');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT regress_prov_who(user_id) AS who, role FROM flowella.members
 WHERE org_id = :'org' ORDER BY who;
SELECT count(*) - :audit_before AS new_records FROM flowella.audit_records WHERE org_id = :'org';

-- With a second owner, one of them can be demoted; then the remaining one
-- is the last owner again.
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'owner2', 'owner') \gset
SELECT flowella.member_set(:'org', :'owner', 'admin') \gset
SELECT flowella.member_set(:'org', :'owner2', 'user');
\echo :LAST_ERROR_SQLSTATE
-- promoting back to owner is always allowed
SELECT flowella.member_set(:'org', :'owner', 'owner') \gset
RESET ROLE;
SELECT regress_prov_who(user_id) AS who, role FROM flowella.members
 WHERE org_id = :'org' ORDER BY who;
SELECT regress_prov_who((details->>'user_id')::uuid) AS who,
       details->>'old_role' AS old_role, details->>'new_role' AS new_role,
       actor_user_id IS NULL AS no_actor
  FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET :audit_before;

--
-- member_remove
--

-- Removing a member works and is audited (new_role NULL), with the actor.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'opsadmin', NULL, :'tp') \gset
SELECT flowella.member_remove(:'org', :'u2');
COMMIT;
RESET ROLE;
SELECT count(*) AS u2_rows FROM flowella.members WHERE org_id = :'org' AND user_id = :'u2';
SELECT action, regress_prov_who((details->>'user_id')::uuid) AS who,
       details->>'old_role' AS old_role, details->'new_role' AS new_role,
       regress_prov_who(actor_user_id) AS actor, trace_context = :'tp' AS traced
  FROM flowella.audit_records WHERE org_id = :'org'
 ORDER BY event_id OFFSET :audit_before;

-- Errors: a non-member (u2, just removed) and an unknown org are 42704;
-- NULL arguments 22023.  Nothing changes.
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SELECT count(*) AS members_before FROM flowella.members WHERE org_id = :'org' \gset
SET ROLE regress_admin;
SELECT flowella.member_remove(:'org', :'u2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'nosuch', :'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(NULL, :'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'org', NULL);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT (SELECT count(*) FROM flowella.members WHERE org_id = :'org') - :members_before AS member_change,
       (SELECT count(*) FROM flowella.audit_records WHERE org_id = :'org') - :audit_before AS new_records;

-- A key belongs to the org, not to its creator: it survives the creator's
-- removal and is still listed and valid.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'u1') \gset
SELECT key_id AS k, token AS tok FROM flowella.apikey_create(:'org', 'made by u1') \gset
COMMIT;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.member_remove(:'org', :'u1') \gset
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, status, created_by = :'u1' AS created_by_u1
  FROM flowella.apikey_list(:'org');
COMMIT;
-- the removed member no longer manages the org
BEGIN;
SELECT flowella.set_actor(:'u1') \gset
SELECT count(*) FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_verifier;
SELECT valid, code FROM flowella.apikey_verify(:'tok');
RESET ROLE;

--
-- Only the admin role provisions: the manager, verifier, auditor and a
-- role without grants get 42501 (with or without an actor), and nothing
-- changes.
--
SELECT count(*) AS orgs_before FROM flowella.orgs \gset
SELECT count(*) AS members_before FROM flowella.members \gset
SELECT count(*) AS plans_before FROM flowella.plans \gset
SELECT count(*) AS audit_before FROM flowella.audit_records \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.org_create('Manager Ltd', 'pro', :'owner');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_set(:'org', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_remove(:'org', :'owner2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.plan_set('pro', ARRAY['channels:manage'], true);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_verifier;
SELECT flowella.org_create('Verifier Ltd', 'pro', :'u2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'org', :'owner2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('pro', ARRAY['channels:manage'], true);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_auditor;
SELECT flowella.org_create('Auditor Ltd', 'pro', :'u2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('pro', ARRAY['channels:manage'], true);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_nobody;
SELECT flowella.org_create('Nobody Ltd', 'pro', :'u2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'nosuch', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'nosuch', :'owner2');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('pro', ARRAY['channels:manage'], true);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- nor can they write the tables directly
SET ROLE regress_manager;
INSERT INTO flowella.members VALUES (:'org', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
INSERT INTO flowella.members VALUES (:'org', :'u2', 'owner');
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.plans SET scopes = '{}' WHERE plan = 'pro';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT (SELECT count(*) FROM flowella.orgs) - :orgs_before AS new_orgs,
       (SELECT count(*) FROM flowella.members) - :members_before AS member_change,
       (SELECT count(*) FROM flowella.plans) - :plans_before AS new_plans,
       (SELECT count(*) FROM flowella.audit_records) - :audit_before AS new_records;
SELECT scopes FROM flowella.plans WHERE plan = 'pro';

DROP FUNCTION regress_prov_who(uuid);
DROP TABLE regress_prov_people;
