--
-- Rotation with overlap (SPEC section 12): apikey_replace with a grace
-- period moves the old key's expiry to least(expires_at, now() + grace),
-- audited as key.expiry_changed; the replacement copies scopes, mode and
-- policy and its key.created record names the key it replaces; the guard
-- lets a direct write move an expiry earlier only.
--
\set owner    'b9000000-0000-4000-8000-000000000001'
\set other    'b9000000-0000-4000-8000-000000000006'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

SET ROLE regress_admin;
SELECT flowella.plan_set('rotation_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
SELECT flowella.org_create('Rotation Ltd', 'rotation_plan', :'owner') AS org \gset
RESET ROLE;

-- Keys to rotate: one without expiry and with a policy, one expiring in a
-- day, one revoked, and spares for the error cases.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k1, token AS t1, prefix AS p1
  FROM flowella.apikey_create(:'org', 'rotate me', ARRAY['messages:send'], 'test') \gset
SELECT flowella.apikey_set_policy(:'k1', ARRAY['198.51.100.0/24']::cidr[], 600);
SELECT key_id AS k2, token AS t2
  FROM flowella.apikey_create(:'org', 'expires soon', NULL, 'live',
                              now() + interval '1 day') \gset
SELECT key_id AS k3, token AS t3 FROM flowella.apikey_create(:'org', 'zero grace') \gset
SELECT key_id AS kr FROM flowella.apikey_create(:'org', 'revoked') \gset
SELECT flowella.apikey_revoke(:'kr') IS NOT NULL AS revoked;
SELECT key_id AS ke FROM flowella.apikey_create(:'org', 'errors') \gset
COMMIT;
RESET ROLE;

--
-- A 30-day overlap
--

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner', '192.0.2.12', :'tp') \gset
SELECT key_id AS n1, token AS nt1, prefix AS np1 FROM flowella.apikey_replace(:'k1', interval '30 days') \gset
-- The old key now expires 30 days from the start of this transaction.
SELECT expires_at = now() + interval '30 days' AS thirty_days FROM flowella.api_keys WHERE key_id = :'k1';
COMMIT;
RESET ROLE;

-- The new key has the old one's org, label, scopes, mode and policy, no
-- expiry (the old had none) and names the key it replaces.
SELECT key_id = :'n1' AS is_new, label, scopes, mode, allowed_ips, rate_limit_per_minute,
       replaces_key_id = :'k1' AS replaces_k1, expires_at IS NULL AS never_expires,
       revoked_at IS NULL AS active
  FROM flowella.api_keys WHERE key_id IN (:'k1', :'n1') ORDER BY is_new;

-- Records: key.created for the new key naming the replaced key and its
-- policy, then key.expiry_changed for the old key with old and new expiry.
SELECT action, key_id = :'n1' AS new_key, actor_user_id = :'owner' AS by_owner, actor_ip,
       trace_context = :'tp' AS traced,
       (details->>'replaces_key_id')::uuid = :'k1' AS d_replaces_k1,
       details->'allowed_ips' AS d_ips, details->'rate_limit_per_minute' AS d_limit,
       details->'old_expires_at' AS d_old_expiry,
       (details->>'new_expires_at')::timestamptz =
         (SELECT expires_at FROM flowella.api_keys WHERE key_id = :'k1') AS d_new_expiry_ok,
       details->>'prefix' = CASE WHEN key_id = :'k1' THEN :'p1' ELSE :'np1' END AS d_prefix_ok
  FROM flowella.audit_records WHERE key_id IN (:'k1', :'n1') AND action <> 'key.policy_changed'
 ORDER BY event_id;

-- Both keys work during the overlap, with the same policy.
SET ROLE regress_verifier;
SELECT key_id = :'k1' AS old, code FROM flowella.apikey_verify(:'t1', 'messages:send', '198.51.100.1');
SELECT key_id = :'n1' AS new, code FROM flowella.apikey_verify(:'nt1', 'messages:send', '198.51.100.1');
SELECT code FROM flowella.apikey_verify(:'nt1', 'messages:send', '192.0.2.1');
RESET ROLE;

--
-- least(): an earlier existing expiry is kept
--

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT expires_at AS k2_expiry FROM flowella.api_keys WHERE key_id = :'k2' \gset
SELECT key_id AS n2 FROM flowella.apikey_replace(:'k2', interval '7 days') \gset
COMMIT;
RESET ROLE;
SELECT expires_at = :'k2_expiry' AS expiry_kept FROM flowella.api_keys WHERE key_id = :'k2';
SELECT count(*) AS expiry_records FROM flowella.audit_records
 WHERE key_id = :'k2' AND action = 'key.expiry_changed';
-- ... while a grace shorter than what is left moves it earlier.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n2b FROM flowella.apikey_replace(:'k2', interval '1 hour') \gset
SELECT expires_at = now() + interval '1 hour' AS one_hour FROM flowella.api_keys WHERE key_id = :'k2';
COMMIT;
RESET ROLE;
SELECT (details->>'old_expires_at')::timestamptz = :'k2_expiry' AS d_old_ok,
       (details->>'new_expires_at')::timestamptz < :'k2_expiry' AS d_new_earlier
  FROM flowella.audit_records WHERE key_id = :'k2' AND action = 'key.expiry_changed';

--
-- Grace 0: the old key is EXPIRED at once, the new one VALID
--

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS n3, token AS nt3 FROM flowella.apikey_replace(:'k3', interval '0') \gset
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT code FROM flowella.apikey_verify(:'t3');
SELECT code FROM flowella.apikey_verify(:'nt3');
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, status FROM flowella.apikey_list(:'org') WHERE label = 'zero grace' ORDER BY status;
COMMIT;
RESET ROLE;

-- A revoked key is replaced, but stays as it was when revoked: no expiry
-- change, no record.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id IS NOT NULL AS replaced FROM flowella.apikey_replace(:'kr', interval '1 day');
COMMIT;
RESET ROLE;
SELECT expires_at IS NULL AS no_expiry FROM flowella.api_keys WHERE key_id = :'kr';

-- NULL grace, and the one-argument form of 1.1: the old key is left as it is.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id IS NOT NULL AS replaced FROM flowella.apikey_replace(:'ke', NULL);
SELECT key_id IS NOT NULL AS replaced FROM flowella.apikey_replace(:'ke');
COMMIT;
RESET ROLE;
SELECT expires_at IS NULL AS no_expiry FROM flowella.api_keys WHERE key_id = :'ke';

--
-- Errors: a grace over 30 days or negative
--

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SAVEPOINT s;
SELECT key_id FROM flowella.apikey_replace(:'ke', interval '30 days 1 second');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT key_id FROM flowella.apikey_replace(:'ke', interval '2 months');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT key_id FROM flowella.apikey_replace(:'ke', interval '-1 second');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT key_id FROM flowella.apikey_replace(:'ke', interval '1 day -25 hours');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT key_id FROM flowella.apikey_replace(:'ke', interval '178000000 years');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
-- nothing was created or changed: only the two replacements above exist
SELECT count(*) AS keys_replacing_ke FROM flowella.api_keys WHERE replaces_key_id = :'ke';
SELECT expires_at IS NULL AS no_expiry FROM flowella.api_keys WHERE key_id = :'ke';

--
-- The guard: a direct write may move an expiry earlier, never later or away
--

SELECT expires_at AS k1_expiry FROM flowella.api_keys WHERE key_id = :'k1' \gset
UPDATE flowella.api_keys SET expires_at = expires_at + interval '1 day' WHERE key_id = :'k1';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET expires_at = NULL WHERE key_id = :'k1';
\echo :LAST_ERROR_SQLSTATE
UPDATE flowella.api_keys SET expires_at = expires_at - interval '1 day' WHERE key_id = :'k1';
SELECT expires_at = :'k1_expiry'::timestamptz - interval '1 day' AS shortened
  FROM flowella.api_keys WHERE key_id = :'k1';
SELECT action, actor_user_id IS NULL AS no_actor FROM flowella.audit_records
 WHERE key_id = :'k1' ORDER BY event_id DESC LIMIT 1;
-- A key without expiry may be given one; a revoked key's expiry is frozen.
UPDATE flowella.api_keys SET expires_at = now() + interval '1 year' WHERE key_id = :'ke';
UPDATE flowella.api_keys SET expires_at = now() + interval '1 year' WHERE key_id = :'kr';
\echo :LAST_ERROR_SQLSTATE
