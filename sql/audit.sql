--
-- The audit trail (SPEC section 8): one record per key create, revoke and
-- scope change and per member role change, written in the changing
-- transaction with the actor, client address and trace context, holding
-- old/new values but never the token or its hash; none for a rolled-back
-- change; append-only even for a superuser; restored rows not re-audited.
--
\set owner  'c3000000-0000-4000-8000-000000000001'
\set admin  'c3000000-0000-4000-8000-000000000002'
\set member 'c3000000-0000-4000-8000-000000000003'
\set tp     '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
\set tp2    '00-11111111111111111111111111111111-2222222222222222-00'

SET ROLE regress_admin;
SELECT flowella.org_create('Audit Ltd', 'enterprise', :'owner') AS org \gset
RESET ROLE;

-- Every record of the org, in event order, without ids or times.
CREATE TEMP VIEW audit_trail AS
  SELECT a.event_id, a.action, a.key_id, a.actor_user_id, a.actor_ip, a.trace_context,
         a.occurred_at, a.details
    FROM flowella.audit_records a
   WHERE a.org_id = :'org';
SELECT max(event_id) AS start_event FROM flowella.audit_records \gset
-- org_create wrote the owner's membership, with no actor set.
SELECT action, actor_user_id IS NULL AS no_actor, details->>'user_id' = :'owner' AS is_owner,
       details->'old_role' AS old_role, details->>'new_role' AS new_role
  FROM audit_trail ORDER BY event_id;

--
-- What each record carries
--

-- The owner creates a key, narrows its scopes, and revokes another key,
-- all in one transaction with client address and trace context.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner', '2001:db8::7', :'tp') \gset
SELECT key_id AS k1, token AS t1, prefix AS p1
  FROM flowella.apikey_create(:'org', 'audited key', ARRAY['messages:send', 'messages:read']) \gset
SELECT key_id AS k2, token AS t2, prefix AS p2
  FROM flowella.apikey_create(:'org', 'doomed key', NULL, 'test', '2999-01-01 00:00:00+00') \gset
SELECT flowella.apikey_set_scopes(:'k1', ARRAY['messages:read']);
SELECT flowella.apikey_revoke(:'k2') AS k2_revoked_at \gset
COMMIT;
RESET ROLE;

-- A provisioning admin, acting for the owner, promotes a member.
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner', '198.51.100.23', :'tp2') \gset
SELECT flowella.member_set(:'org', :'member', 'user');
SELECT flowella.member_set(:'org', :'member', 'admin');
COMMIT;
RESET ROLE;

-- The records, in the order the changes were made, each attributed.
SELECT action, key_id = :'k1' AS is_k1, key_id = :'k2' AS is_k2,
       actor_user_id = :'owner' AS by_owner, actor_ip, trace_context
  FROM audit_trail WHERE event_id > :start_event ORDER BY event_id;

-- key.created: the new key's label, prefix, mode, scopes, expiry, and
-- what it replaces.
SELECT key_id = :'k1' AS is_k1, details->>'label' AS label, details->>'prefix' = :'p1' AS prefix_ok,
       details->>'mode' AS mode, details->'scopes' AS scopes,
       details->'expires_at' AS expires_at, details->'replaces_key_id' AS replaces
  FROM audit_trail WHERE action = 'key.created' AND key_id = :'k1';
SELECT details->>'label' AS label, details->>'prefix' = :'p2' AS prefix_ok, details->>'mode' AS mode,
       details->'scopes' AS scopes,
       (details->>'expires_at')::timestamptz = '2999-01-01 00:00:00+00' AS expires_ok
  FROM audit_trail WHERE action = 'key.created' AND key_id = :'k2';
-- key.scopes_changed: old and new scopes.
SELECT details->>'prefix' = :'p1' AS prefix_ok, details->'old_scopes' AS old_scopes,
       details->'new_scopes' AS new_scopes
  FROM audit_trail WHERE action = 'key.scopes_changed';
