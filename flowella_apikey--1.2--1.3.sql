/* flowella_apikey--1.2--1.3.sql
 *
 * 1.3 adds, in sections that each stand alone:
 *
 *	- per-key policy (SPEC section 11): an IP allowlist and a rate limit
 *	  per key, set by apikey_set_policy, held by the row CHECK, audited as
 *	  key.policy_changed, shown by apikey_list and applied by apikey_verify,
 *	  which takes the client's address and answers IP_DENIED and
 *	  RATE_LIMITED;
 *	- rotation with overlap (SPEC section 12): apikey_replace takes a grace
 *	  period that moves the old key's expiry earlier, audited as
 *	  key.expiry_changed; the guard trigger lets an expiry move earlier,
 *	  never later.
 *	- usage history (SPEC section 10): every request of an identified key
 *	  counted per minute, client IP, scope and code in shared memory and
 *	  written by the usage workers to flowella.api_key_usage (forced RLS),
 *	  read with apikey_usage.
 *
 * Functions whose signature or result changes are taken out of the
 * extension, dropped, created again and granted again, the way
 * pg_stat_statements 1.9 -> 1.10 does; the new ones call new C symbols
 * (flowella_apikey_list_1_3, ...), so that a database still on 1.2 keeps
 * its functions' behaviour under the new library until it is updated.
 *
 * No data changes: the new columns start NULL (no policy), which every
 * existing row passes.  The same rules as the install script hold: every
 * name schema-qualified, no privilege for PUBLIC.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.3'" to load this file. \quit

/*==== Per-key policy and rotation with overlap ====*/

/*---- Policy columns, held by the row CHECK ----*/

-- NULL = no restriction: any client address, no rate limit.
ALTER TABLE flowella.api_keys
	ADD COLUMN allowed_ips cidr[],
	ADD COLUMN rate_limit_per_minute integer;

/*
 * The one CHECK of api_keys gains the policy columns: a non-empty
 * one-dimensional allowlist without NULLs, a limit from 1 to 1 000 000
 * (the same rule as apikey_set_policy).  The same C function as the
 * 9-argument form, which it replaces.
 */
CREATE FUNCTION flowella.api_key_row_ok(label text, prefix text, mode text,
										secret_hash bytea, scopes text[],
										created_at timestamptz,
										expires_at timestamptz,
										revoked_at timestamptz, revoked_by uuid,
										allowed_ips cidr[],
										rate_limit_per_minute integer)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_api_key_row_ok'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

ALTER TABLE flowella.api_keys
	DROP CONSTRAINT api_keys_row_check,
	ADD CONSTRAINT api_keys_row_check
		CHECK (flowella.api_key_row_ok(label, prefix, mode, secret_hash, scopes,
									   created_at, expires_at, revoked_at, revoked_by,
									   allowed_ips, rate_limit_per_minute));

DROP FUNCTION flowella.api_key_row_ok(text, text, text, bytea, text[],
									  timestamptz, timestamptz, timestamptz, uuid);

/*---- Audit actions ----*/

ALTER TABLE flowella.audit_records
	DROP CONSTRAINT audit_records_action_check,
	ADD CONSTRAINT audit_records_action_check
		CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['key.created', 'key.revoked',
						  'key.scopes_changed', 'member.role_changed',
						  'key.policy_changed', 'key.expiry_changed']));

/*
 * The audit trigger on updates also fires for expiry and policy changes
 * (key.expiry_changed, key.policy_changed); last-used updates still do not
 * call it.
 */
DROP TRIGGER api_keys_audit_update ON flowella.api_keys;
CREATE TRIGGER api_keys_audit_update AFTER UPDATE ON flowella.api_keys
	FOR EACH ROW
	WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
		  OR OLD.scopes IS DISTINCT FROM NEW.scopes
		  OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
		  OR OLD.allowed_ips IS DISTINCT FROM NEW.allowed_ips
		  OR OLD.rate_limit_per_minute IS DISTINCT FROM NEW.rate_limit_per_minute)
	EXECUTE FUNCTION flowella.api_keys_audit();
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_audit_update;

/*---- The immutability guard: expiry may move earlier ----*/

/*
 * As in 1.0, with two changes: expires_at may move earlier (a key given a
 * first expiry, or an earlier one), never later and never back to NULL, so
 * that rotation with a grace period can end the old key; and a revoked
 * key's policy and expiry are frozen like its scopes.  Dropped and created
 * rather than replaced (no CREATE OR REPLACE for the extension's objects).
 */
DROP TRIGGER api_keys_guard ON flowella.api_keys;
DROP FUNCTION flowella.api_keys_guard();

