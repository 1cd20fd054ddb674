--
-- apikey_list (SPEC sections 2, 4 and 5) and the flowella.rotation_due
-- view (section 9).
--
\set owner    'b6000000-0000-4000-8000-000000000001'
\set admin    'b6000000-0000-4000-8000-000000000002'
\set user     'b6000000-0000-4000-8000-000000000003'
\set readonly 'b6000000-0000-4000-8000-000000000004'
\set stranger 'b6000000-0000-4000-8000-000000000005'
\set other    'b6000000-0000-4000-8000-000000000006'
\set noorg    'b6000000-0000-4000-8000-0000000000ff'

SET ROLE regress_admin;
SELECT flowella.org_create('List Ltd', 'pro', :'owner') AS org \gset
SELECT flowella.org_create('List Other Ltd', 'pro', :'other') AS other_org \gset
SELECT flowella.member_set(:'org', :'admin', 'admin') \gset
SELECT flowella.member_set(:'org', :'user', 'user') \gset
SELECT flowella.member_set(:'org', :'readonly', 'read_only') \gset
RESET ROLE;

--
-- Columns: exactly those of SPEC section 2, in that order, never the hash
-- or the token.
--
SELECT pg_get_function_result('flowella.apikey_list(uuid)'::regprocedure) AS returns;
SELECT p.proretset AS returns_set,
       'secret_hash' = ANY (p.proargnames) AS has_secret_hash,
       'token' = ANY (p.proargnames) AS has_token
  FROM pg_proc p WHERE p.oid = 'flowella.apikey_list(uuid)'::regprocedure;

-- An org without keys lists nothing (and the header shows the columns).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_list(:'org');
COMMIT;
RESET ROLE;

--
-- Contents and order
--

-- Three keys, created one after another (by the owner and by the admin),
-- a key of the other org, then one revoked and one with a future expiry.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_alpha, token AS t_alpha FROM flowella.apikey_create(:'org', 'alpha') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT key_id AS k_beta, token AS t_beta
  FROM flowella.apikey_create(:'org', 'beta', ARRAY['messages:send'], 'test') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k_gamma, token AS t_gamma
  FROM flowella.apikey_create(:'org', 'gamma', ARRAY['analytics:read', 'messages:read'], 'live',
                              '2999-01-01 00:00:00+00') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT key_id AS k_other FROM flowella.apikey_create(:'other_org', 'other org key') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT flowella.apikey_revoke(:'k_beta') AS beta_revoked_at \gset
COMMIT;
RESET ROLE;

-- An expired key and one both expired and revoked, restored by a
-- superuser as pg_restore would (no actor: not audited anew); they are
-- the oldest keys of the org.
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode,
                               created_at, created_by, expires_at)
VALUES (:'org', 'expired', 'flwl_live_LISTexp1', digest('list.sql expired', 'sha256'),
        NULL, 'live', now() - interval '20 days', :'owner', now() - interval '10 days');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, scopes, mode,
                               created_at, created_by, expires_at, revoked_at, revoked_by)
VALUES (:'org', 'expired and revoked', 'flwl_test_LISTexp2', digest('list.sql expired revoked', 'sha256'),
        ARRAY['messages:read'], 'test', now() - interval '30 days', :'owner',
        now() - interval '10 days', now() - interval '15 days', :'admin');

-- The owner's list: newest first; revoked and expired rows included with
-- their status (revoked wins over expired); scopes NULL for the inheriting
-- keys; created_by, revoked_by, expires_at as stored; only this org.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT ordinality AS pos, label, status, scopes, mode,
       prefix ~ '^flwl_(live|test)_[0-9A-Za-z]{8}$' AS prefix_ok,
       CASE created_by WHEN :'owner' THEN 'owner' WHEN :'admin' THEN 'admin' END AS created_by,
       CASE revoked_by WHEN :'owner' THEN 'owner' WHEN :'admin' THEN 'admin' END AS revoked_by,
       revoked_at IS NOT NULL AS has_revoked_at,
       expires_at AT TIME ZONE 'UTC' > '2100-01-01' AS far_expiry,
       expires_at < now() AS expired_at_past,
       last_used_at IS NULL AS never_used
  FROM flowella.apikey_list(:'org') WITH ORDINALITY;
COMMIT;
RESET ROLE;

-- Each row's values match the key's stored row; created_at strictly
-- descending; the beta row's revoked_at is the time the revoke returned.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
CREATE TEMP TABLE regress_listed AS
  SELECT * FROM flowella.apikey_list(:'org') WITH ORDINALITY;
SELECT count(*) + 1 AS listed,
       bool_and(l.created_at > n.created_at) AS newest_first
  FROM regress_listed l JOIN regress_listed n ON n.ordinality = l.ordinality + 1;
SELECT count(*) AS rows_matching_table
  FROM regress_listed l JOIN flowella.api_keys k USING (key_id)
 WHERE (l.label, l.prefix, l.scopes, l.mode, l.created_at, l.created_by, l.last_used_at,
        l.expires_at, l.revoked_at, l.revoked_by)
       IS NOT DISTINCT FROM
       (k.label, k.prefix, k.scopes, k.mode, k.created_at, k.created_by, k.last_used_at,
        k.expires_at, k.revoked_at, k.revoked_by)
   AND k.org_id = :'org';
SELECT revoked_at = :'beta_revoked_at' AS beta_revoked_at_ok FROM regress_listed WHERE key_id = :'k_beta';
-- no listed value holds a token or a hash
SELECT count(*) FILTER (WHERE row_to_json(l)::text LIKE '%' || t || '%') AS rows_with_token
  FROM regress_listed l, unnest(ARRAY[:'t_alpha', :'t_beta', :'t_gamma']) t;
