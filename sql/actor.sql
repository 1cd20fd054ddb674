--
-- set_actor (SPEC section 4): who is acting, for the current transaction
-- only; its validation; who may call it; and management calls without it.
--
\set a1    'b1000000-0000-4000-8000-000000000001'
\set a2    'b1000000-0000-4000-8000-000000000002'
\set a3    'b1000000-0000-4000-8000-000000000003'
\set owner 'b1000000-0000-4000-8000-000000000010'
\set tp    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
\set tp2   '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'

-- A view of the context as the superuser sees it, without printing uuids.
CREATE FUNCTION regress_actor() RETURNS TABLE (who text, ip inet, traceparent text)
LANGUAGE sql AS $$
	SELECT CASE flowella.actor_user_id()
			WHEN 'b1000000-0000-4000-8000-000000000001' THEN 'a1'
			WHEN 'b1000000-0000-4000-8000-000000000002' THEN 'a2'
			WHEN 'b1000000-0000-4000-8000-000000000003' THEN 'a3'
			WHEN 'b1000000-0000-4000-8000-000000000010' THEN 'owner'
			ELSE coalesce(flowella.actor_user_id()::text, 'none') END,
		   flowella.actor_ip(), flowella.actor_traceparent()
$$;

-- No actor at the start of a session.
SELECT * FROM regress_actor();

--
-- Setting the context, and its lifetime
--

-- All three values are set for the transaction; a second call replaces all
-- of them (the omitted ones become NULL).
BEGIN;
SET LOCAL ROLE regress_manager;
SELECT flowella.set_actor(:'a1', '203.0.113.7', :'tp');
RESET ROLE;
SELECT * FROM regress_actor();
SELECT flowella.actor_traceparent() = :'tp' AS tp_as_given;
SET LOCAL ROLE regress_manager;
SELECT flowella.set_actor(:'a2');
RESET ROLE;
SELECT * FROM regress_actor();
COMMIT;
-- gone after COMMIT
SELECT * FROM regress_actor();

-- gone after ROLLBACK
BEGIN;
SET LOCAL ROLE regress_manager;
SELECT flowella.set_actor(:'a1', '198.51.100.1', :'tp') \gset
RESET ROLE;
SELECT * FROM regress_actor();
ROLLBACK;
SELECT * FROM regress_actor();

-- gone after a transaction that failed
BEGIN;
SELECT flowella.set_actor(:'a1') \gset
SELECT 1 / 0;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT * FROM regress_actor();

-- Outside a transaction block: a WARNING, and the actor lasts only for that
-- statement (the next one has none).
SET ROLE regress_manager;
SELECT flowella.set_actor(:'a1');
RESET ROLE;
SELECT * FROM regress_actor();

-- Client addresses: an IPv4 host (with or without /32) and an IPv6 host are
-- accepted; a network is refused with 22023.
BEGIN;
SELECT flowella.set_actor(:'a1', '10.0.0.1') \gset
SELECT * FROM regress_actor();
SELECT flowella.set_actor(:'a1', '10.0.0.1/32') \gset
SELECT * FROM regress_actor();
SELECT flowella.set_actor(:'a1', '2001:db8::1') \gset
SELECT * FROM regress_actor();
SELECT flowella.set_actor(:'a1', '2001:db8::1/128') \gset
SELECT * FROM regress_actor();
COMMIT;
BEGIN;
SELECT flowella.set_actor(:'a1', '10.0.0.0/8');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', '2001:db8::/32');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- A NULL user is refused with 22023.
BEGIN;
SELECT flowella.set_actor(NULL);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(NULL, '10.0.0.1', :'tp');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

--
-- traceparent: only 00-<32 lower hex>-<16 lower hex>-<2 lower hex>, trace
-- and parent ids not all zeros; everything else 22023.
--

-- valid ones, and NULL (no trace context)
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, :'tp2') \gset
SELECT flowella.actor_traceparent() = :'tp2' AS tp_as_given;
SELECT flowella.set_actor(:'a1', NULL, NULL) \gset
SELECT * FROM regress_actor();
COMMIT;

