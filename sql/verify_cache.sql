--
-- The key cache of apikey_verify: a backend keeps the rows of the keys it
-- verified, so that verifying one again reads no table (the prefix index
-- is not scanned).  Every change of a column verify reads drops the row
-- from every backend's cache at commit, and at once in the changing
-- session: the answers below come right after each change, whoever makes
-- it and however (the API, a direct UPDATE, with session_replication_role
-- = replica).  With its guard or audit trigger not enabled ALWAYS the cache
-- is not used; flowella.verify_cache_keys = 0 turns it off.
-- revoke_verify.spec checks the same across sessions.
--
\set owner 'ca000000-0000-4000-8000-000000000001'

-- An analyze of the keys table invalidates it, and so empties the caches:
-- none while the scans are counted.
ALTER TABLE flowella.api_keys SET (autovacuum_enabled = off);

SET ROLE regress_admin;
SELECT flowella.plan_set('cache_plan', ARRAY['messages:send', 'messages:read'], false);
SELECT flowella.org_create('Cache Ltd', 'cache_plan', :'owner') AS org \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k1, token AS t1 FROM flowella.apikey_create(:'org', 'cached one', ARRAY['messages:send']) \gset
SELECT key_id AS k2, token AS t2 FROM flowella.apikey_create(:'org', 'cached two') \gset
SELECT key_id AS k3, token AS t3 FROM flowella.apikey_create(:'org', 'cached three') \gset
SELECT key_id AS k4, token AS t4 FROM flowella.apikey_create(:'org', 'cached four') \gset
COMMIT;
RESET ROLE;

-- Scans of the prefix index by this backend's current transaction.
CREATE FUNCTION regress_prefix_scans() RETURNS bigint
LANGUAGE sql AS $$
	SELECT pg_stat_get_xact_numscans('flowella.api_keys_prefix_key'::regclass)
$$;

