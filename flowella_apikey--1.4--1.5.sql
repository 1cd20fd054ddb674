/* flowella_apikey--1.4--1.5.sql
 *
 * 1.5: audit records anyone can prove untouched (SPEC section 14).  Each
 * organisation's audit records form a hash chain: record_hash is SHA-256 of
 * the previous record's record_hash in the same org (32 zero bytes for the
 * org's first record) followed by the UTF-8 bytes of the record's
 * canonical text,
 *
 *	jsonb_build_object('event_id', event_id, 'org_id', org_id,
 *		'key_id', key_id, 'action', action, 'actor_user_id', actor_user_id,
 *		'actor_ip', actor_ip::text, 'trace_context', trace_context,
 *		'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
 *							   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
 *		'details', details)::text
 *
 * records taken in event_id order.  The audit triggers (C, in the library)
 * write it with each record, one org's records one at a time (see
 * flowella_audit.c); audit_digest and audit_verify read and check it.
 *
 * Data: the existing records get their hashes here, org by org in
 * event_id order, under the table's ACCESS EXCLUSIVE lock (taken by the
 * ADD COLUMN first), so no record is written meanwhile.  The append-only
 * guard is switched off for that one UPDATE and on again (ALWAYS, as it
 * was).
 *
 * audit_events shows the hash as its last column: the view is dropped and
 * created again, re-granted (the pg_stat_statements way; no CREATE OR
 * REPLACE for the extension's own objects).  A view or function of yours
 * that depends on audit_events must be dropped before the update.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.5'" to load this file. \quit

/*---- The hash of each record ----*/

-- Takes ACCESS EXCLUSIVE on audit_records until the update commits: an
-- audit trigger of another session waits, then writes a chained record.
ALTER TABLE flowella.audit_records ADD COLUMN record_hash bytea;

ALTER TABLE flowella.audit_records DISABLE TRIGGER audit_records_guard;

-- Every existing record, org by org, in event_id order.
DO $$
DECLARE
	r record;
	prev bytea;
	prev_org uuid;
BEGIN
	FOR r IN
		SELECT a.event_id, a.org_id,
			   pg_catalog.convert_to(pg_catalog.jsonb_build_object(
				   'event_id', a.event_id, 'org_id', a.org_id, 'key_id', a.key_id,
				   'action', a.action, 'actor_user_id', a.actor_user_id,
				   'actor_ip', CAST(a.actor_ip AS pg_catalog.text),
				   'trace_context', a.trace_context,
				   'occurred_at', pg_catalog.to_char(pg_catalog.timezone('UTC', a.occurred_at),
													 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
				   'details', a.details)::pg_catalog.text, 'UTF8') AS canonical
		  FROM flowella.audit_records a
		 ORDER BY a.org_id, a.event_id
	LOOP
		IF prev_org IS NULL OR prev_org OPERATOR(pg_catalog.<>) r.org_id THEN
			prev := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
			prev_org := r.org_id;
		END IF;
		prev := pg_catalog.sha256(prev OPERATOR(pg_catalog.||) r.canonical);
		UPDATE flowella.audit_records SET record_hash = prev
		 WHERE event_id OPERATOR(pg_catalog.=) r.event_id;
	END LOOP;
END
$$;

ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_guard;

ALTER TABLE flowella.audit_records
	ALTER COLUMN record_hash SET NOT NULL,
	ADD CONSTRAINT audit_records_record_hash_check
		CHECK (pg_catalog.octet_length(record_hash) OPERATOR(pg_catalog.=) 32);

/*---- Digest and verification ----*/

/*
 * audit_digest: what to keep outside the database, the org's last record
 * and its hash, and how many records the chain has.  audit_verify:
 * recompute the org's chain, optionally against a digest kept from
 * earlier.  Both C, run with the caller's rights: they check the caller (the
 * auditor role, or an actor who is owner or admin of the org on a plan
 * with the audit log: what audit_events shows) and read audit_records as
 * its owner, as the audit triggers write it.
 */
CREATE FUNCTION flowella.audit_digest(org_id uuid)
RETURNS TABLE(last_event_id bigint, head_hash bytea, records bigint)
AS 'MODULE_PATHNAME', 'flowella_audit_digest'
LANGUAGE C STABLE;

CREATE FUNCTION flowella.audit_verify(org_id uuid, expected_event_id bigint DEFAULT NULL,
									  expected_hash bytea DEFAULT NULL)
RETURNS TABLE(ok boolean, checked bigint, first_bad_event_id bigint, detail text)
AS 'MODULE_PATHNAME', 'flowella_audit_verify'
LANGUAGE C STABLE;

/*---- audit_events: the hash last ----*/

ALTER EXTENSION flowella_apikey DROP VIEW flowella.audit_events;
DROP VIEW flowella.audit_events;

CREATE VIEW flowella.audit_events WITH (security_barrier) AS
	SELECT a.event_id, a.org_id, a.key_id, a.action, a.actor_user_id,
		   a.actor_ip, a.trace_context, a.occurred_at, a.details, a.record_hash
	  FROM flowella.audit_records a
	 WHERE pg_catalog.pg_has_role('flowella_apikey_auditor', 'USAGE')
		OR flowella.actor_reads_audit(a.org_id);

/*---- Grants ----*/

REVOKE ALL ON flowella.audit_events FROM PUBLIC;
REVOKE TRUNCATE ON flowella.audit_events FROM CURRENT_USER;
REVOKE ALL ON TYPE flowella.audit_events FROM PUBLIC;
GRANT SELECT ON flowella.audit_events TO flowella_apikey_manager, flowella_apikey_auditor;

REVOKE ALL ON FUNCTION flowella.audit_digest(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION flowella.audit_verify(uuid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION flowella.audit_digest(uuid), flowella.audit_verify(uuid, bigint, bytea)
	TO flowella_apikey_manager, flowella_apikey_auditor;
