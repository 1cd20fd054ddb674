/* flowella_apikey--1.0--1.1.sql
 *
 * 1.1 makes apikey_create cheaper, with the same behaviour:
 *
 *	- the seven CHECK constraints of api_keys become one, a C function that
 *	  raises an error naming the bad field (PostgreSQL reads every CHECK
 *	  expression back from the catalog on each INSERT);
 *	- the audit triggers are written in C and insert as the owner of
 *	  audit_records; the helpers of the plpgsql ones, audit_write and
 *	  change_is_restore, go away.
 *
 * Keys, tokens, audit records and their numbering are untouched: the new
 * constraint is validated against every existing row as it is added.
 * The same rules as the install script hold: every name schema-qualified,
 * no privilege for PUBLIC.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.1'" to load this file. \quit

/*---- One CHECK for api_keys rows ----*/

CREATE FUNCTION flowella.api_key_row_ok(label text, prefix text, mode text,
										secret_hash bytea, scopes text[],
										created_at timestamptz,
										expires_at timestamptz,
										revoked_at timestamptz, revoked_by uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_api_key_row_ok'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

REVOKE ALL ON FUNCTION flowella.api_key_row_ok(text, text, text, bytea, text[],
											   timestamptz, timestamptz,
											   timestamptz, uuid) FROM PUBLIC;

ALTER TABLE flowella.api_keys
	DROP CONSTRAINT api_keys_label_check,
	DROP CONSTRAINT api_keys_prefix_check,
	DROP CONSTRAINT api_keys_mode_check,
	DROP CONSTRAINT api_keys_secret_hash_check,
	DROP CONSTRAINT api_keys_scopes_check,
	DROP CONSTRAINT api_keys_expiry_check,
	DROP CONSTRAINT api_keys_revoked_check,
	ADD CONSTRAINT api_keys_row_check
		CHECK (flowella.api_key_row_ok(label, prefix, mode, secret_hash, scopes,
									   created_at, expires_at, revoked_at, revoked_by));

/*---- Audit triggers in C ----*/

/*
 * Drop and create rather than replace: a C trigger function carries no
 * SECURITY DEFINER or search_path, and a fresh 1.1 install has exactly
 * these definitions.
 */
DROP TRIGGER api_keys_audit ON flowella.api_keys;
DROP TRIGGER api_keys_audit_update ON flowella.api_keys;
DROP TRIGGER members_audit ON flowella.members;
DROP FUNCTION flowella.api_keys_audit();
DROP FUNCTION flowella.members_audit();
DROP FUNCTION flowella.audit_write(uuid, uuid, text, jsonb);
-- only the 1.0 plpgsql triggers called it; the C ones ask the library
DROP FUNCTION flowella.change_is_restore();

CREATE FUNCTION flowella.api_keys_audit()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowella_api_keys_audit'
LANGUAGE C;

CREATE TRIGGER api_keys_audit AFTER INSERT ON flowella.api_keys
	FOR EACH ROW EXECUTE FUNCTION flowella.api_keys_audit();
CREATE TRIGGER api_keys_audit_update AFTER UPDATE ON flowella.api_keys
	FOR EACH ROW
	WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
		  OR OLD.scopes IS DISTINCT FROM NEW.scopes)
	EXECUTE FUNCTION flowella.api_keys_audit();

CREATE FUNCTION flowella.members_audit()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowella_members_audit'
LANGUAGE C;

CREATE TRIGGER members_audit AFTER INSERT OR UPDATE OR DELETE ON flowella.members
	FOR EACH ROW EXECUTE FUNCTION flowella.members_audit();

REVOKE ALL ON FUNCTION flowella.api_keys_audit(), flowella.members_audit() FROM PUBLIC;
