-- flowella_apikey demo: what the Settings -> API keys screen does, in SQL.
-- Runs in a throwaway cluster (scripts/demo.sh); prints a token once, as the
-- product does.
\pset footer off
\echo '== 1. install, provision a plan and an organisation (as the admin role)'
CREATE EXTENSION flowella_apikey;
CREATE ROLE demo_backend LOGIN;           -- the API backend's login role
GRANT flowella_apikey_manager, flowella_apikey_admin TO demo_backend;
CREATE ROLE demo_api LOGIN;               -- the bearer-token checker
GRANT flowella_apikey_verifier TO demo_api;

SET ROLE demo_backend;
SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], true) \gset
SELECT flowella.org_create('Acme Ltd', 'pro', 'a0000000-0000-4000-8000-000000000001') AS org_id \gset
\echo org :org_id

\echo '== 2. the owner creates a key limited to messages:send (token shown once)'
BEGIN;
SELECT flowella.set_actor('a0000000-0000-4000-8000-000000000001', '203.0.113.7',
                          '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01') \gset
SELECT key_id, token, prefix
  FROM flowella.apikey_create(:'org_id', 'n8n production', ARRAY['messages:send']) \gset
COMMIT;
\echo token  :token
\echo prefix :prefix

\echo '== 3. the API checks a bearer token (as the verifier role)'
SET ROLE demo_api;
SELECT * FROM flowella.apikey_verify(:'token', 'messages:send');
SELECT code FROM flowella.apikey_verify(:'token', 'analytics:read');
SELECT code FROM flowella.apikey_verify('flwl_live_not-a-real-token');

\echo '== 4. the owner allows the key from the office network only, 2 requests a minute'
SET ROLE demo_backend;
BEGIN;
SELECT flowella.set_actor('a0000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_set_policy(:'key_id', ARRAY['203.0.113.0/24']::cidr[], 2) \gset
COMMIT;
SET ROLE demo_api;
-- the API passes the client's address: outside the network -> IP_DENIED (403)
SELECT code, ratelimit_remaining FROM flowella.apikey_verify(:'token', 'messages:send', '198.51.100.20');
-- inside: two requests pass (a backend sends ratelimit_remaining as a
-- remaining-requests header), the third in the same minute is RATE_LIMITED
-- (429, Retry-After from retry_after_ms)
SELECT code, ratelimit_remaining FROM flowella.apikey_verify(:'token', 'messages:send', '203.0.113.20');
SELECT code, ratelimit_remaining FROM flowella.apikey_verify(:'token', 'messages:send', '203.0.113.20');
SELECT code, ratelimit_remaining, retry_after_ms > 0 AS retry_later
  FROM flowella.apikey_verify(:'token', 'messages:send', '203.0.113.20');

\echo '== 5. the owner lists the keys'
SET ROLE demo_backend;
BEGIN;
SELECT flowella.set_actor('a0000000-0000-4000-8000-000000000001') \gset
SELECT label, prefix, scopes, created_by, last_used_at, status, allowed_ips,
       rate_limit_per_minute
  FROM flowella.apikey_list(:'org_id');

\echo '== 6. ... revokes the key'
SELECT flowella.apikey_revoke(:'key_id') IS NOT NULL AS revoked;
COMMIT;

\echo '== 7. the next request with that token is refused'
SET ROLE demo_api;
SELECT valid, code FROM flowella.apikey_verify(:'token');

\echo '== 8. the requests the key served, per client address, scope and answer'
RESET ROLE;
-- (the demo flushes every second; wait until the usage workers wrote them)
DO $$
BEGIN
	FOR i IN 1 .. 1800 LOOP
		EXIT WHEN (SELECT requests_pending = 0 FROM flowella.usage_stats());
		PERFORM pg_sleep(0.1);
	END LOOP;
END $$;
SET ROLE demo_backend;
BEGIN;
SELECT flowella.set_actor('a0000000-0000-4000-8000-000000000001') \gset
SELECT client_ip, scope, code, sum(requests) AS requests
  FROM flowella.apikey_usage(:'key_id')
 GROUP BY client_ip, scope, code ORDER BY client_ip, scope, code;
COMMIT;

\echo '== 9. the audit trail (what the org owner may review on this plan)'
SET ROLE demo_backend;
BEGIN;
SELECT flowella.set_actor('a0000000-0000-4000-8000-000000000001') \gset
SELECT event_id, action, actor_ip, trace_context IS NOT NULL AS traced,
       details ->> 'prefix' AS prefix
  FROM flowella.audit_events ORDER BY event_id;
COMMIT;
RESET ROLE;
\echo '== 10. no table holds the token: only its SHA-256'
SELECT prefix, length(secret_hash) AS hash_bytes FROM flowella.api_keys;