-- key.revoked: when and by whom.
SELECT details->>'label' AS label, details->>'prefix' = :'p2' AS prefix_ok,
       (details->>'revoked_at')::timestamptz = :'k2_revoked_at' AS revoked_at_ok,
       details->>'revoked_by' = :'owner' AS revoked_by_ok
  FROM audit_trail WHERE action = 'key.revoked';
-- member.role_changed: the member, old and new role (NULL: not a member).
SELECT details->>'user_id' = :'member' AS is_member, details->'old_role' AS old_role,
       details->>'new_role' AS new_role
  FROM audit_trail WHERE action = 'member.role_changed' AND event_id > :start_event
 ORDER BY event_id;

-- No record holds a token or a hash: not the token, not its secret part,
-- not the SHA-256 in hex or base64, of any key of the org.
SELECT count(*) AS records_checked,
       count(*) FILTER (WHERE strpos(a.details::text, :'t1') > 0
                           OR strpos(a.details::text, :'t2') > 0) AS with_token,
       count(*) FILTER (WHERE strpos(a.details::text, substr(:'t1', 19)) > 0
                           OR strpos(a.details::text, substr(:'t2', 19)) > 0) AS with_secret,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM flowella.api_keys k
            WHERE k.org_id = :'org'
              AND (strpos(a.details::text, encode(k.secret_hash, 'hex')) > 0
                   OR strpos(a.details::text, encode(k.secret_hash, 'base64')) > 0
                   OR strpos(lower(a.details::text), encode(k.secret_hash, 'hex')) > 0))) AS with_hash,
       count(*) FILTER (WHERE a.details ? 'secret_hash' OR a.details ? 'token') AS with_key_names
  FROM audit_trail a;
-- (the hashes checked are those of the tokens above)
SELECT count(*) AS hashes_match
  FROM flowella.api_keys
 WHERE key_id IN (:'k1', :'k2') AND secret_hash IN (digest(:'t1', 'sha256'), digest(:'t2', 'sha256'));

--
-- Rolled back: no record.  Committed: exactly one.
--
SELECT count(*) AS n0 FROM audit_trail \gset
SELECT count(*) AS keys0 FROM flowella.api_keys WHERE org_id = :'org' \gset

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS created FROM flowella.apikey_create(:'org', 'rolled back key');
SELECT flowella.apikey_revoke(:'k1') IS NOT NULL AS revoked;
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k1', NULL);
ROLLBACK;
RESET ROLE;
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_set(:'org', :'member', 'read_only');
ROLLBACK;
RESET ROLE;
-- a change undone by ROLLBACK TO SAVEPOINT leaves nothing either
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SAVEPOINT before_revoke;
SELECT flowella.apikey_revoke(:'k1') IS NOT NULL AS revoked;
ROLLBACK TO SAVEPOINT before_revoke;
COMMIT;
RESET ROLE;
-- so: no record, no key, k1 active with its scopes, the member's role kept
SELECT count(*) - :n0 AS new_records FROM audit_trail;
SELECT count(*) - :keys0 AS new_keys FROM flowella.api_keys WHERE org_id = :'org';
SELECT revoked_at IS NULL AS k1_active, scopes AS k1_scopes FROM flowella.api_keys WHERE key_id = :'k1';
SELECT role FROM flowella.members WHERE org_id = :'org' AND user_id = :'member';

-- Each committed change: exactly one record.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k3 FROM flowella.apikey_create(:'org', 'committed key') \gset
COMMIT;
RESET ROLE;
SELECT count(*) - :n0 AS new_records, count(*) FILTER (WHERE action = 'key.created' AND key_id = :'k3') AS k3_created
  FROM audit_trail;
SELECT count(*) AS n1 FROM audit_trail \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k3', ARRAY['analytics:read']);
COMMIT;
RESET ROLE;
SELECT count(*) - :n1 AS new_records, count(*) FILTER (WHERE action = 'key.scopes_changed' AND key_id = :'k3') AS k3_scopes
  FROM audit_trail;
