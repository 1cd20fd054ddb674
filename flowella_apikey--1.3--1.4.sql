/* flowella_apikey--1.3--1.4.sql
 *
 * 1.4 changes how usage history (SPEC section 10) is stored, not what it
 * shows, and lets hot standbys hand their usage to the primary (SPEC
 * section 13: the last section below).
 *
 * 1.3 kept one row of flowella.api_key_usage per bucket (key, minute,
 * client IP, scope, code), written by INSERT ... ON CONFLICT DO UPDATE:
 * with every request from another client IP that is a heap insert and two
 * index insertions per request, most of the flush's cost.  1.4 keeps one
 * row of flowella.api_key_usage_log per key, minute and flush round, whose
 * parallel arrays hold that minute's buckets (client IP, scope, code,
 * requests): the row and its index entries are paid per key-minute.  Rows
 * are only appended; a bucket flushed in two rounds is in two rows, and
 * readers sum them.
 *
 * flowella.api_key_usage becomes a view with 1.3's columns, one row per
 * bucket, so that what read the table (managers may, for their orgs) reads
 * the same rows.  apikey_usage keeps its signature, result and rules and
 * reads the new table.  The library writes whichever table the schema
 * has, so a database still on 1.3 keeps working until it is updated.
 *
 * Hot standbys: a standby's usage worker logs in to the primary as a role
 * granted the new role flowella_apikey_replica, whose only right is to
 * call flowella.usage_submit; flowella.usage_submissions remembers the
 * last batch applied from each source, so a batch sent again after its
 * answer was lost is counted once.
 *
 * Data: the 1.3 rows are moved into the new table (one row per key and
 * minute) and the old table is dropped, under a lock taken first so that
 * no flush can commit a row between the move and the drop.  The same rules
 * as the install script hold: every name schema-qualified, no privilege
 * for PUBLIC, no CREATE OR REPLACE (apikey_usage is dropped and created
 * again, then granted again).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.4'" to load this file. \quit

-- A flush that committed before this lock is moved below; one that waits
-- for it fails once the table is gone, and its counts stay pending for the
-- next round, which writes the new table.
LOCK TABLE flowella.api_key_usage IN ACCESS EXCLUSIVE MODE;

/*---- The new table ----*/

/*
 * Requests of a key in one minute, as one flush round wrote them: entry i
 * of the four arrays is one bucket, client_ips[i] and scopes[i] NULL when
 * the request gave none (or shared memory folded them into the key's
 * per-minute bucket).  Several rows may hold entries of the same bucket:
 * readers sum them.  org_id is the key's, for the row-level security
 * policies.  No foreign key, as in 1.3: the flush must not wait on a key
 * row another transaction holds, and keys are never deleted anyway.
 */
CREATE TABLE flowella.api_key_usage_log (
	org_id		uuid NOT NULL,
	key_id		uuid NOT NULL,
	minute		timestamptz NOT NULL,
	client_ips	inet[] NOT NULL,
	scopes		text[] NOT NULL,
	codes		text[] NOT NULL,
	requests	bigint[] NOT NULL,
	-- four one-dimensional arrays of one length, at least 1 (array_ndims
	-- is NULL only for an empty array, which the length test refuses)
	CONSTRAINT api_key_usage_log_shape_check
		CHECK (pg_catalog.array_ndims(client_ips) OPERATOR(pg_catalog.=) 1
			   AND pg_catalog.array_ndims(scopes) OPERATOR(pg_catalog.=) 1
			   AND pg_catalog.array_ndims(codes) OPERATOR(pg_catalog.=) 1
			   AND pg_catalog.array_ndims(requests) OPERATOR(pg_catalog.=) 1
			   AND pg_catalog.cardinality(codes) OPERATOR(pg_catalog.>=) 1
			   AND pg_catalog.cardinality(client_ips) OPERATOR(pg_catalog.=) pg_catalog.cardinality(codes)
			   AND pg_catalog.cardinality(scopes) OPERATOR(pg_catalog.=) pg_catalog.cardinality(codes)
			   AND pg_catalog.cardinality(requests) OPERATOR(pg_catalog.=) pg_catalog.cardinality(codes)),
	-- <@ never finds a NULL element in the list
	CONSTRAINT api_key_usage_log_codes_check
		CHECK (codes OPERATOR(pg_catalog.<@) ARRAY['VALID', 'REVOKED', 'EXPIRED',
			'INSUFFICIENT_SCOPE', 'IP_DENIED', 'RATE_LIMITED']),
	-- every one > 0: a NULL element makes ALL answer NULL, which IS TRUE
	-- refuses (a CHECK alone would let NULL pass)
	CONSTRAINT api_key_usage_log_requests_check
		CHECK ((0::pg_catalog.int8 OPERATOR(pg_catalog.<) ALL (requests)) IS TRUE)
);

