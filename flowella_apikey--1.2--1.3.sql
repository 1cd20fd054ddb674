/* flowella_apikey--1.2--1.3.sql
 *
 * 1.3: requests, policy, rotation (SPEC sections 10-12).  Each part of the
 * release has its own section below.
 *
 * The same rules as the install script hold: every name schema-qualified,
 * no privilege for PUBLIC, RLS enabled and forced on every table.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.3'" to load this file. \quit

/*---- Usage history (§10) ----*/

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