SELECT count(*) AS n2 FROM audit_trail \gset
-- setting the same scopes again changes nothing and records nothing
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k3', ARRAY['analytics:read']);
COMMIT;
RESET ROLE;
SELECT count(*) - :n2 AS new_records FROM audit_trail;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k3') IS NOT NULL AS revoked;
COMMIT;
-- revoking again returns the first time and records nothing more
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k3') IS NOT NULL AS revoked_again;
COMMIT;
RESET ROLE;
SELECT count(*) - :n2 AS new_records, count(*) FILTER (WHERE action = 'key.revoked' AND key_id = :'k3') AS k3_revoked
  FROM audit_trail;
SELECT count(*) AS n3 FROM audit_trail \gset
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_set(:'org', :'member', 'read_only');
COMMIT;
-- the same role again: no change, no record
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_set(:'org', :'member', 'read_only');
COMMIT;
RESET ROLE;
SELECT count(*) - :n3 AS new_records,
       count(*) FILTER (WHERE action = 'member.role_changed' AND details->>'old_role' = 'admin'
                          AND details->>'new_role' = 'read_only') AS member_change
  FROM audit_trail;

-- A replacement is recorded as a key.created naming the key it replaces.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k4 FROM flowella.apikey_replace(:'k1') \gset
COMMIT;
RESET ROLE;
SELECT action, details->>'replaces_key_id' = :'k1' AS replaces_k1, details->'scopes' AS scopes,
       details->>'label' AS label
  FROM audit_trail WHERE key_id = :'k4';

-- Removing a member is a role change to NULL.
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT flowella.member_remove(:'org', :'member');
COMMIT;
RESET ROLE;
SELECT action, actor_user_id = :'admin' AS by_admin, details->>'user_id' = :'member' AS is_member,
       details->>'old_role' AS old_role, details->'new_role' AS new_role
  FROM audit_trail ORDER BY event_id DESC LIMIT 1;

--
-- event_id strictly increases with every record, in the order written.
--
SELECT count(*) AS records, count(DISTINCT event_id) AS distinct_ids,
       count(*) FILTER (WHERE event_id <= prev_id) AS not_increasing,
       count(*) FILTER (WHERE occurred_at < prev_at) AS out_of_time_order
  FROM (SELECT event_id, occurred_at,
               lag(event_id) OVER (ORDER BY event_id) AS prev_id,
               lag(occurred_at) OVER (ORDER BY event_id) AS prev_at
          FROM audit_trail) s;
SELECT string_agg(action, ', ' ORDER BY event_id) AS actions_in_order FROM audit_trail;
-- a new record gets an id above every existing one
SELECT max(event_id) AS max_before FROM flowella.audit_records \gset
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.member_set(:'org', :'member', 'user');
COMMIT;
RESET ROLE;
SELECT count(*) AS above_max FROM flowella.audit_records WHERE event_id > :max_before;

--
-- Append-only: UPDATE, DELETE and TRUNCATE fail for every role, the
-- superuser included, also in replica mode.
--
SELECT count(*) AS all_before FROM flowella.audit_records \gset
CREATE TEMP TABLE audit_before AS SELECT * FROM flowella.audit_records;
UPDATE flowella.audit_records SET details = '{}' WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.audit_records SET actor_user_id = NULL WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.audit_records WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
SET session_replication_role = replica;
UPDATE flowella.audit_records SET details = '{}' WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM flowella.audit_records WHERE org_id = :'org';
\echo :LAST_ERROR_SQLSTATE
TRUNCATE flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
-- the other roles hold no privilege at all on the table
SET ROLE regress_auditor;
DELETE FROM flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_manager;
UPDATE flowella.audit_records SET details = '{}';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
TRUNCATE flowella.audit_records;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- nothing changed
SELECT count(*) = :all_before AS same_count,
       (SELECT count(*) FROM (SELECT * FROM audit_before EXCEPT SELECT * FROM flowella.audit_records) d) AS changed
  FROM flowella.audit_records;