COMMIT;
RESET ROLE;
SELECT count(*) FILTER (WHERE row_to_json(l)::text LIKE '%' || encode(k.secret_hash, 'hex') || '%')
         AS rows_with_hash
  FROM regress_listed l, flowella.api_keys k WHERE k.org_id = :'org';
DROP TABLE regress_listed;

-- An admin sees the same list (prefixes in the same order).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT string_agg(prefix, ',') AS owner_order FROM flowella.apikey_list(:'org') \gset
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'admin') \gset
SELECT string_agg(prefix, ',') = :'owner_order' AS same_as_owner, count(*) AS listed
  FROM flowella.apikey_list(:'org');
COMMIT;
RESET ROLE;

--
-- Who may list: 42501 without an actor, for a user or read_only member, a
-- stranger, the owner of another org, an unknown org and a NULL org; the
-- same message each time.
--
SET ROLE regress_manager;
BEGIN;
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'user') \gset
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
\set msg_user :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'readonly') \gset
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
\set msg_readonly :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'stranger') \gset
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
\set msg_stranger :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
\set msg_other :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_list(:'noorg');
\echo :LAST_ERROR_SQLSTATE
\set msg_noorg :LAST_ERROR_MESSAGE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_list(NULL);
\echo :LAST_ERROR_SQLSTATE
\set msg_null :LAST_ERROR_MESSAGE
ROLLBACK;
RESET ROLE;
SELECT count(DISTINCT m) AS distinct_messages
  FROM unnest(ARRAY[:'msg_user', :'msg_readonly', :'msg_stranger', :'msg_other',
                    :'msg_noorg', :'msg_null']) m;
-- the other org's owner lists only the other org
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT label, status FROM flowella.apikey_list(:'other_org');
COMMIT;
RESET ROLE;
-- roles without the manager grant cannot call it
SET ROLE regress_verifier;
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_auditor;
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_admin;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

--
-- flowella.rotation_due: active keys older than 12 months.  Old keys can
-- only come from a restore (created_at is immutable), so a superuser
-- inserts them, as pg_restore would.
--
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by)
VALUES (:'org', 'thirteen months old', 'flwl_live_AAAAAAAA', digest('list.sql old 1', 'sha256'),
        'live', now() - interval '13 months', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by,
                               expires_at)
VALUES (:'org', 'old, expires next year', 'flwl_live_AAAAAAAB', digest('list.sql old 2', 'sha256'),
        'live', now() - interval '2 years', :'owner', now() + interval '1 year');
-- not due: revoked, expired, or only eleven months old
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by,
                               revoked_at, revoked_by)
VALUES (:'org', 'old but revoked', 'flwl_live_AAAAAAAC', digest('list.sql old 3', 'sha256'),
        'live', now() - interval '13 months', :'owner', now() - interval '1 month', :'owner');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by,
                               expires_at)
VALUES (:'org', 'old but expired', 'flwl_live_AAAAAAAD', digest('list.sql old 4', 'sha256'),
        'live', now() - interval '13 months', :'owner', now() - interval '1 day');
INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_at, created_by)
VALUES (:'org', 'eleven months old', 'flwl_live_AAAAAAAE', digest('list.sql old 5', 'sha256'),
        'live', now() - interval '11 months', :'owner');
-- the restored rows were not audited anew
SELECT count(*) AS restored_records FROM flowella.audit_records a
  JOIN flowella.api_keys k USING (key_id) WHERE k.prefix LIKE 'flwl_live_AAAAAAA_';

-- Due: only the two old active keys, none of the new ones.
SELECT label, prefix, mode, created_by = :'owner' AS by_owner, last_used_at
  FROM flowella.rotation_due WHERE org_id = :'org' ORDER BY created_at;
SELECT count(*) AS new_keys_due FROM flowella.rotation_due
 WHERE key_id IN (:'k_alpha', :'k_beta', :'k_gamma');
-- the view shows no hash
SELECT count(*) AS hash_columns FROM information_schema.columns
 WHERE table_schema = 'flowella' AND table_name = 'rotation_due'
   AND column_name IN ('secret_hash', 'token');

-- The old keys appear in apikey_list too, as active.
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT label, status FROM flowella.apikey_list(:'org')
 WHERE prefix LIKE 'flwl_live_AAAAAAA_' ORDER BY label;
-- a manager sees its actor's orgs' due keys
SELECT label FROM flowella.rotation_due ORDER BY created_at;
COMMIT;
-- the other org's owner sees none of them; no actor, none either
BEGIN;
SELECT flowella.set_actor(:'other') \gset
SELECT count(*) AS visible FROM flowella.rotation_due;
COMMIT;
SELECT count(*) AS visible_without_actor FROM flowella.rotation_due;
RESET ROLE;
-- the auditor sees them all
SET ROLE regress_auditor;
SELECT label FROM flowella.rotation_due WHERE org_id = :'org' ORDER BY created_at;
RESET ROLE;
-- once revoked, a key is no longer due
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT flowella.apikey_revoke(key_id) IS NOT NULL AS revoked
  FROM flowella.api_keys WHERE prefix = 'flwl_live_AAAAAAAA';
COMMIT;
RESET ROLE;
SELECT label FROM flowella.rotation_due WHERE org_id = :'org' ORDER BY created_at;

-- apikey_list works in a READ ONLY transaction (a standby, a read-only
-- pool): its access check takes no row lock.
SET ROLE regress_manager;
BEGIN TRANSACTION READ ONLY;
SELECT flowella.set_actor(:'admin') \gset
SELECT count(*) > 0 AS listed_read_only FROM flowella.apikey_list(:'org');
COMMIT;
RESET ROLE;
