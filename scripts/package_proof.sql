-- The package proof (scripts/package.sh): in a throwaway cluster started
-- with the installed library preloaded, create the extension from the
-- installed files, make a key as an organisation's owner, verify it as the
-- API does, revoke it, verify again.  Prints name=value lines, compared
-- with what scripts/package.sh expects; never the token.
\set ON_ERROR_STOP 1
\pset tuples_only on
\pset format unaligned
CREATE EXTENSION flowella_apikey;
SELECT 'extversion=' || extversion FROM pg_catalog.pg_extension
 WHERE extname = 'flowella_apikey';
SELECT 'preloaded=' || current_setting('shared_preload_libraries');
-- the library the server has loaded, for package.sh to check against the
-- package's file list
SELECT split_part(pg_catalog.pg_read_file('postmaster.pid'), E'\n', 1) AS postmaster_pid \gset
\echo postmaster_pid=:postmaster_pid

CREATE ROLE package_backend;            -- the backend's login role
GRANT flowella_apikey_manager, flowella_apikey_admin TO package_backend;
CREATE ROLE package_api;                -- the bearer-token checker
GRANT flowella_apikey_verifier TO package_api;

SET ROLE package_backend;
SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], false) \gset
SELECT flowella.org_create('Package Proof Ltd', 'pro',
                           'b0000000-0000-4000-8000-000000000001') AS org_id \gset
BEGIN;
SELECT flowella.set_actor('b0000000-0000-4000-8000-000000000001') \gset
SELECT key_id, token, prefix
  FROM flowella.apikey_create(:'org_id', 'package proof', ARRAY['messages:send']) \gset
COMMIT;
SELECT 'token_shape=' || (:'token' ~ '^flwl_live_[0-9A-Za-z]{46}$'
                          AND left(:'token', 18) = :'prefix');

SET ROLE package_api;
SELECT 'verify=' || code || ',' || valid::text
  FROM flowella.apikey_verify(:'token', 'messages:send');
SELECT 'verify_scope=' || code FROM flowella.apikey_verify(:'token', 'messages:read');
SELECT 'verify_garbage=' || code FROM flowella.apikey_verify('flwl_live_not-a-token');

SET ROLE package_backend;
BEGIN;
SELECT flowella.set_actor('b0000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_revoke(:'key_id') IS NOT NULL AS revoked \gset
COMMIT;
SET ROLE package_api;
SELECT 'verify_revoked=' || code FROM flowella.apikey_verify(:'token', 'messages:send');
RESET ROLE;
SELECT 'audit=' || string_agg(action, ',' ORDER BY event_id)
  FROM flowella.audit_events WHERE org_id = :'org_id';
