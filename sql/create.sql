--
-- apikey_create (SPEC sections 4, 5 and 9): what a new key holds, who may
-- create one, every validation error, the NOTICE on the 51st active key,
-- and the audit record written with it.
--
\set owner    'a4000000-0000-4000-8000-000000000001'
\set admin    'a4000000-0000-4000-8000-000000000002'
\set user     'a4000000-0000-4000-8000-000000000003'
\set readonly 'a4000000-0000-4000-8000-000000000004'
\set stranger 'a4000000-0000-4000-8000-000000000005'
\set other    'a4000000-0000-4000-8000-000000000006'
\set tp       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

SET ROLE regress_admin;
SELECT flowella.org_create('Create Ltd', 'pro', :'owner') AS org \gset
SELECT flowella.org_create('Other Ltd', 'pro', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
SELECT flowella.member_set(:'org', :'readonly', 'read_only') \gset
RESET ROLE;

--
-- Happy paths
--

-- The owner creates keys: default scopes (NULL: inherit the plan), an
-- explicit subset, a list with duplicates, a test-mode key and one with an
-- expiry.  Each result row is a well-formed token and its prefix.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner', '203.0.113.7', :'tp') \gset
SELECT key_id AS k_inherit, regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_create(:'org', 'CI pipeline') \gset
\echo :ok :shape
SELECT key_id AS k_subset, regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_create(:'org', 'n8n production', ARRAY['messages:send']) \gset
\echo :ok :shape
SELECT key_id AS k_dups, regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_create(:'org', 'duplicates',
       ARRAY['messages:send', 'messages:read', 'messages:send', 'messages:read']) \gset
\echo :ok :shape
SELECT key_id AS k_test, regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_create(:'org', 'staging', NULL, 'test') \gset
\echo :ok :shape
SELECT key_id AS k_expiring, regress_token_ok(token, prefix) AS ok, regress_shape(token) AS shape
  FROM flowella.apikey_create(:'org', 'contractor', ARRAY['analytics:read'], 'live',
                              '2999-12-31 23:59:59+00') \gset
\echo :ok :shape
COMMIT;
RESET ROLE;

-- An admin of the org may create keys too.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT key_id AS k_admin FROM flowella.apikey_create(:'org', 'made by admin') \gset
COMMIT;
RESET ROLE;

-- What was stored: scopes as given (sorted, duplicates collapsed; NULL kept
-- as NULL), mode, expiry as requested, created_by = the actor, not revoked.
SELECT label, scopes, mode,
       expires_at = '2999-12-31 23:59:59+00' AS expiry_as_given, expires_at IS NULL AS never_expires,
       created_by = :'owner' AS by_owner, created_by = :'admin' AS by_admin,
       revoked_at IS NULL AND revoked_by IS NULL AND last_used_at IS NULL AS fresh,
       created_at <= clock_timestamp() AS created_in_past
  FROM flowella.api_keys WHERE org_id = :'org' ORDER BY label;

-- The owner's list shows them all as active.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, scopes, mode, status FROM flowella.apikey_list(:'org') ORDER BY label;
COMMIT;
RESET ROLE;

-- Each create wrote one key.created record, in the same transaction, with
-- the actor, client address and trace context set by set_actor, and the
-- new values (never the hash).
SELECT k.label, a.action, a.actor_user_id = k.created_by AS actor_is_creator,
       a.actor_ip, a.trace_context = :'tp' AS traced,
       a.details->>'prefix' = k.prefix AS prefix_ok, a.details->>'label' AS d_label,
       a.details->'scopes' AS d_scopes, a.details->>'mode' AS d_mode,
       (a.details->>'expires_at')::timestamptz = k.expires_at AS d_expiry_ok
  FROM flowella.api_keys k JOIN flowella.audit_records a USING (key_id)
 WHERE k.org_id = :'org' ORDER BY k.label;
SELECT count(*) AS key_records FROM flowella.audit_records
 WHERE org_id = :'org' AND key_id IS NOT NULL;

-- The expiry stored is the instant requested, whatever the session's time
-- zone does in between (here: twelve expiries 30 days apart, so that some
-- cross a daylight-saving change of America/Los_Angeles and some do not).
SET TIME ZONE 'America/Los_Angeles';
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
CREATE TEMP TABLE regress_expiry ON COMMIT DROP AS
  SELECT c.key_id, r.want
    FROM (SELECT n, date_trunc('second', clock_timestamp()) + n * interval '720 hours' AS want
            FROM generate_series(1, 12) n) r,
         LATERAL flowella.apikey_create(:'org', 'expiry ' || r.n, NULL, 'live', r.want) c;
SELECT count(*) AS keys, count(*) FILTER (WHERE k.expires_at = e.want) AS expiry_as_requested
  FROM regress_expiry e JOIN flowella.apikey_list(:'org') k USING (key_id);
ROLLBACK;
RESET ROLE;
RESET TIME ZONE;

--
-- Who may create: owners and admins of the org, nobody else (42501, and
-- nothing changes).  The counts are taken before and compared after.
--
SELECT count(*) AS keys_before FROM flowella.api_keys WHERE org_id = :'org' \gset
SELECT count(*) AS audit_before,
       count(*) FILTER (WHERE action = 'key.created') AS audit_keys_before,
       count(*) FILTER (WHERE action = 'member.role_changed') AS audit_members_before
  FROM flowella.audit_records WHERE org_id = :'org' \gset

SET ROLE regress_manager;
-- no actor, outside and inside a transaction block
SELECT * FROM flowella.apikey_create(:'org', 'no actor');
\echo :LAST_ERROR_SQLSTATE
BEGIN;
SELECT * FROM flowella.apikey_create(:'org', 'no actor');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- the actor of an earlier transaction is gone
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
COMMIT;
SELECT * FROM flowella.apikey_create(:'org', 'stale actor');
\echo :LAST_ERROR_SQLSTATE
-- an actor who is not a member of the org
BEGIN;
SELECT flowella.set_actor(:'stranger') \gset
SELECT * FROM flowella.apikey_create(:'org', 'stranger');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- the owner of another org
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT * FROM flowella.apikey_create(:'org', 'other owner');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a member with role user, and one with role read_only
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT * FROM flowella.apikey_create(:'org', 'plain user');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'readonly') \gset
SELECT * FROM flowella.apikey_create(:'org', 'read only');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- an org that does not exist, and a NULL org: the same answer as above
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create('a4000000-0000-4000-8000-0000000000ff', 'no such org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(NULL, 'null org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- someone without access learns nothing from validation either: a bad
-- label gets the same 42501, not 22023
BEGIN;
SELECT flowella.set_actor(:'stranger') \gset
SELECT * FROM flowella.apikey_create(:'org', '');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- An admin demoted to user loses the right at once.
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'admin', 'user') \gset
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT * FROM flowella.apikey_create(:'org', 'demoted admin');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_admin;
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
RESET ROLE;

