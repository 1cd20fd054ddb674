-- The reference backend's database set-up (examples/backend/), for a
-- throwaway cluster: run.sh and tests/run.sh run it as a superuser with
--   psql -v password="$PGPASSWORD" -f setup.sql
--
-- It makes the two login roles the backend connects as, each granted one
-- extension role and nothing else, and provisions a plan and two
-- organisations with three stub users (the example has no real sign-in).
-- In production the roles have their own passwords, and provisioning is
-- done by your sign-up flow as a role granted flowella_apikey_admin.
\set ON_ERROR_STOP on
CREATE EXTENSION flowella_apikey;

-- Every API request: apikey_verify, nothing else.
CREATE ROLE flowella_example_verifier LOGIN PASSWORD :'password'
	IN ROLE flowella_apikey_verifier;
-- The Settings -> API keys screen: set_actor and the key functions.
CREATE ROLE flowella_example_manager LOGIN PASSWORD :'password'
	IN ROLE flowella_apikey_manager;

-- Provisioning, as the admin role would do it (this role cannot log in).
CREATE ROLE flowella_example_admin IN ROLE flowella_apikey_admin;
SET ROLE flowella_example_admin;
SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], true) \gset
-- The stub users (app.py's STUB_USERS): Olivia owns Acme Ltd, Adam is an
-- admin there and Uma a plain user, who may not manage its keys (403);
-- Uma owns Globex, whose keys Acme's people may not see (404).
SELECT flowella.org_create('Acme Ltd', 'pro', '11111111-1111-4111-8111-111111111111') AS org_id \gset
SELECT flowella.member_set(:'org_id', '22222222-2222-4222-8222-222222222222', 'admin') \gset
SELECT flowella.member_set(:'org_id', '33333333-3333-4333-8333-333333333333', 'user') \gset
SELECT flowella.org_create('Globex', 'pro', '33333333-3333-4333-8333-333333333333') AS globex_id \gset
RESET ROLE;
