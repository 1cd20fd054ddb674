--
-- Tokens and secrets (SPEC section 3): the token's format, the stored
-- SHA-256, and that the plaintext reaches no table, no audit record, no WAL
-- and no error text.  Tokens are never printed: only shapes and booleans.
--

-- Every text, bytea, jsonb or array column of every table in schema
-- flowella, and the WAL written since start_lsn, searched for a needle.
-- Returns the places where it was found.
CREATE FUNCTION pg_temp.regress_find(needle text, start_lsn pg_lsn)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
	rel regclass;
	col record;
	hits bigint;
	seg text;
BEGIN
	FOR rel IN SELECT c.oid FROM pg_class c
				WHERE c.relnamespace = 'flowella'::regnamespace AND c.relkind IN ('r', 'p')
				ORDER BY c.relname LOOP
		-- the whole row as text: catches the token in any column or nested value
		EXECUTE format('SELECT count(*) FROM %s t WHERE strpos(row_to_json(t)::text, $1) > 0', rel)
			INTO hits USING needle;
		IF hits > 0 THEN RETURN NEXT rel::text; END IF;
		-- bytea columns byte by byte (row_to_json shows them in hex)
		FOR col IN SELECT a.attname FROM pg_attribute a
					WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
					  AND a.atttypid = 'bytea'::regtype LOOP
			EXECUTE format('SELECT count(*) FROM %s t WHERE position($1 IN t.%I) > 0', rel, col.attname)
				INTO hits USING convert_to(needle, 'UTF8');
			IF hits > 0 THEN RETURN NEXT rel::text || '.' || col.attname; END IF;
		END LOOP;
	END LOOP;
	-- every WAL segment from start_lsn's to the current one, reported once
	-- (the needle may be in several: a segment switch, a full-page image)
	FOR seg IN SELECT w.name FROM pg_ls_waldir() w
				WHERE w.name ~ '^[0-9A-F]{24}$'
				  AND w.name BETWEEN pg_walfile_name(start_lsn)
								 AND pg_walfile_name(pg_current_wal_insert_lsn())
				ORDER BY w.name LOOP
		IF position(convert_to(needle, 'UTF8') IN pg_read_binary_file('pg_wal/' || seg)) > 0 THEN
			RETURN NEXT 'WAL';
			EXIT;
		END IF;
	END LOOP;
END
$$;

SET ROLE regress_admin;
SELECT flowella.org_create('Tokens Ltd', 'pro', 'a3000000-0000-4000-8000-000000000001') AS org \gset
SELECT flowella.org_create('Tokens Many Ltd', 'pro', 'a3000000-0000-4000-8000-000000000001') AS org_many \gset
RESET ROLE;
\set owner 'a3000000-0000-4000-8000-000000000001'

SELECT pg_current_wal_insert_lsn() AS start_lsn \gset

SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS live_id, token AS live, prefix AS live_prefix
  FROM flowella.apikey_create(:'org', 'live key') \gset
SELECT key_id AS test_id, token AS test, prefix AS test_prefix
  FROM flowella.apikey_create(:'org', 'test key', NULL, 'test') \gset
COMMIT;
RESET ROLE;

-- Format: flwl_<mode>_ then 46 base62 characters (56 in all); the prefix is
-- the first 18 characters, and is what the table stores.
SELECT regress_shape(:'live') AS live_shape, length(:'live') AS live_len,
       regress_token_ok(:'live', :'live_prefix') AS live_ok,
       regress_shape(:'test') AS test_shape, length(:'test') AS test_len,
       regress_token_ok(:'test', :'test_prefix') AS test_ok;
SELECT key_id = :'live_id' AS live_row, prefix = left(:'live', 18) AS prefix_is_head,
       length(prefix) AS prefix_len, mode
  FROM flowella.api_keys WHERE prefix = :'live_prefix';
SELECT key_id = :'test_id' AS test_row, mode
  FROM flowella.api_keys WHERE prefix = :'test_prefix';

-- The last 6 characters are the CRC-32 of the first 50, in base62.
SELECT right(:'live', 6) = regress_checksum(left(:'live', 50)) AS live_checksum,
       right(:'test', 6) = regress_checksum(left(:'test', 50)) AS test_checksum;

-- Stored: SHA-256 of the whole token, 32 bytes, as pgcrypto computes it, so
-- a leaked token finds its key in psql.
SELECT octet_length(secret_hash) AS hash_len,
       secret_hash = digest(:'live', 'sha256') AS is_sha256
  FROM flowella.api_keys WHERE key_id = :'live_id';
SELECT key_id = :'test_id' AS found_by_digest
  FROM flowella.api_keys WHERE secret_hash = digest(:'test', 'sha256');
-- no other key has that hash
SELECT count(*) AS keys_with_hash
  FROM flowella.api_keys WHERE secret_hash = digest(:'live', 'sha256');