-- Roles without EXECUTE cannot call it at all.
SET ROLE regress_verifier;
SELECT * FROM flowella.apikey_create(:'org', 'verifier');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
SELECT * FROM flowella.apikey_create(:'org', 'provisioning admin');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_auditor;
SELECT * FROM flowella.apikey_create(:'org', 'auditor');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_nobody;
SELECT * FROM flowella.apikey_create(NULL, 'nobody');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- Nothing changed: no key, no audit record (the demotion and promotion
-- above wrote two member.role_changed records, nothing else).
SELECT count(*) - :keys_before AS new_keys FROM flowella.api_keys WHERE org_id = :'org';
SELECT count(*) - :audit_before AS new_records,
       count(*) FILTER (WHERE action = 'key.created') - :audit_keys_before AS new_key_records,
       count(*) FILTER (WHERE action = 'member.role_changed') - :audit_members_before AS new_member_records
  FROM flowella.audit_records WHERE org_id = :'org';

--
-- Validation (22023, naming the field, with a detail); nothing is stored.
--
SET ROLE regress_manager;

-- label: NULL, empty, blank (spaces, a no-break space), over 100 characters
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', '');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', '   ');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', U&' \00A0 ');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', repeat('x', 101));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- 101 characters, one of them 4 bytes long in UTF-8
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', repeat('x', 100) || U&'\+01F511');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- label: control characters (tab, newline, carriage return, escape, a C1
-- control), and invisible or bidirectional formatting (RTL override U+202E,
-- zero-width space U+200B, byte order mark U+FEFF)
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', E'CI\tpipeline');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', E'CI\npipeline');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', E'CI pipeline\r');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', E'\033[31mred');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', U&'CI\0085pipeline');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', U&'invoice\202Etxt.exe');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', U&'CI\200Bpipeline');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', U&'\FEFFCI pipeline');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- scopes: an empty array (either spelling), names the plan does not offer
-- (all of them named, the offered one not), a NULL element, two dimensions
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'no scopes', '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'no scopes', ARRAY[]::text[]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'too much', ARRAY['channels:manage']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'too much',
       ARRAY['messages:send', 'channels:manage', 'admin:all', 'Messages:Read']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- more than ten unknown names: the first ten, then how many more
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'too many',
       ARRAY['s01', 's02', 's03', 's04', 's05', 's06', 's07', 's08', 's09', 's10',
             's11', 's12', 'messages:send']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'null scope', ARRAY['messages:send', NULL]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'flat please',
       ARRAY[['messages:send'], ['messages:read']]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- mode: unknown, wrong case, empty, NULL
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'prod key', NULL, 'prod');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'LIVE key', NULL, 'LIVE');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'empty mode', NULL, '');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'null mode', NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- A long unknown mode or scope name is quoted cut short, and the message
-- stays valid UTF-8 even when the cut falls inside a multi-byte character
-- (else a client in another encoding gets an encoding error instead).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT set_config('regress.org', :'org', true) IS NOT NULL AS org_set;
DO $$
DECLARE
	org uuid := current_setting('regress.org')::uuid;
	long text := 'x' || repeat(U&'\00E9', 150);
	state text; msg text; det text;
	ok boolean;
