/* flowella_apikey--1.1--1.2.sql
 *
 * 1.2 holds the security and hardening fixes after 1.1.  Most of them are in
 * the library (pinned search_path for every query it runs outside a
 * SECURITY DEFINER function, verify's caches, the bounded last-used table,
 * redaction of client messages, the last-owner race); the schema changes
 * are these, and none changes data:
 *
 *	- creating a key costs the same in an organisation of 100 000 active
 *	  keys as in an empty one: the count behind the NOTICE on the 51st
 *	  active key stops at 51, probing a new partial index of active keys;
 *	- the audit triggers fire always, also under
 *	  session_replication_role = replica, like the guard triggers: a
 *	  committed change always has its record (restores are still told
 *	  apart by the triggers themselves, not by the replication role);
 *	- the CHECKs of plan names and members' roles call the library, like
 *	  the other CHECKs, so that each rule is written once, in C, for the
 *	  API and the table alike.  Both accept exactly what they did.
 *
 * The same rules as the install script hold: every name schema-qualified,
 * no privilege for PUBLIC.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION flowella_apikey UPDATE TO '1.2'" to load this file. \quit

/*---- Audit triggers fire in every replication role ----*/

ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_audit;
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_audit_update;
ALTER TABLE flowella.members ENABLE ALWAYS TRIGGER members_audit;

/*---- Active keys of an organisation, for the NOTICE on the 51st ----*/

-- apikey_create reads at most 51 entries of it per probe (flowella_manage.c)
CREATE INDEX api_keys_active_idx ON flowella.api_keys (org_id, expires_at)
	WHERE revoked_at IS NULL;

/*---- Plan names and roles: the library's rule ----*/

-- 1 to 63 characters: lower-case letters, digits, "_" and "-", starting
-- with a letter (flwl_plan_name_problem).
CREATE FUNCTION flowella.plan_name_ok(plan text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_plan_name_ok'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- owner, admin, user or read_only (flwl_role_names).
CREATE FUNCTION flowella.role_ok(role text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_role_ok'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

REVOKE ALL ON FUNCTION flowella.plan_name_ok(text), flowella.role_ok(text)
	FROM PUBLIC;

ALTER TABLE flowella.plans
	DROP CONSTRAINT plans_plan_check,
	ADD CONSTRAINT plans_plan_check CHECK (flowella.plan_name_ok(plan));
ALTER TABLE flowella.members
	DROP CONSTRAINT members_role_check,
	ADD CONSTRAINT members_role_check CHECK (flowella.role_ok(role));