-- Two keys never share a token, prefix or hash.
SELECT :'live' <> :'test' AS tokens_differ,
       substr(:'live', 11, 8) <> substr(:'test', 11, 8) AS lookups_differ,
       (SELECT count(DISTINCT secret_hash) FROM flowella.api_keys
         WHERE key_id IN (:'live_id', :'test_id')) AS distinct_hashes;

-- 50 more keys: 50 distinct tokens and prefixes, all well formed, and their
-- random part draws on the whole base62 alphabet (the chance that one of the
-- 62 digits is missing from 2000 uniform draws is below 1e-12).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
CREATE TEMP TABLE regress_many ON COMMIT DROP AS
  SELECT c.token, c.prefix
    FROM generate_series(1, 50) n,
         LATERAL flowella.apikey_create(:'org_many', 'many ' || n) c;
SELECT count(*) AS made, count(DISTINCT token) AS tokens, count(DISTINCT prefix) AS prefixes,
       bool_and(regress_token_ok(token, prefix)) AS all_ok,
       bool_and(right(token, 6) = regress_checksum(left(token, 50))) AS all_checksums
  FROM regress_many;
SELECT count(DISTINCT ch) AS alphabet
  FROM regress_many, regexp_split_to_table(substr(token, 11, 40), '') ch;
COMMIT;
RESET ROLE;

-- The plaintext reaches no table: neither the whole token nor its secret
-- part (after the prefix) occurs in any column of any flowella table, nor in
-- the WAL written since the keys were created.
SELECT pg_temp.regress_find(:'live', :'start_lsn') AS live_found_in;
SELECT pg_temp.regress_find(substr(:'live', 19), :'start_lsn') AS live_secret_found_in;
SELECT pg_temp.regress_find(substr(:'test', 19), :'start_lsn') AS test_secret_found_in;
-- the search does find what is there: the prefix is in api_keys and in the
-- audit record, and in the WAL
SELECT pg_temp.regress_find(:'live_prefix', :'start_lsn') AS prefix_found_in;

-- The audit record of a create names the prefix, never the hash.
SELECT a.action, a.details->>'prefix' = k.prefix AS has_prefix,
       strpos(a.details::text, encode(k.secret_hash, 'hex')) = 0 AS no_hex_hash,
       strpos(a.details::text, encode(k.secret_hash, 'base64')) = 0 AS no_b64_hash,
       NOT a.details ?| ARRAY['token', 'secret_hash', 'hash'] AS no_hash_field
  FROM flowella.audit_records a JOIN flowella.api_keys k USING (key_id)
 WHERE k.key_id IN (:'live_id', :'test_id') ORDER BY k.mode;

-- Error texts never echo a token.  A token-shaped string passed as a label,
-- a scope or a mode is refused, and the message quotes at most its prefix.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'flwl_live_AAAAAAAABBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBCCCCCC');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'see flwl_live_AAAAAAAABBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBCCCCCC here');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'x', ARRAY['messages:read', 'flwl_live_AAAAAAAABBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBCCCCCC']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'x', NULL, 'flwl_live_AAAAAAAABBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBCCCCCC');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- The same with the real token: no part of an error's message, detail or
-- hint holds its secret part.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT set_config('regress.tok', :'live', true) IS NOT NULL AS tok_set,
       set_config('regress.org', :'org', true) IS NOT NULL AS org_set,
       set_config('regress.owner', :'owner', true) IS NOT NULL AS owner_set;
DO $$
DECLARE
	tok text := current_setting('regress.tok');
	msg text; det text; hnt text; state text;
	leaks int := 0;
	errors int := 0;
	calls text[] := ARRAY[
		format('SELECT * FROM flowella.apikey_create(%L, %L)', current_setting('regress.org'), tok),
		format('SELECT * FROM flowella.apikey_create(%L, %L, ARRAY[%L])', current_setting('regress.org'), 'x', tok),
		format('SELECT * FROM flowella.apikey_create(%L, %L, NULL, %L)', current_setting('regress.org'), 'x', tok),
		format('SELECT flowella.set_actor(%L, NULL, %L)', current_setting('regress.owner'), tok)];
	c text;
BEGIN
	FOREACH c IN ARRAY calls LOOP
		BEGIN
			EXECUTE c;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
				det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
			errors := errors + 1;
			IF strpos(concat_ws(' ', msg, det, hnt), substr(tok, 19)) > 0 THEN
				leaks := leaks + 1;
			END IF;
			RAISE NOTICE '% %', state, msg;
		END;
	END LOOP;
	RAISE NOTICE 'errors: %, leaking: %', errors, leaks;
END
$$;
COMMIT;
RESET ROLE;

-- None of the refused calls stored anything: the org still has its two
-- keys and their two audit records.
SELECT count(*) AS keys FROM flowella.api_keys WHERE org_id = :'org';
SELECT action, count(*) FROM flowella.audit_records
 WHERE org_id = :'org' AND key_id IS NOT NULL GROUP BY action;
