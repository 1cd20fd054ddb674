--
-- Per-key policy (SPEC section 11): apikey_set_policy and its errors, the
-- key.policy_changed record, apikey_list's policy columns, the IP allowlist
-- in verify (IPv4 and IPv6, NULL address denied, after the scope check),
-- the rate limit's place in the check order, the row CHECK against direct
-- writes, and what a manager reads of the policy columns under RLS.
--
\set owner    'b8000000-0000-4000-8000-000000000001'
\set admin    'b8000000-0000-4000-8000-000000000002'
\set user     'b8000000-0000-4000-8000-000000000003'
\set other    'b8000000-0000-4000-8000-000000000006'
\set nokey    'b8000000-0000-4000-8000-0000000000ff'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

SET ROLE regress_admin;
SELECT flowella.plan_set('policy_plan', ARRAY['messages:send', 'messages:read'], false) \gset
SELECT flowella.org_create('Policy Ltd', 'policy_plan', :'owner') AS org \gset
SELECT flowella.org_create('Policy Other Ltd', 'policy_plan', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k, token AS t FROM flowella.apikey_create(:'org', 'allowlisted') \gset
SELECT key_id AS kl, token AS tl FROM flowella.apikey_create(:'org', 'limited') \gset
SELECT key_id AS kr, token AS tr FROM flowella.apikey_create(:'org', 'to revoke') \gset
SELECT flowella.apikey_revoke(:'kr') IS NOT NULL AS revoked;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT key_id AS ko FROM flowella.apikey_create(:'other_org', 'other org key') \gset
COMMIT;
RESET ROLE;

-- A key without a policy: any address (or none), no rate-limit columns.
SET ROLE regress_verifier;
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'t');
SELECT code, ratelimit_remaining, retry_after_ms
  FROM flowella.apikey_verify(:'t', 'messages:send', '198.51.100.7');
RESET ROLE;

--
-- Setting a policy
--

-- An admin sets an allowlist of an IPv4 and an IPv6 network, no limit.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin', '192.0.2.44', :'tp') \gset
SELECT flowella.apikey_set_policy(:'k', ARRAY['198.51.100.0/24', '2001:db8::/32']::cidr[], NULL);
COMMIT;
RESET ROLE;
SELECT allowed_ips, rate_limit_per_minute FROM flowella.api_keys WHERE key_id = :'k';

-- One key.policy_changed record, attributed, with old and new values.
SELECT action, key_id = :'k' AS is_k, actor_user_id = :'admin' AS by_admin, actor_ip,
       trace_context = :'tp' AS traced, details->'old_allowed_ips' AS old_ips,
       details->'new_allowed_ips' AS new_ips,
       details->'old_rate_limit_per_minute' AS old_limit,
       details->'new_rate_limit_per_minute' AS new_limit,
       details->>'prefix' = (SELECT prefix FROM flowella.api_keys WHERE key_id = :'k') AS prefix_ok
  FROM flowella.audit_records WHERE key_id = :'k' AND action <> 'key.created'
 ORDER BY event_id;

-- Setting the same policy again changes nothing and writes no record.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_policy(:'k', ARRAY['198.51.100.0/24', '2001:db8::/32']::cidr[], NULL);
COMMIT;
RESET ROLE;
SELECT count(*) AS policy_records FROM flowella.audit_records
 WHERE key_id = :'k' AND action = 'key.policy_changed';

-- A rolled-back change leaves neither the change nor a record.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_policy(:'k', NULL, 10);
ROLLBACK;
RESET ROLE;
SELECT allowed_ips, rate_limit_per_minute FROM flowella.api_keys WHERE key_id = :'k';
SELECT count(*) AS policy_records FROM flowella.audit_records
 WHERE key_id = :'k' AND action = 'key.policy_changed';

--
-- The allowlist in verify
--

SET ROLE regress_verifier;
-- IPv4 and IPv6 addresses inside the networks; a network is contained in
-- itself (<<=).
SELECT code, valid FROM flowella.apikey_verify(:'t', 'messages:send', '198.51.100.7');
SELECT code, valid FROM flowella.apikey_verify(:'t', 'messages:send', '198.51.100.0/24');
SELECT code, valid FROM flowella.apikey_verify(:'t', 'messages:send', '2001:db8:1::42');
-- Outside every network, the other family, a wider network: IP_DENIED,
-- with the key's identity and effective scopes.
SELECT code, valid, key_id = :'k' AS is_k, scopes FROM flowella.apikey_verify(:'t', 'messages:send', '198.51.101.7');
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send', '2001:db9::1');
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send', '::ffff:198.51.100.7');
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send', '198.51.0.0/16');
-- No client address (NULL, or the 1.1 forms with one and two arguments) is denied.
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send', NULL);
SELECT code FROM flowella.apikey_verify(:'t', 'messages:send');
SELECT code FROM flowella.apikey_verify(:'t');
-- The scope check comes first: a missing scope from a denied address is
-- INSUFFICIENT_SCOPE, from an allowed one too.
SELECT code FROM flowella.apikey_verify(:'t', 'analytics:read', '203.0.113.1');
SELECT code FROM flowella.apikey_verify(:'t', 'analytics:read', '198.51.100.7');
RESET ROLE;

--
-- The rate limit's place in the check order
--