-- wrong length: empty, too short, one character too many
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, :'tp' || '0');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a later version (ff is forbidden by W3C; 01 is not version 00)
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- upper-case hex in the trace id, the parent id, the flags
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0F');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- not hex at all
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- all-zero trace id, all-zero parent id
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-00000000000000000000000000000000-00f067aa0ba902b7-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- dashes missing or replaced (same length), surrounding space
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '004bf92f3577b34da6a3ce929d0e0e473600f067aa0ba902b701');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, ' ' || :'tp');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- an injection attempt is just a malformed traceparent
BEGIN;
SELECT flowella.set_actor(:'a1', NULL, '00-''); DROP TABLE flowella.api_keys; --aaaaaaaaaaaaaaaa-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT count(*) >= 0 AS api_keys_still_there FROM flowella.api_keys;

--
-- A bad call changes nothing: the previous actor stays in force.
--
BEGIN;
SELECT flowella.set_actor(:'a1', '192.0.2.1', :'tp') \gset
SAVEPOINT s;
SELECT flowella.set_actor(:'a2', '192.0.2.2', 'not a traceparent');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT * FROM regress_actor();
SAVEPOINT s2;
SELECT flowella.set_actor(:'a2', '192.0.2.0/24');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s2;
SELECT * FROM regress_actor();
SAVEPOINT s3;
SELECT flowella.set_actor(NULL, '192.0.2.2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s3;
SELECT * FROM regress_actor();
-- the same, caught inside a PL/pgSQL exception block
DO $$
BEGIN
	PERFORM flowella.set_actor('b1000000-0000-4000-8000-000000000002', NULL, 'bad');
EXCEPTION WHEN invalid_parameter_value THEN
	RAISE NOTICE 'caught %', SQLSTATE;
END
$$;
SELECT * FROM regress_actor();
COMMIT;

--
-- Savepoints: rolling one back restores the actor in force before it;
-- releasing one keeps what was set inside it.
--
BEGIN;
SELECT flowella.set_actor(:'a1', '192.0.2.1') \gset
SAVEPOINT s;
SELECT flowella.set_actor(:'a2', '192.0.2.2') \gset
SELECT * FROM regress_actor();
ROLLBACK TO s;
SELECT * FROM regress_actor();
-- two calls inside one savepoint, nested savepoints, all rolled back
SELECT flowella.set_actor(:'a2') \gset
SAVEPOINT inner1;
SELECT flowella.set_actor(:'a3') \gset
SAVEPOINT inner2;
SELECT flowella.set_actor(:'owner') \gset
SELECT * FROM regress_actor();
ROLLBACK TO s;
SELECT * FROM regress_actor();
-- released: the inner actor is kept, and rolling back a later savepoint at
-- the same level does not take it away
SAVEPOINT r1;
SELECT flowella.set_actor(:'a3', '192.0.2.3') \gset
RELEASE r1;
SELECT * FROM regress_actor();
SAVEPOINT r2;
ROLLBACK TO r2;
SELECT * FROM regress_actor();
-- but rolling back an enclosing savepoint does
SAVEPOINT outer1;
SAVEPOINT r3;
SELECT flowella.set_actor(:'a2', '192.0.2.2') \gset
RELEASE r3;
SELECT * FROM regress_actor();
ROLLBACK TO outer1;
SELECT * FROM regress_actor();
COMMIT;
SELECT * FROM regress_actor();

-- No actor before the savepoint: rolling it back leaves none.
BEGIN;
SAVEPOINT s;
SELECT flowella.set_actor(:'a1') \gset
ROLLBACK TO s;
SELECT * FROM regress_actor();
COMMIT;

--
-- Who may call set_actor: the manager and admin roles (and a superuser);
-- not the verifier, the auditor or a role without grants (42501).
--
BEGIN;
SET LOCAL ROLE regress_manager;
SELECT flowella.set_actor(:'a1') \gset
RESET ROLE;
SELECT * FROM regress_actor();
SET LOCAL ROLE regress_admin;
SELECT flowella.set_actor(:'a2') \gset
RESET ROLE;
SELECT * FROM regress_actor();
COMMIT;
SET ROLE regress_verifier;
BEGIN;
SELECT flowella.set_actor(:'a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_auditor;
BEGIN;
SELECT flowella.set_actor(:'a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_nobody;
BEGIN;
SELECT flowella.set_actor(:'a1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
-- nor read the context back
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'a1') \gset
SELECT flowella.actor_user_id();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

--
-- Management calls without an actor fail with 42501 and change nothing.
--
SET ROLE regress_admin;
SELECT flowella.org_create('Actor Ltd', 'pro', :'owner') AS org \gset
RESET ROLE;
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT key_id AS k FROM flowella.apikey_create(:'org', 'actor test key') \gset
COMMIT;
RESET ROLE;
SELECT count(*) AS audit_before FROM flowella.audit_records WHERE org_id = :'org' \gset

SET ROLE regress_manager;
BEGIN;
SELECT * FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.apikey_revoke(:'k');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT flowella.apikey_set_scopes(:'k', ARRAY['messages:read']);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT * FROM flowella.apikey_replace(:'k');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT * FROM flowella.apikey_create(:'org', 'no actor');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- the actor of the previous transaction does not carry over
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
COMMIT;
SELECT flowella.apikey_revoke(:'k');
\echo :LAST_ERROR_SQLSTATE
-- nor does one set outside a transaction block
SELECT flowella.set_actor(:'owner');
SELECT flowella.apikey_revoke(:'k');
\echo :LAST_ERROR_SQLSTATE
-- nor one whose savepoint was rolled back
BEGIN;
SAVEPOINT s;
SELECT flowella.set_actor(:'owner') \gset
ROLLBACK TO s;
SELECT flowella.apikey_revoke(:'k');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;

-- Nothing changed: the key is still active, unchanged, and no new record.
SELECT revoked_at IS NULL AS active, scopes IS NULL AS inherits,
       (SELECT count(*) FROM flowella.api_keys WHERE org_id = :'org') AS keys
  FROM flowella.api_keys WHERE key_id = :'k';
SELECT count(*) - :audit_before AS new_records
  FROM flowella.audit_records WHERE org_id = :'org';

-- With the actor set in the same transaction, the call works (42501 above
-- was about the missing actor, not the role).
SET ROLE regress_manager;
BEGIN;
SELECT flowella.set_actor(:'owner') \gset
SELECT count(*) AS listed FROM flowella.apikey_list(:'org');
ROLLBACK;
-- Several statements sent as one query string run in one (implicit)
-- transaction: no WARNING, and the actor holds for all of them.
SELECT flowella.set_actor(:'owner') AS set \; SELECT count(*) AS listed FROM flowella.apikey_list(:'org');
-- and is gone afterwards
SELECT count(*) AS listed FROM flowella.apikey_list(:'org');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

DROP FUNCTION regress_actor();