CREATE FUNCTION flowella.api_keys_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP OPERATOR(pg_catalog.<>) 'UPDATE' THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = 'API keys cannot be deleted',
			DETAIL = 'Key rows are kept for the audit trail.',
			HINT = 'Use flowella.apikey_revoke to disable a key.';
	END IF;

	IF NEW.key_id IS DISTINCT FROM OLD.key_id
	   OR NEW.org_id IS DISTINCT FROM OLD.org_id
	   OR NEW.label IS DISTINCT FROM OLD.label
	   OR NEW.prefix IS DISTINCT FROM OLD.prefix
	   OR NEW.secret_hash IS DISTINCT FROM OLD.secret_hash
	   OR NEW.mode IS DISTINCT FROM OLD.mode
	   OR NEW.created_at IS DISTINCT FROM OLD.created_at
	   OR NEW.created_by IS DISTINCT FROM OLD.created_by
	   OR NEW.replaces_key_id IS DISTINCT FROM OLD.replaces_key_id THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = 'cannot change the identity of an API key',
			DETAIL = 'Key id, organisation, label, prefix, hash, mode and creation fields are immutable.';
	END IF;

	IF (NEW.expires_at IS NULL AND OLD.expires_at IS NOT NULL)
	   OR NEW.expires_at OPERATOR(pg_catalog.>) OLD.expires_at THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = 'cannot extend the expiry of an API key',
			DETAIL = 'An expiry may only be moved earlier.',
			HINT = 'Use flowella.apikey_replace to issue a key with a longer life.';
	END IF;

	IF OLD.revoked_at IS NOT NULL THEN
		IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
		   OR NEW.revoked_by IS DISTINCT FROM OLD.revoked_by THEN
			RAISE EXCEPTION USING
				ERRCODE = 'insufficient_privilege',
				MESSAGE = 'cannot undo or change the revocation of an API key',
				DETAIL = 'Revocation is permanent.';
		END IF;
		IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
			RAISE EXCEPTION USING
				ERRCODE = 'object_not_in_prerequisite_state',
				MESSAGE = 'cannot change the scopes of a revoked API key';
		END IF;
		IF NEW.allowed_ips IS DISTINCT FROM OLD.allowed_ips
		   OR NEW.rate_limit_per_minute IS DISTINCT FROM OLD.rate_limit_per_minute THEN
			RAISE EXCEPTION USING
				ERRCODE = 'object_not_in_prerequisite_state',
				MESSAGE = 'cannot change the policy of a revoked API key';
		END IF;
		IF NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
			RAISE EXCEPTION USING
				ERRCODE = 'object_not_in_prerequisite_state',
				MESSAGE = 'cannot change the expiry of a revoked API key';
		END IF;
	END IF;

	IF NEW.last_used_at OPERATOR(pg_catalog.<) OLD.last_used_at
	   OR (NEW.last_used_at IS NULL AND OLD.last_used_at IS NOT NULL) THEN
		NEW.last_used_at := OLD.last_used_at;	-- never move backwards
	END IF;

	RETURN NEW;
END
$$;

CREATE TRIGGER api_keys_guard BEFORE UPDATE OR DELETE ON flowella.api_keys
	FOR EACH ROW EXECUTE FUNCTION flowella.api_keys_guard();
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_guard;

REVOKE ALL ON FUNCTION flowella.api_keys_guard() FROM PUBLIC;

/*---- apikey_verify: client address, IP_DENIED, RATE_LIMITED ----*/

-- New columns come last, so 1.1 callers reading by name or position keep working.
ALTER TYPE flowella.verification
	ADD ATTRIBUTE ratelimit_remaining integer,
	ADD ATTRIBUTE retry_after_ms integer;

/*
 * The same C function, which reads its third argument only when given one
 * and fills the two new columns only when the result type has them.
 */
ALTER EXTENSION flowella_apikey DROP FUNCTION flowella.apikey_verify(text, text);
DROP FUNCTION flowella.apikey_verify(text, text);

CREATE FUNCTION flowella.apikey_verify(token text, required_scope text DEFAULT NULL,
									   client_ip inet DEFAULT NULL)
RETURNS flowella.verification
AS 'MODULE_PATHNAME', 'flowella_apikey_verify'
LANGUAGE C VOLATILE;

/*---- Setting a key's policy ----*/

CREATE FUNCTION flowella.apikey_set_policy(key_id uuid, allowed_ips cidr[],
										   rate_limit_per_minute integer)
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_apikey_set_policy'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*---- apikey_list shows the policy ----*/

ALTER EXTENSION flowella_apikey DROP FUNCTION flowella.apikey_list(uuid);
DROP FUNCTION flowella.apikey_list(uuid);