-- apikey_usage reads a key's minutes; retention deletes by age.
CREATE INDEX api_key_usage_log_key_minute ON flowella.api_key_usage_log (key_id, minute);
CREATE INDEX api_key_usage_log_minute ON flowella.api_key_usage_log (minute);

ALTER TABLE flowella.api_key_usage_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.api_key_usage_log FORCE ROW LEVEL SECURITY;

-- Managers read the usage of the orgs their actor manages; auditors all.
CREATE POLICY manager_read ON flowella.api_key_usage_log FOR SELECT
	TO flowella_apikey_manager USING (flowella.actor_manages(org_id));
CREATE POLICY auditor_read ON flowella.api_key_usage_log FOR SELECT
	TO flowella_apikey_auditor USING (true);

/*---- Moving the 1.3 rows ----*/

-- One row per key and minute, its buckets in the order apikey_usage shows.
INSERT INTO flowella.api_key_usage_log
	(org_id, key_id, minute, client_ips, scopes, codes, requests)
SELECT u.org_id, u.key_id, u.minute,
	   pg_catalog.array_agg(u.client_ip ORDER BY u.client_ip, u.scope, u.code),
	   pg_catalog.array_agg(u.scope ORDER BY u.client_ip, u.scope, u.code),
	   pg_catalog.array_agg(u.code ORDER BY u.client_ip, u.scope, u.code),
	   pg_catalog.array_agg(u.requests ORDER BY u.client_ip, u.scope, u.code)
  FROM flowella.api_key_usage u
 GROUP BY u.org_id, u.key_id, u.minute;

-- Out of the extension first (the table's ALTER also takes it off the list
-- of tables pg_dump dumps), then dropped.
ALTER EXTENSION flowella_apikey DROP FUNCTION
	flowella.apikey_usage(uuid, timestamptz, timestamptz);
DROP FUNCTION flowella.apikey_usage(uuid, timestamptz, timestamptz);
ALTER EXTENSION flowella_apikey DROP TABLE flowella.api_key_usage;
DROP TABLE flowella.api_key_usage;

/*---- flowella.api_key_usage: 1.3's rows, as a view ----*/

/*
 * One row per bucket, its requests summed over the rounds that wrote it.
 * A view reads its table with its owner's rights, which bypass row-level
 * security, so it filters by the reader itself, as audit_events does: the
 * auditor role sees every org, a manager the orgs its actor manages.
 */
CREATE VIEW flowella.api_key_usage WITH (security_barrier) AS
	SELECT l.org_id, l.key_id, l.minute, e.client_ip, e.scope, e.code,
		   CAST(pg_catalog.sum(e.requests) AS pg_catalog.int8) AS requests
	  FROM flowella.api_key_usage_log l,
		   ROWS FROM (pg_catalog.unnest(l.client_ips), pg_catalog.unnest(l.scopes),
					  pg_catalog.unnest(l.codes), pg_catalog.unnest(l.requests))
			 AS e(client_ip, scope, code, requests)
	 WHERE pg_catalog.pg_has_role('flowella_apikey_auditor', 'USAGE')
		OR flowella.actor_manages(l.org_id)
	 GROUP BY l.org_id, l.key_id, l.minute, e.client_ip, e.scope, e.code;

/*---- apikey_usage reads the new table ----*/