-- Verify the key three times in one transaction: how many prefix-index
-- scans that took, and the answers.
CREATE FUNCTION regress_verify_thrice(token text, scope text, ip inet DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	before bigint := regress_prefix_scans();
	codes text := '';
	c text;
BEGIN
	FOR i IN 1 .. 3 LOOP
		SELECT v.code INTO c FROM flowella.apikey_verify(token, scope, ip) v;
		codes := codes || c || ' ';
	END LOOP;
	RETURN codes || '/ ' || (regress_prefix_scans() - before) || ' scans';
END
$$;

--
-- Cached: the first verify reads the row, the next ones do not.  A token
-- with a known prefix and another secret is NOT_FOUND from the cache too.
--
SELECT regress_verify_thrice(:'t1', 'messages:send') AS first_calls;
SELECT regress_verify_thrice(:'t1', 'messages:send') AS cached;
SELECT left(:'t1', 18) || repeat('A', 32) AS head \gset
SELECT regress_verify_thrice(:'head' || regress_checksum(:'head'), 'messages:send')
       AS wrong_secret_same_prefix;
-- an unknown prefix is never cached
SELECT 'flwl_live_ZZZZZZZZ' || repeat('B', 32) AS head \gset
SELECT regress_verify_thrice(:'head' || regress_checksum(:'head'), NULL) AS unknown_prefix;

--
-- Changes through the API, each seen by the next verify (in the same
-- transaction, too).
--
BEGIN;
SET LOCAL ROLE regress_manager;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_set_scopes(:'k1', ARRAY['messages:read']);
SET LOCAL ROLE regress_verifier;
SELECT regress_verify_thrice(:'t1', 'messages:send') AS scopes_narrowed;
SET LOCAL ROLE regress_manager;
SELECT flowella.apikey_set_policy(:'k1', ARRAY['192.0.2.0/24']::cidr[], NULL);
SET LOCAL ROLE regress_verifier;
SELECT regress_verify_thrice(:'t1', 'messages:read', '198.51.100.1') AS allowlist_set;
SELECT regress_verify_thrice(:'t1', 'messages:read', '192.0.2.1') AS allowlisted_address;
SET LOCAL ROLE regress_manager;
SELECT flowella.apikey_set_policy(:'k1', NULL, 2);
SET LOCAL ROLE regress_verifier;
SELECT regress_verify_thrice(:'t1', 'messages:read') AS rate_limited_to_2;
ROLLBACK;
-- the rollback undid them: the row is read again, as it was
SELECT regress_verify_thrice(:'t1', 'messages:send') AS after_rollback;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS replaced FROM flowella.apikey_replace(:'k2', interval '0');
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k1') IS NOT NULL AS revoked;
COMMIT;
RESET ROLE;
SELECT regress_verify_thrice(:'t2', NULL) AS expired_by_replace;
SELECT regress_verify_thrice(:'t1', 'messages:send') AS revoked;

--
-- Direct writes by the table's owner: an earlier expiry, and one with
-- session_replication_role = replica (the triggers fire: ALWAYS).
--
SELECT regress_verify_thrice(:'t3', NULL) AS before_direct_write;
UPDATE flowella.api_keys SET expires_at = now() WHERE key_id = :'k3';
SELECT regress_verify_thrice(:'t3', NULL) AS after_direct_write;
SELECT regress_verify_thrice(:'t4', NULL) AS before_replica_write;
SET session_replication_role = replica;
UPDATE flowella.api_keys SET revoked_at = now() WHERE key_id = :'k4';
RESET session_replication_role;
SELECT regress_verify_thrice(:'t4', NULL) AS after_replica_write;

--
-- Not used when a trigger it relies on is not enabled ALWAYS, nor when
-- flowella.verify_cache_keys is 0 (a superuser's setting); a cache smaller
-- than the keys in use still answers right, and a key it dropped is still
-- in the shared cache (no scan for t5 the third time).
--
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k5, token AS t5 FROM flowella.apikey_create(:'org', 'cached five') \gset
SELECT key_id AS k6, token AS t6 FROM flowella.apikey_create(:'org', 'cached six') \gset
COMMIT;
RESET ROLE;
ALTER TABLE flowella.api_keys ENABLE TRIGGER api_keys_audit_update;
SELECT regress_verify_thrice(:'t5', NULL) AS audit_trigger_not_always;
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_audit_update;
ALTER TABLE flowella.api_keys DISABLE TRIGGER api_keys_guard;
SELECT regress_verify_thrice(:'t5', NULL) AS guard_disabled;
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_guard;
SELECT regress_verify_thrice(:'t5', NULL) AS triggers_back;

SET flowella.verify_cache_keys = 0;
SELECT regress_verify_thrice(:'t5', NULL) AS cache_off;
SET flowella.verify_cache_keys = 1;
SELECT regress_verify_thrice(:'t5', NULL) || ', ' || regress_verify_thrice(:'t6', NULL) ||
       ', ' || regress_verify_thrice(:'t5', NULL) AS one_key_cache;
RESET flowella.verify_cache_keys;
-- only a superuser sets it (it is memory in each backend)
SET ROLE regress_verifier;
SET flowella.verify_cache_keys = 0;
RESET ROLE;

--
-- The shared key cache (the library is preloaded): a new session finds
-- there the keys earlier sessions read.  A transaction that has written
-- (it has an XID) neither reads nor fills it.  A change committed by a
-- session that then ends, and so never reads its own invalidation, is in
-- the next session's answer.
--
\c
SELECT regress_verify_thrice(:'t6', NULL) AS new_session;
BEGIN;
SELECT pg_current_xact_id() IS NOT NULL AS has_xid;
SELECT regress_verify_thrice(:'t5', NULL) AS transaction_with_xid;
ROLLBACK;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k6') IS NOT NULL AS revoked;
COMMIT;
\c
SELECT regress_verify_thrice(:'t6', NULL) AS revoked_then_new_session;

DROP FUNCTION regress_verify_thrice(text, text, inet);
DROP FUNCTION regress_prefix_scans();
ALTER TABLE flowella.api_keys RESET (autovacuum_enabled);