CREATE FUNCTION flowella.apikey_list(org_id uuid)
RETURNS TABLE (key_id uuid, label text, prefix text, scopes text[], mode text,
			   created_at timestamptz, created_by uuid, last_used_at timestamptz,
			   expires_at timestamptz, revoked_at timestamptz, revoked_by uuid,
			   status text, allowed_ips cidr[], rate_limit_per_minute integer)
AS 'MODULE_PATHNAME', 'flowella_apikey_list_1_3'
LANGUAGE C STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*---- apikey_replace: copies the policy, takes a grace period ----*/

ALTER EXTENSION flowella_apikey DROP FUNCTION flowella.apikey_replace(uuid);
DROP FUNCTION flowella.apikey_replace(uuid);

CREATE FUNCTION flowella.apikey_replace(old_key_id uuid, grace interval DEFAULT NULL)
RETURNS TABLE (key_id uuid, token text, prefix text)
AS 'MODULE_PATHNAME', 'flowella_apikey_replace_1_3'
LANGUAGE C VOLATILE ROWS 1
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*---- Rate limiter counters ----*/

-- Buckets tracked in this server's shared memory, buckets evicted, and
-- requests let through untracked because the table was full of buckets in
-- use (flowella.ratelimit_max_keys); NULL and zeros unless preloaded.
CREATE FUNCTION flowella.ratelimit_stats(OUT tracked_keys bigint, OUT evicted bigint,
										 OUT untracked bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'flowella_ratelimit_stats'
LANGUAGE C VOLATILE;

/*---- Grants ----*/

REVOKE ALL ON FUNCTION
	flowella.api_key_row_ok(text, text, text, bytea, text[], timestamptz,
							timestamptz, timestamptz, uuid, cidr[], integer),
	flowella.apikey_verify(text, text, inet),
	flowella.apikey_set_policy(uuid, cidr[], integer),
	flowella.apikey_list(uuid),
	flowella.apikey_replace(uuid, interval),
	flowella.ratelimit_stats()
	FROM PUBLIC;

GRANT EXECUTE ON FUNCTION flowella.ratelimit_stats() TO flowella_apikey_auditor;

GRANT EXECUTE ON FUNCTION flowella.apikey_verify(text, text, inet)
	TO flowella_apikey_verifier;
GRANT EXECUTE ON FUNCTION
	flowella.apikey_set_policy(uuid, cidr[], integer),
	flowella.apikey_list(uuid),
	flowella.apikey_replace(uuid, interval)
	TO flowella_apikey_manager;

-- Direct reads of the policy, like the other columns (RLS filters the rows).
GRANT SELECT (allowed_ips, rate_limit_per_minute) ON flowella.api_keys
	TO flowella_apikey_manager, flowella_apikey_auditor;

/*==== Usage history (SPEC section 10) ====*/

/*
 * Per-minute usage buckets, written by the usage flush worker from shared
 * memory (see flowella_usage.c): requests of a key in one minute from one
 * client IP for one required scope answered with one code.  client_ip and
 * scope are NULL when the request did not give them, and also when shared
 * memory was full and folded them into the key's per-minute row: the
 * count is exact, the detail may coarsen.  org_id is the key's, for the
 * row-level security policies.  No foreign key: the flush must not wait on
 * a key row another transaction holds, and keys are never deleted anyway.
 */
CREATE TABLE flowella.api_key_usage (
	org_id		uuid NOT NULL,
	key_id		uuid NOT NULL,
	minute		timestamptz NOT NULL,
	client_ip	inet,
	scope		text,
	code		text NOT NULL,
	requests	bigint NOT NULL,
	CONSTRAINT api_key_usage_requests_check
		CHECK (requests OPERATOR(pg_catalog.>) 0),
	CONSTRAINT api_key_usage_code_check
		CHECK (code OPERATOR(pg_catalog.=) ANY (ARRAY['VALID', 'REVOKED', 'EXPIRED',
			'INSUFFICIENT_SCOPE', 'IP_DENIED', 'RATE_LIMITED']))
);

/*
 * One row per bucket.  NULLS NOT DISTINCT would say it directly but exists
 * only from PostgreSQL 15, so each nullable column is indexed as a flag
 * plus a value no NULL can collide with.  The flush names these
 * expressions in its ON CONFLICT; apikey_usage reads by its leading
 * (key_id, minute).
 */
CREATE UNIQUE INDEX api_key_usage_bucket ON flowella.api_key_usage
	(key_id, minute, (client_ip IS NULL),
	 (COALESCE(client_ip, '0.0.0.0'::pg_catalog.inet)),
	 (scope IS NULL), (COALESCE(scope, ''::pg_catalog.text)), code);

-- Retention deletes by age.
CREATE INDEX api_key_usage_minute ON flowella.api_key_usage (minute);

ALTER TABLE flowella.api_key_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.api_key_usage FORCE ROW LEVEL SECURITY;

-- Managers read the usage of the orgs their actor manages; auditors all.
CREATE POLICY manager_read ON flowella.api_key_usage FOR SELECT
	TO flowella_apikey_manager USING (flowella.actor_manages(org_id));
CREATE POLICY auditor_read ON flowella.api_key_usage FOR SELECT
	TO flowella_apikey_auditor USING (true);

/*
 * Whether set_actor ran in this transaction: apikey_usage runs as its
 * caller, who may not read the actor itself.
 */
CREATE FUNCTION flowella.actor_is_set()
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT flowella.actor_user_id() IS NOT NULL
$$;

/*
 * apikey_usage: a key's buckets that overlap [since, until] (a bucket
 * covers its minute), in the order of the spec.  It runs as the caller
 * (SECURITY INVOKER), so the policies above decide what it can read: the
 * access check only turns "nothing visible" into the 42704 every key call
 * answers for a key the actor may not manage.
 */
CREATE FUNCTION flowella.apikey_usage(key_id uuid,
	since timestamptz DEFAULT pg_catalog.now() OPERATOR(pg_catalog.-) '24 hours'::pg_catalog.interval,
	until timestamptz DEFAULT pg_catalog.now())
RETURNS TABLE(minute timestamptz, client_ip inet, scope text, code text, requests bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	auditor boolean := pg_catalog.pg_has_role('flowella_apikey_auditor', 'USAGE');
BEGIN
	IF since IS NULL OR until IS NULL THEN
		RAISE EXCEPTION 'invalid time window'
			USING ERRCODE = '22023',
				  DETAIL = 'Neither since nor until may be null.';
	END IF;
	IF since OPERATOR(pg_catalog.>) until THEN
		RAISE EXCEPTION 'invalid time window'
			USING ERRCODE = '22023',
				  DETAIL = 'since must not be later than until.';
	END IF;
	IF NOT auditor THEN
		IF NOT flowella.actor_is_set() THEN
			RAISE EXCEPTION 'no actor is set for this transaction'
				USING ERRCODE = '42501',
					  HINT = 'Call flowella.set_actor at the start of the transaction.';
		END IF;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM flowella.api_keys k
					WHERE k.key_id OPERATOR(pg_catalog.=) $1
					  AND (auditor OR flowella.actor_manages(k.org_id))) THEN
		RAISE EXCEPTION 'API key not found'
			USING ERRCODE = '42704',
				  DETAIL = 'No key with this id exists, or the acting user may not manage it.';
	END IF;
	RETURN QUERY
		SELECT u.minute, u.client_ip, u.scope, u.code, u.requests
		  FROM flowella.api_key_usage u
		 WHERE u.key_id OPERATOR(pg_catalog.=) $1
		   AND u.minute OPERATOR(pg_catalog.>)
			   (since OPERATOR(pg_catalog.-) '1 minute'::pg_catalog.interval)
		   AND u.minute OPERATOR(pg_catalog.<=) until
		 ORDER BY u.minute, u.client_ip, u.scope, u.code;
END
$$;

/* usage_stats gains the pipeline's counters (new columns last). */
ALTER EXTENSION flowella_apikey DROP FUNCTION flowella.usage_stats();
DROP FUNCTION flowella.usage_stats();
CREATE FUNCTION flowella.usage_stats(OUT pending bigint, OUT recorded bigint,
	OUT dropped bigint, OUT flushes bigint, OUT rows_updated bigint,
	OUT buckets bigint, OUT requests_counted bigint, OUT requests_pending bigint,
	OUT requests_written bigint, OUT requests_folded bigint,
	OUT requests_overflowed bigint, OUT requests_discarded bigint,
	OUT rows_pruned bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'flowella_usage_stats'
LANGUAGE C VOLATILE;

REVOKE ALL ON flowella.api_key_usage FROM PUBLIC;
REVOKE TRUNCATE ON flowella.api_key_usage FROM CURRENT_USER;
REVOKE ALL ON TYPE flowella.api_key_usage FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.apikey_usage(uuid, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.usage_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.actor_is_set() FROM PUBLIC;
GRANT SELECT ON flowella.api_key_usage TO flowella_apikey_manager, flowella_apikey_auditor;
GRANT EXECUTE ON FUNCTION flowella.apikey_usage(uuid, timestamptz, timestamptz)
	TO flowella_apikey_manager, flowella_apikey_auditor;
GRANT EXECUTE ON FUNCTION flowella.usage_stats() TO flowella_apikey_auditor;
GRANT EXECUTE ON FUNCTION flowella.actor_is_set() TO flowella_apikey_manager;

SELECT pg_catalog.pg_extension_config_dump('flowella.api_key_usage', '');