--
-- Restores and bulk loads are not audited anew; API calls always are.
--
SELECT count(*) AS n4 FROM audit_trail \gset
-- A superuser INSERT with no actor and outside the API (what pg_restore
-- does) writes no record, for a key and for a member.
INSERT INTO flowella.api_keys (key_id, org_id, label, prefix, secret_hash, scopes, mode, created_at, created_by)
VALUES ('c3000000-0000-4000-8000-0000000000e1', :'org', 'restored key', 'flwl_live_AudRest1',
        digest('audit restored key', 'sha256'), ARRAY['messages:read'], 'live',
        now() - interval '1 day', :'owner');
INSERT INTO flowella.members (org_id, user_id, role)
VALUES (:'org', 'c3000000-0000-4000-8000-0000000000e2', 'user');
SELECT count(*) - :n4 AS new_records FROM audit_trail;
SELECT count(*) AS restored_key FROM flowella.api_keys WHERE key_id = 'c3000000-0000-4000-8000-0000000000e1';
-- The same INSERT by a superuser with an actor set is a change, audited.
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
INSERT INTO flowella.api_keys (key_id, org_id, label, prefix, secret_hash, mode, created_by)
VALUES ('c3000000-0000-4000-8000-0000000000e4', :'org', 'hand-made key', 'flwl_live_AudHand1',
        digest('audit hand-made key', 'sha256'), 'live', :'owner');
COMMIT;
SELECT action, actor_user_id = :'owner' AS by_owner FROM audit_trail
 WHERE key_id = 'c3000000-0000-4000-8000-0000000000e4';

-- An API call by a superuser without an actor is audited (actor NULL).
SELECT count(*) AS n5 FROM audit_trail \gset
SELECT flowella.member_set(:'org', 'c3000000-0000-4000-8000-0000000000e2', 'admin');
SELECT count(*) - :n5 AS new_records FROM audit_trail;
SELECT action, actor_user_id IS NULL AS no_actor, details->>'old_role' AS old_role,
       details->>'new_role' AS new_role
  FROM audit_trail ORDER BY event_id DESC LIMIT 1;
-- and a direct UPDATE by a superuser (not an INSERT) is always audited.
UPDATE flowella.api_keys SET revoked_at = now() WHERE key_id = 'c3000000-0000-4000-8000-0000000000e1';
SELECT action, actor_user_id IS NULL AS no_actor FROM audit_trail
 WHERE key_id = 'c3000000-0000-4000-8000-0000000000e1';

--
-- What the owner reads through the view is that same trail (enterprise
-- plan: audit log included).
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS view_records FROM flowella.audit_events WHERE org_id = :'org' \gset
COMMIT;
RESET ROLE;
SELECT count(*) = :view_records AS view_shows_all FROM audit_trail;

--
-- session_replication_role = replica (a superuser's, or a role's granted
-- SET on it) does not switch auditing off: a create, a scope change, a
-- revoke and a member change each still write their record.
--
SELECT max(event_id) AS n6 FROM audit_trail \gset
SET session_replication_role = replica;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k6 FROM flowella.apikey_create(:'org', 'replica mode key') \gset
SELECT flowella.apikey_set_scopes(:'k6', ARRAY['messages:read']);
SELECT flowella.apikey_revoke(:'k6') IS NOT NULL AS revoked;
SELECT flowella.member_set(:'org', :'member', 'read_only');
COMMIT;
RESET session_replication_role;
SELECT action, key_id IS NOT DISTINCT FROM :'k6'::uuid AS is_k6,
       actor_user_id = :'owner' AS by_owner
  FROM audit_trail WHERE event_id > :n6 ORDER BY event_id;