BEGIN
	FOR i IN 1 .. 2 LOOP
		BEGIN
			IF i = 1 THEN
				PERFORM * FROM flowella.apikey_create(org, 'long mode', NULL, long);
			ELSE
				PERFORM * FROM flowella.apikey_create(org, 'long scope', ARRAY[long]);
			END IF;
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
				det = PG_EXCEPTION_DETAIL;
		END;
		BEGIN
			PERFORM convert_from(convert_to(det, 'UTF8'), 'UTF8');
			ok := true;
		EXCEPTION WHEN character_not_in_repertoire THEN
			ok := false;
		END;
		RAISE NOTICE '%: % (%), detail valid UTF-8: %, shorter than the input: %',
			CASE i WHEN 1 THEN 'mode' ELSE 'scope' END, state, msg, ok,
			octet_length(det) < octet_length(long);
	END LOOP;
END
$$;
ROLLBACK;

SET ROLE regress_manager;
-- expires_at: in the past, now() (the transaction start), -infinity
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'past', NULL, 'live', now() - interval '1 day');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'now', NULL, 'live', now());
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_create(:'org', 'minus infinity', NULL, 'live', '-infinity');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- expires_at 'infinity' is later than now: it is either accepted as a key
-- that never expires, or refused as a validation error (22023) like the
-- other bad expiries -- not with some other error.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT set_config('regress.org', :'org', true) IS NOT NULL AS org_set;
DO $$
DECLARE
	state text := 'accepted';
BEGIN
	BEGIN
		PERFORM * FROM flowella.apikey_create(current_setting('regress.org')::uuid,
											  'infinity', NULL, 'live', 'infinity');
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
	END;
	RAISE NOTICE 'infinity accepted or refused with 22023: %', state IN ('accepted', '22023');
END
$$;
ROLLBACK;
RESET ROLE;

-- Nothing was stored by any of the refused calls.
SELECT count(*) - :keys_before AS new_keys FROM flowella.api_keys WHERE org_id = :'org';
SELECT count(*) FILTER (WHERE action = 'key.created') - :audit_keys_before AS new_key_records
  FROM flowella.audit_records WHERE org_id = :'org';

-- Labels at the limit are accepted: exactly 100 characters, ASCII or
-- 4-byte UTF-8 (100 characters, 400 bytes), other scripts and emoji.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT regress_shape(token) FROM flowella.apikey_create(:'org', repeat('y', 100));
SELECT regress_shape(token) FROM flowella.apikey_create(:'org', repeat(U&'\+01F511', 100));
SELECT regress_shape(token) FROM flowella.apikey_create(:'org', U&'Zahlungen \00FC\00E4 \+01F4E8 \6D4B\8BD5');
COMMIT;
RESET ROLE;
SELECT length(label) AS chars, octet_length(label) AS bytes
  FROM flowella.api_keys
 WHERE org_id = :'org' AND (length(label) = 100 OR label LIKE 'Zahlungen%') ORDER BY bytes;