-- Limit 2 per minute and an allowlist.  Refused requests (scope, address)
-- spend nothing: the two allowed ones pass, with the requests left; the
-- third is RATE_LIMITED with a wait.  A key without a limit has NULLs.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_policy(:'kl', ARRAY['203.0.113.0/24']::cidr[], 2);
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'tl', 'analytics:read', '203.0.113.5');
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'tl', 'messages:send', '192.0.2.1');
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'tl', 'messages:send', '192.0.2.2');
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'tl', 'messages:send', '203.0.113.5');
SELECT code, ratelimit_remaining, retry_after_ms FROM flowella.apikey_verify(:'tl', 'messages:send', '203.0.113.5');
SELECT code, valid, ratelimit_remaining, retry_after_ms > 0 AS must_wait,
       retry_after_ms <= 60000 AS within_a_minute
  FROM flowella.apikey_verify(:'tl', 'messages:send', '203.0.113.5');
RESET ROLE;

-- apikey_list shows the policy after the 1.1 columns.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, status, allowed_ips, rate_limit_per_minute FROM flowella.apikey_list(:'org');
COMMIT;
RESET ROLE;
SELECT proargnames FROM pg_proc WHERE oid = 'flowella.apikey_list(uuid)'::regprocedure;

--
-- Errors
--

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SAVEPOINT s;
-- an empty allowlist (NULL means any address)
SELECT flowella.apikey_set_policy(:'k', ARRAY[]::cidr[], NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a NULL element
SELECT flowella.apikey_set_policy(:'k', ARRAY['198.51.100.0/24', NULL]::cidr[], NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a two-dimensional allowlist
SELECT flowella.apikey_set_policy(:'k', ARRAY[['198.51.100.0/24'], ['2001:db8::/32']]::cidr[], NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- limits out of range: 0, negative, over 1 000 000; the bounds pass
SELECT flowella.apikey_set_policy(:'k', NULL, 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(:'k', NULL, -5);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(:'k', NULL, 1000001);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(:'k', NULL, 1);
SELECT flowella.apikey_set_policy(:'k', NULL, 1000000);
ROLLBACK TO s;
-- a revoked key
SELECT flowella.apikey_set_policy(:'kr', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(:'kr', NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a key that does not exist, another org's key, a NULL key: not found
SELECT flowella.apikey_set_policy(:'nokey', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(:'ko', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT flowella.apikey_set_policy(NULL, NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a member who is neither owner nor admin: not found either
SELECT flowella.set_actor(:'user') \gset
SELECT flowella.apikey_set_policy(:'k', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- no actor
BEGIN;
SELECT flowella.apikey_set_policy(:'k', NULL, 10);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- None of them changed the key or wrote a record.
SELECT allowed_ips, rate_limit_per_minute FROM flowella.api_keys WHERE key_id = :'k';
SELECT count(*) AS policy_records FROM flowella.audit_records
 WHERE action = 'key.policy_changed' AND key_id IN (:'k', :'kr', :'ko');

-- Only the manager role may call it.
SET ROLE regress_verifier;
SELECT flowella.apikey_set_policy(:'k', NULL, 10);
RESET ROLE;

--
-- Direct writes
--

-- The table owner cannot store what the API refuses: the row CHECK names
-- the field and does not print the row.
\set VERBOSITY default
UPDATE flowella.api_keys SET allowed_ips = '{}' WHERE key_id = :'k';
UPDATE flowella.api_keys SET allowed_ips = ARRAY[NULL]::cidr[] WHERE key_id = :'k';
UPDATE flowella.api_keys SET rate_limit_per_minute = 0 WHERE key_id = :'k';
UPDATE flowella.api_keys SET rate_limit_per_minute = 1000001 WHERE key_id = :'k';
-- nor change a revoked key's policy
UPDATE flowella.api_keys SET rate_limit_per_minute = 5 WHERE key_id = :'kr';
-- A valid direct change is audited like an API one (no actor).
UPDATE flowella.api_keys SET rate_limit_per_minute = 500 WHERE key_id = :'k';
SELECT action, actor_user_id IS NULL AS no_actor, details->'old_rate_limit_per_minute' AS old_limit,
       details->'new_rate_limit_per_minute' AS new_limit, details->'new_allowed_ips' AS ips
  FROM flowella.audit_records WHERE key_id = :'k' AND action = 'key.policy_changed'
 ORDER BY event_id DESC LIMIT 1;

--
-- Row-level security on the policy columns
--

-- A manager whose actor owns the org reads its keys' policy; another org's
-- owner, a plain member and no actor see no row of it; the auditor sees all.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, allowed_ips, rate_limit_per_minute FROM flowella.api_keys
 WHERE org_id IN (:'org', :'other_org') ORDER BY label;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT label, allowed_ips, rate_limit_per_minute FROM flowella.api_keys
 WHERE org_id IN (:'org', :'other_org') ORDER BY label;
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT count(*) AS seen FROM flowella.api_keys WHERE org_id IN (:'org', :'other_org');
COMMIT;
SELECT count(*) AS seen FROM flowella.api_keys WHERE org_id IN (:'org', :'other_org');
RESET ROLE;
SET ROLE regress_auditor;
SELECT label, allowed_ips, rate_limit_per_minute FROM flowella.api_keys
 WHERE org_id IN (:'org', :'other_org') ORDER BY label;
RESET ROLE;
