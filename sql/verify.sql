--
-- apikey_verify (SPEC sections 3 and 5): every answer code, effective
-- scopes (key scopes intersected with the plan's current ones, live), and
-- that no text input makes it raise.  It runs as the verifier role, which
-- holds no table privilege at all.
--

-- t with its last 6 characters replaced by its checksum: well formed
CREATE FUNCTION pg_temp.regress_fix(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT left(t, 50) || regress_checksum(left(t, 50))
$$;
-- t with the character at pos replaced by a different base62 character
CREATE FUNCTION pg_temp.regress_typo(t text, pos int) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
	SELECT overlay(t PLACING CASE WHEN substr(t, pos, 1) = 'Q' THEN 'R' ELSE 'Q' END
				   FROM pos FOR 1)
$$;

\set owner 'a5000000-0000-4000-8000-000000000001'

-- A plan of this file's own, so that changing it affects no other file.
SET ROLE regress_admin;
SELECT flowella.plan_set('verify_plan', ARRAY['messages:send', 'messages:read', 'analytics:read'], false) \gset
SELECT flowella.org_create('Verify Ltd', 'verify_plan', :'owner') AS org \gset
RESET ROLE;

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_all, token AS t_all FROM flowella.apikey_create(:'org', 'inherits') \gset
SELECT key_id AS k_some, token AS t_some
  FROM flowella.apikey_create(:'org', 'some', ARRAY['messages:send', 'analytics:read']) \gset
SELECT key_id AS k_test, token AS t_test
  FROM flowella.apikey_create(:'org', 'test mode', ARRAY['messages:read'], 'test') \gset
SELECT key_id AS k_rev, token AS t_rev FROM flowella.apikey_create(:'org', 'to revoke') \gset
SELECT key_id AS k_late, token AS t_late
  FROM flowella.apikey_create(:'org', 'expires late', NULL, 'live', '2999-01-01 00:00:00+00') \gset
COMMIT;
-- a key made in a transaction that rolled back: its token is well formed
-- but no key has it
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_ghost, token AS t_ghost FROM flowella.apikey_create(:'org', 'ghost') \gset
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k_rev') IS NOT NULL AS revoked;
COMMIT;
RESET ROLE;

-- Well-formed tokens that no key was made for, built from real ones with
-- the checksum recomputed: a changed secret (the prefix exists, the hash
-- does not match), a changed lookup part (unknown prefix), the other mode
-- (unknown prefix), and a changed secret of a revoked key.
SELECT pg_temp.regress_fix(pg_temp.regress_typo(:'t_all', 30)) AS t_bad_secret,
       pg_temp.regress_fix(pg_temp.regress_typo(:'t_all', 12)) AS t_bad_lookup,
       pg_temp.regress_fix(replace(:'t_all', 'flwl_live_', 'flwl_test_')) AS t_other_mode,
       pg_temp.regress_fix(pg_temp.regress_typo(:'t_rev', 40)) AS t_rev_bad_secret \gset
SELECT regress_token_ok(:'t_bad_secret', left(:'t_all', 18)) AS same_prefix_ok,
       regress_token_ok(:'t_bad_lookup', left(:'t_bad_lookup', 18)) AS new_lookup_ok,
       regress_token_ok(:'t_other_mode', left(:'t_other_mode', 18)) AS other_mode_ok,
       :'t_bad_secret' <> :'t_all' AS differs;

--
-- Every answer, as the verifier.
--
SET ROLE regress_verifier;

-- VALID: valid is true, and key, org, effective scopes and mode come back.
-- A key that inherits gets the plan's scopes; the others their own.
SELECT valid, code, key_id = :'k_all' AS is_key, org_id = :'org' AS is_org, scopes, mode
  FROM flowella.apikey_verify(:'t_all');
SELECT valid, code, key_id = :'k_some' AS is_key, org_id = :'org' AS is_org, scopes, mode
  FROM flowella.apikey_verify(:'t_some');
SELECT valid, code, key_id = :'k_test' AS is_key, org_id = :'org' AS is_org, scopes, mode
  FROM flowella.apikey_verify(:'t_test');
SELECT valid, code, key_id = :'k_late' AS is_key, scopes
  FROM flowella.apikey_verify(:'t_late');
-- with a scope the key holds; a NULL required scope asks for none
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t_some', 'messages:send');
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t_all', 'messages:read');
SELECT valid, code FROM flowella.apikey_verify(:'t_some', NULL);

-- INSUFFICIENT_SCOPE: the key is genuine but lacks the scope; valid is
-- false and the effective scopes are shown.  Odd scope strings are just
-- scopes nobody holds.
SELECT valid, code, key_id = :'k_some' AS is_key, scopes
  FROM flowella.apikey_verify(:'t_some', 'messages:read');
SELECT valid, code, scopes FROM flowella.apikey_verify(:'t_all', 'channels:manage');
SELECT valid, code FROM flowella.apikey_verify(:'t_test', 'messages:send');
SELECT valid, code FROM flowella.apikey_verify(:'t_some', '');
SELECT valid, code FROM flowella.apikey_verify(:'t_some', 'MESSAGES:SEND');
SELECT valid, code FROM flowella.apikey_verify(:'t_some', 'messages:send ');
SELECT valid, code FROM flowella.apikey_verify(:'t_some', repeat('a', 1048576));

-- REVOKED: whatever scope is asked for.
SELECT valid, code, key_id = :'k_rev' AS is_key, org_id = :'org' AS is_org
  FROM flowella.apikey_verify(:'t_rev');
SELECT valid, code FROM flowella.apikey_verify(:'t_rev', 'messages:send');
SELECT valid, code FROM flowella.apikey_verify(:'t_rev', 'channels:manage');

-- NOT_FOUND: well formed, but no key has this token.  Nothing about any
-- key comes back, and a wrong secret for a revoked key's prefix does not
-- reveal that the key is revoked.
SELECT valid, code, key_id, org_id, scopes, mode FROM flowella.apikey_verify(:'t_ghost');
SELECT valid, code, key_id, org_id, scopes, mode FROM flowella.apikey_verify(:'t_bad_secret');
SELECT valid, code, key_id, org_id, scopes, mode FROM flowella.apikey_verify(:'t_bad_lookup');
SELECT valid, code, key_id, org_id, scopes, mode FROM flowella.apikey_verify(:'t_other_mode');
SELECT valid, code, key_id, org_id, scopes, mode FROM flowella.apikey_verify(:'t_rev_bad_secret');
SELECT valid, code FROM flowella.apikey_verify(:'t_bad_secret', 'messages:send');
RESET ROLE;

-- EXPIRED: a key valid until a moment ago.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_exp, token AS t_exp
  FROM flowella.apikey_create(:'org', 'short lived', NULL, 'live',
                              clock_timestamp() + interval '2 seconds') \gset
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT valid, code FROM flowella.apikey_verify(:'t_exp');
RESET ROLE;
SELECT pg_sleep_until(expires_at + interval '10 ms')
  FROM flowella.api_keys WHERE key_id = :'k_exp' \gset
SET ROLE regress_verifier;
SELECT valid, code, key_id = :'k_exp' AS is_key, org_id = :'org' AS is_org
  FROM flowella.apikey_verify(:'t_exp');
SELECT valid, code FROM flowella.apikey_verify(:'t_exp', 'messages:send');
SELECT valid, code FROM flowella.apikey_verify(pg_temp.regress_fix(pg_temp.regress_typo(:'t_exp', 25)));
RESET ROLE;
-- valid is true only with code VALID: one input of each code.
SET ROLE regress_verifier;
SELECT v.code, bool_and(v.valid) AS valid
  FROM (VALUES (:'t_all', NULL::text), (:'t_all', 'channels:manage'), (:'t_rev', NULL),
               (:'t_exp', NULL), (:'t_ghost', NULL), ('x', NULL)) AS t(input, scope),
       LATERAL flowella.apikey_verify(t.input, t.scope) v
 GROUP BY v.code ORDER BY v.code;
RESET ROLE;

-- revoked and expired: REVOKED
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(:'k_exp') IS NOT NULL AS revoked;
COMMIT;
RESET ROLE;
SET ROLE regress_verifier;
SELECT valid, code FROM flowella.apikey_verify(:'t_exp');
RESET ROLE;

--
-- MALFORMED: anything that is not a well-formed token, answered without
-- raising and without any key, org, scopes or mode.  Tokens with a
-- recomputed checksum show that the head and the alphabet are checked on
-- their own, not only through the checksum.
--
SET ROLE regress_verifier;
SELECT n, what, v.valid, v.code,
       v.key_id IS NULL AND v.org_id IS NULL AND v.scopes IS NULL AND v.mode IS NULL AS nothing_else
  FROM (VALUES
    (1, 'NULL', NULL::text),
    (2, 'empty', ''),
    (3, '1 MB of a', repeat('a', 1048576)),
    (4, 'token then 1 MB of spaces', :'t_all' || repeat(' ', 1048576)),
    (5, 'truncated by one', left(:'t_all', 55)),
    (6, 'prefix only', left(:'t_all', 18)),
    (7, 'one character too many', :'t_all' || 'x'),
    (8, 'token twice', :'t_all' || :'t_all'),
    (9, 'leading space', ' ' || :'t_all'),
    (10, 'trailing space', :'t_all' || ' '),
    (11, 'trailing newline', :'t_all' || E'\n'),
    (12, 'leading tab', E'\t' || :'t_all'),
    (13, 'Bearer header', 'Bearer ' || :'t_all'),
    (14, 'typo in lookup part', pg_temp.regress_typo(:'t_all', 12)),
    (15, 'typo in secret part', pg_temp.regress_typo(:'t_all', 30)),
    (16, 'typo in checksum', pg_temp.regress_typo(:'t_all', 56)),
    (17, 'typo in head', overlay(:'t_all' PLACING 'i' FROM 2 FOR 1)),
    (18, 'secret part all zeros', overlay(:'t_all' PLACING repeat('0', 32) FROM 19 FOR 32)),
    (19, 'mode prod', replace(:'t_all', 'flwl_live_', 'flwl_prod_')),
    (20, 'mode test, old checksum', replace(:'t_all', 'flwl_live_', 'flwl_test_')),
    (21, 'mode prod, fixed checksum', pg_temp.regress_fix(replace(:'t_all', 'flwl_live_', 'flwl_prod_'))),
    (22, 'upper-case head', 'FLWL_LIVE_' || substr(:'t_all', 11)),
    (23, 'upper-case head, fixed checksum', pg_temp.regress_fix('FLWL_LIVE_' || substr(:'t_all', 11))),
    (24, 'head without mode', 'flwl__' || substr(:'t_all', 7)),
    (25, 'dash in body, fixed checksum', pg_temp.regress_fix(overlay(:'t_all' PLACING '-' FROM 30 FOR 1))),
    (26, 'underscore in body, fixed checksum', pg_temp.regress_fix(overlay(:'t_all' PLACING '_' FROM 30 FOR 1))),
    (27, 'space in body, fixed checksum', pg_temp.regress_fix(overlay(:'t_all' PLACING ' ' FROM 30 FOR 1))),
    (28, 'SQL metacharacters', $$'; DROP TABLE flowella.api_keys; --$$),
    (29, 'SQL metacharacters, token length', rpad($$flwl_live_'; DROP TABLE flowella.api_keys; --$$, 56, '-')),
    (30, 'quote and backslash', left(:'t_all', 40) || $$'\"\\'$$ || left(:'t_all', 11)),
    (31, 'backslash-zero escapes', rpad(E'flwl_live_\\000\\000\\0', 56, E'\\000')),
    (32, 'invalid-UTF-8-looking escapes', rpad('flwl_live_\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1', 56, '\x80')),
    (33, 'percent-encoded', rpad('flwl_live_%00%FF%C3%28', 56, '%00')),
    (34, '56 bytes, 33 characters', 'flwl_live_' || repeat(U&'\00E9', 23)),
    (35, '56 characters, 102 bytes', 'flwl_live_' || repeat(U&'\00E9', 46)),
    (36, 'Cyrillic a in head', U&'flwl_liv\0435_' || substr(:'t_all', 11, 45)),
    (37, 'full-width digit in body', overlay(left(:'t_all', 54) PLACING U&'\FF10' FROM 30 FOR 1)),
    (38, 'zero-width space inside', left(:'t_all', 30) || U&'\200B' || substr(:'t_all', 31, 23)),
    (39, 'only head', 'flwl_live_'),
    (40, '56 spaces', repeat(' ', 56)),
    (41, 'head and 46 spaces', rpad('flwl_live_', 56, ' ')),
    (42, 'lower-cased token', lower(:'t_all')),
    (43, 'upper-cased token', upper(:'t_all')),
    (44, 'JSON string', '"' || :'t_all' || '"')
  ) AS t(n, what, input), LATERAL flowella.apikey_verify(t.input) v
 ORDER BY n;
-- the same inputs with a required scope: still MALFORMED
SELECT count(*) AS inputs, count(*) FILTER (WHERE v.code = 'MALFORMED' AND NOT v.valid) AS malformed
  FROM (VALUES (NULL::text), (''), (repeat('a', 1048576)), (left(:'t_all', 55)),
               (:'t_all' || 'x'), (pg_temp.regress_typo(:'t_all', 30)),
               ($$'; DROP TABLE flowella.api_keys; --$$)) AS t(input),
       LATERAL flowella.apikey_verify(t.input, 'messages:send') v;
RESET ROLE;
-- the statement above dropped nothing
SELECT count(*) AS keys FROM flowella.api_keys WHERE org_id = :'org';

--
-- Effective scopes = the key's scopes (the plan's when NULL) intersected
-- with the plan's current scopes, at once on plan changes.
--
-- Downgrade: analytics:read leaves the plan.  The explicit key loses it, the
-- inheriting key follows the plan, and asking for it is refused.
SET ROLE regress_admin;
SELECT flowella.plan_set('verify_plan', ARRAY['messages:send', 'messages:read'], false) \gset
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t_some');
SELECT code, scopes FROM flowella.apikey_verify(:'t_all');
SELECT code, scopes FROM flowella.apikey_verify(:'t_some', 'analytics:read');
SELECT code, scopes FROM flowella.apikey_verify(:'t_all', 'analytics:read');
RESET ROLE;
-- the stored scopes of the key are unchanged: only the effective set shrank
SELECT scopes FROM flowella.api_keys WHERE key_id = :'k_some';

-- Upgrade: analytics:read returns and channels:manage is added.  The
-- explicit key gets its scope back but not the new one; the inheriting key
-- gets everything.
SET ROLE regress_admin;
SELECT flowella.plan_set('verify_plan',
       ARRAY['messages:send', 'messages:read', 'analytics:read', 'channels:manage'], false) \gset
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t_some');
SELECT code, scopes FROM flowella.apikey_verify(:'t_all');
SELECT code FROM flowella.apikey_verify(:'t_some', 'channels:manage');
SELECT code FROM flowella.apikey_verify(:'t_all', 'channels:manage');
RESET ROLE;

-- A plan left with none of a key's scopes: the key authenticates but may
-- do nothing.
SET ROLE regress_admin;
SELECT flowella.plan_set('verify_plan', ARRAY['channels:manage'], false) \gset
RESET ROLE;
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t_test');
SELECT code, scopes FROM flowella.apikey_verify(:'t_test', 'messages:read');
SELECT code, scopes FROM flowella.apikey_verify(:'t_all');
RESET ROLE;

-- Moving the org to another plan (a DBA's UPDATE, there is no API for it)
-- changes its keys' scopes at once too.
UPDATE flowella.orgs SET plan = 'free' WHERE org_id = :'org';
SET ROLE regress_verifier;
SELECT code, scopes FROM flowella.apikey_verify(:'t_all');
SELECT code, scopes FROM flowella.apikey_verify(:'t_test');
SELECT code, scopes FROM flowella.apikey_verify(:'t_some');
RESET ROLE;
UPDATE flowella.orgs SET plan = 'verify_plan' WHERE org_id = :'org';

--
-- Privileges: the verifier may call apikey_verify and nothing else, reads
-- no table, and cannot manage keys; the other roles may not verify.
--
SET ROLE regress_verifier;
SELECT count(*) FROM flowella.api_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT prefix FROM flowella.api_keys LIMIT 1;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.orgs;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.plans;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM flowella.audit_events;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM flowella.apikey_create(:'org', 'by verifier');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.set_actor(:'owner');
\echo :LAST_ERROR_SQLSTATE
SELECT flowella.apikey_revoke(:'k_all');
\echo :LAST_ERROR_SQLSTATE
-- yet verify works
SELECT valid, code FROM flowella.apikey_verify(:'t_all');
RESET ROLE;
SET ROLE regress_manager;
SELECT code FROM flowella.apikey_verify('x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_nobody;
SELECT code FROM flowella.apikey_verify('x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- None of the failed or refused verifies changed anything: the keys are as
-- they were, the revoked one still revoked, and no audit record was added
-- since the last revoke.
SELECT label, revoked_at IS NOT NULL AS revoked FROM flowella.api_keys
 WHERE org_id = :'org' ORDER BY label;
SELECT action, count(*) FROM flowella.audit_records WHERE org_id = :'org'
 GROUP BY action ORDER BY action;