--
-- Rolled back: a key created in a transaction that rolls back (or in a
-- savepoint rolled back) leaves neither key nor audit record.
--
SELECT count(*) AS keys_before FROM flowella.api_keys WHERE org_id = :'org' \gset
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS rolled_back FROM flowella.apikey_create(:'org', 'rolled back') \gset
SELECT count(*) AS visible_inside FROM flowella.apikey_list(:'org') WHERE key_id = :'rolled_back';
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SAVEPOINT s;
SELECT key_id AS in_savepoint FROM flowella.apikey_create(:'org', 'in savepoint') \gset
ROLLBACK TO SAVEPOINT s;
SELECT key_id AS kept FROM flowella.apikey_create(:'org', 'kept') \gset
COMMIT;
RESET ROLE;
SELECT count(*) FILTER (WHERE key_id = :'rolled_back') AS rolled_back_keys,
       count(*) FILTER (WHERE key_id = :'in_savepoint') AS savepoint_keys,
       count(*) FILTER (WHERE key_id = :'kept') AS kept_keys,
       count(*) - :keys_before AS new_keys
  FROM flowella.api_keys WHERE org_id = :'org';
SELECT count(*) FILTER (WHERE key_id IN (:'rolled_back', :'in_savepoint')) AS rolled_back_records,
       count(*) FILTER (WHERE key_id = :'kept') AS kept_records,
       count(*) - :audit_before AS new_records
  FROM flowella.audit_records WHERE org_id = :'org';

--
-- No hard limit; the 51st active key draws a NOTICE recommending one key
-- per integration.  Revoked and expired keys do not count.
--
SET ROLE regress_admin;
SELECT flowella.org_create('Busy Ltd', 'free', :'owner') AS busy \gset
RESET ROLE;

SET ROLE regress_manager;
-- 50 keys: no NOTICE
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS made
  FROM generate_series(1, 50) n, LATERAL flowella.apikey_create(:'busy', 'busy ' || n) c;
COMMIT;
-- the 51st draws a NOTICE and is made; the 52nd is made without one: the
-- NOTICE is for the person who passes 50, not for every create after
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT regress_shape(token) FROM flowella.apikey_create(:'busy', 'busy 51');
SELECT regress_shape(token) FROM flowella.apikey_create(:'busy', 'busy 52');
COMMIT;
-- revoke three: 49 active, so the next one (the 50th active) draws none
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(flowella.apikey_revoke(key_id)) AS revoked
  FROM flowella.apikey_list(:'busy') WHERE label IN ('busy 1', 'busy 2', 'busy 3');
SELECT regress_shape(token) FROM flowella.apikey_create(:'busy', 'busy 53');
COMMIT;
-- a short-lived key is the 51st active one...
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS short_lived
  FROM flowella.apikey_create(:'busy', 'busy 54', NULL, 'live',
                              clock_timestamp() + interval '1 second') \gset
COMMIT;
RESET ROLE;
-- ...until it expires; then after revoking one more, 49 are active and the
-- next key draws no NOTICE
SELECT pg_sleep_until(expires_at + interval '10 ms')
  FROM flowella.api_keys WHERE key_id = :'short_lived' \gset
SELECT expires_at < clock_timestamp() AS expired
  FROM flowella.api_keys WHERE key_id = :'short_lived';
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(flowella.apikey_revoke(key_id)) AS revoked
  FROM flowella.apikey_list(:'busy') WHERE label = 'busy 4';
SELECT regress_shape(token) FROM flowella.apikey_create(:'busy', 'busy 55');
SELECT status, count(*) FROM flowella.apikey_list(:'busy') GROUP BY status ORDER BY status;
COMMIT;
RESET ROLE;

--
-- No cliff: a create reads as few rows of api_keys in an organisation of
-- 3 000 active keys (and 1 000 revoked or expired ones) as in a small one:
-- the count behind the NOTICE stops at 51.  The rows a transaction read
-- are in pg_stat_xact_user_tables, once earlier counts are flushed.
--
SET ROLE regress_admin;
SELECT flowella.org_create('Huge Ltd', 'free', :'owner') AS huge \gset
RESET ROLE;
-- written directly by a superuser without an actor (the restore path)
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by,
                               created_at, expires_at, revoked_at)
SELECT :'huge', 'bulk ' || g, 'flwl_live_' || lpad(to_hex(g), 8, 'x'),
       digest('huge ' || g, 'sha256'), 'live', :'owner', now() - interval '2 days',
       CASE WHEN g % 4 = 1 THEN now() - interval '1 day' END,
       CASE WHEN g % 4 = 2 THEN now() - interval '1 day' END
  FROM generate_series(1, 4000) g;
ANALYZE flowella.api_keys;
SELECT pg_stat_force_next_flush();
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT regress_shape(token) FROM flowella.apikey_create(:'huge', 'one more');
SELECT seq_tup_read + idx_tup_fetch <= 2 * 51 + 10 AS few_rows_read
  FROM pg_stat_xact_user_tables WHERE relid = 'flowella.api_keys'::regclass;
COMMIT;
RESET ROLE;