/*
 * As in 1.3: a key's buckets that overlap [since, until] (a bucket covers
 * its minute), in the order of the spec, each bucket's rounds summed.  It
 * runs as the caller (SECURITY INVOKER), so the policies above decide what
 * it can read: the access check only turns "nothing visible" into the
 * 42704 every key call answers for a key the actor may not manage.
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
		SELECT u.minute, e.client_ip, e.scope, e.code,
			   CAST(pg_catalog.sum(e.requests) AS pg_catalog.int8)
		  FROM flowella.api_key_usage_log u,
			   ROWS FROM (pg_catalog.unnest(u.client_ips), pg_catalog.unnest(u.scopes),
						  pg_catalog.unnest(u.codes), pg_catalog.unnest(u.requests))
				 AS e(client_ip, scope, code, requests)
		 WHERE u.key_id OPERATOR(pg_catalog.=) $1
		   AND u.minute OPERATOR(pg_catalog.>)
			   (since OPERATOR(pg_catalog.-) '1 minute'::pg_catalog.interval)
		   AND u.minute OPERATOR(pg_catalog.<=) until
		 GROUP BY u.minute, e.client_ip, e.scope, e.code
		 ORDER BY u.minute, e.client_ip, e.scope, e.code;
END
$$;

/*---- Grants ----*/

-- As 1.3 gave the table: SELECT for managers and auditors (the policies
-- and the view's filter choose the rows), no write, no TRUNCATE.
REVOKE ALL ON flowella.api_key_usage_log, flowella.api_key_usage FROM PUBLIC;
REVOKE TRUNCATE ON flowella.api_key_usage_log, flowella.api_key_usage FROM CURRENT_USER;
REVOKE ALL ON TYPE flowella.api_key_usage_log, flowella.api_key_usage FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.apikey_usage(uuid, timestamptz, timestamptz) FROM PUBLIC;
GRANT SELECT ON flowella.api_key_usage_log, flowella.api_key_usage
	TO flowella_apikey_manager, flowella_apikey_auditor;
GRANT EXECUTE ON FUNCTION flowella.apikey_usage(uuid, timestamptz, timestamptz)
	TO flowella_apikey_manager, flowella_apikey_auditor;

SELECT pg_catalog.pg_extension_config_dump('flowella.api_key_usage_log', '');

/*==== Usage from hot standbys (SPEC §13) ====*/

/*
 * The role a standby's usage worker logs in as (a login role granted this
 * one): it may call usage_submit and nothing else of the extension.
 */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
	                WHERE rolname OPERATOR(pg_catalog.=) 'flowella_apikey_replica') THEN
		CREATE ROLE flowella_apikey_replica NOLOGIN;
	END IF;
END
$$;

/*
 * The last batch applied from each source: one run of one standby (a
 * random id drawn at each start of its server), so that a batch sent again
 * after its answer was lost is recognised and counted once.  Batches of a
 * source arrive in order (one flush worker per database at a time).
 */
CREATE TABLE flowella.usage_submissions (
	source		uuid PRIMARY KEY,
	last_batch	bigint NOT NULL,
	submitted_at timestamptz NOT NULL,
	CONSTRAINT usage_submissions_batch_check
		CHECK (last_batch OPERATOR(pg_catalog.>) 0)
);

/*
 * usage_submit: add one batch of a standby's counts (the buckets in six
 * parallel arrays, as verify counted them there) and last uses (two more)
 * to this database.  Returns false, changing nothing, for a batch of that
 * source already applied.  Input is checked whole before anything is
 * written (22023 otherwise); keys this database does not have are
 * ignored.  SECURITY DEFINER: the replica role holds no table privilege.
 */
CREATE FUNCTION flowella.usage_submit(source uuid, batch bigint,
	key_ids uuid[], minutes timestamptz[], client_ips inet[], scopes text[],
	codes text[], requests bigint[], used_keys uuid[], used_at timestamptz[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_usage_submit'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- No policy: only the table's owner (usage_submit runs as it) and
-- superusers reach it, as "every table has forced row-level security".
ALTER TABLE flowella.usage_submissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.usage_submissions FORCE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('flowella.usage_submissions', '');

REVOKE ALL ON flowella.usage_submissions FROM PUBLIC;
REVOKE TRUNCATE ON flowella.usage_submissions FROM CURRENT_USER;
REVOKE ALL ON TYPE flowella.usage_submissions FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.usage_submit(uuid, bigint, uuid[], timestamptz[],
	inet[], text[], text[], bigint[], uuid[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flowella.usage_submit(uuid, bigint, uuid[], timestamptz[],
	inet[], text[], text[], bigint[], uuid[], timestamptz[]) TO flowella_apikey_replica;
GRANT USAGE ON SCHEMA flowella TO flowella_apikey_replica;
