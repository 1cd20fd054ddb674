--
-- Hostile environments and input: planted schemas, shadowing functions and
-- operators, NULL in every argument, oversized arrays.  Each gets a clear
-- error or is harmless, and changes nothing.
--
CREATE DATABASE regress_hostile;
\connect regress_hostile

-- A role without privileges plants schema "flowella" before the extension.
CREATE ROLE regress_planter;
GRANT CREATE ON DATABASE regress_hostile TO regress_planter;
SET ROLE regress_planter;
CREATE SCHEMA flowella;
CREATE FUNCTION flowella.label_ok(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
RESET ROLE;
CREATE EXTENSION flowella_apikey;
\echo :LAST_ERROR_SQLSTATE
-- Even emptied, the schema is not accepted while another role owns it.
DROP FUNCTION flowella.label_ok(text);
CREATE EXTENSION flowella_apikey;
\echo :LAST_ERROR_SQLSTATE
-- A superuser's schema must be empty.
ALTER SCHEMA flowella OWNER TO CURRENT_USER;
CREATE TABLE flowella.api_keys_shadow (x int);
CREATE EXTENSION flowella_apikey;
\echo :LAST_ERROR_SQLSTATE
DROP SCHEMA flowella CASCADE;
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'flowella_apikey';

-- Shadowing objects in public, searched before pg_catalog, which would run
-- as the extension owner if anything resolved to them.
CREATE TABLE public.shadow_calls (what text);
GRANT INSERT ON public.shadow_calls TO PUBLIC;
CREATE FUNCTION public.digest(text, text) RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.shadow_calls VALUES ('digest'); RETURN NULL; END $$;
CREATE FUNCTION public.shadow_texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.shadow_calls VALUES ('text ='); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, PROCEDURE = public.shadow_texteq);
CREATE FUNCTION public.shadow_uuideq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.shadow_calls VALUES ('uuid ='); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, PROCEDURE = public.shadow_uuideq);
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.shadow_calls VALUES ('now'); RETURN 'epoch'; END $$;
CREATE FUNCTION public.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.shadow_calls VALUES ('unnest'); END $$;
SET search_path = public, pg_catalog;

CREATE EXTENSION flowella_apikey;
SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], true);
SELECT flowella.org_create('Hostile Ltd', 'pro', 'e7000000-0000-4000-8000-000000000001') AS org \gset
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT key_id, token FROM flowella.apikey_create(:'org', 'shadowed', ARRAY['messages:send']) \gset
SELECT count(*) AS listed FROM flowella.apikey_list(:'org');
SELECT flowella.apikey_set_scopes(:'key_id', ARRAY['messages:read']);
SELECT count(*) AS replaced FROM flowella.apikey_replace(:'key_id');
COMMIT;
SELECT code, scopes FROM flowella.apikey_verify(:'token', 'messages:read');
-- one character changed to the next base62 digit (qualified names: the
-- planted search_path is in force here)
SELECT code FROM flowella.apikey_verify(overlay(:'token' placing
       pg_catalog.translate(pg_catalog.substr(:'token', 30, 1),
                            '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz',
                            '123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0')
       from 30 for 1));
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_revoke(:'key_id') IS NOT NULL AS revoked;
COMMIT;
SELECT code FROM flowella.apikey_verify(:'token');
SELECT count(*) AS audit_records FROM flowella.audit_records;
-- None of the planted objects ran.
SELECT count(*) AS shadow_calls FROM public.shadow_calls;
RESET search_path;

-- NULL in every argument of every function: a clear error or a defined
-- answer, never a crash, and nothing changes.
SELECT count(*) AS keys_before FROM flowella.api_keys \gset
BEGIN;
SELECT flowella.set_actor(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001', NULL, NULL) \gset
SELECT flowella.apikey_create(NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_create(:'org', NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_create(:'org', 'x', NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT count(*) AS created_with_null_scopes_and_expiry
  FROM flowella.apikey_create(:'org', 'nulls', NULL, 'live', NULL);
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_revoke(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_set_scopes(NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_replace(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_list(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT flowella.org_create(NULL, 'pro', 'e7000000-0000-4000-8000-000000000001');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('x', NULL, 'e7000000-0000-4000-8000-000000000001');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.org_create('x', 'pro', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(NULL, NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_set(:'org', 'e7000000-0000-4000-8000-000000000002', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.member_remove(:'org', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set(NULL, '{}', true);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('x', NULL, true);
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.plan_set('x', '{}', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT valid, code FROM flowella.apikey_verify(NULL, NULL);
SELECT valid, code FROM flowella.apikey_verify(:'token', NULL);
SELECT count(*) = :keys_before AS nothing_created FROM flowella.api_keys;

-- 10 000 scopes: refused with a bounded message naming the first ten.
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT flowella.apikey_create(:'org', 'huge',
	ARRAY(SELECT 'scope:' || g FROM generate_series(1, 10000) g));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- ...accepted on a plan that offers them, and verified.
SELECT flowella.plan_set('huge', ARRAY(SELECT 'scope:' || g FROM generate_series(1, 10000) g), false);
SELECT flowella.org_create('Huge Ltd', 'huge', 'e7000000-0000-4000-8000-000000000001') AS huge_org \gset
BEGIN;
SELECT flowella.set_actor('e7000000-0000-4000-8000-000000000001') \gset
SELECT token AS huge_token FROM flowella.apikey_create(:'huge_org', 'huge',
	ARRAY(SELECT 'scope:' || g FROM generate_series(1, 10000) g)) \gset
COMMIT;
SELECT code, cardinality(scopes) FROM flowella.apikey_verify(:'huge_token', 'scope:9999');

\connect contrib_regression
DROP DATABASE regress_hostile;
DROP ROLE regress_planter;
