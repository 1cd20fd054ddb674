/* flowella_apikey--1.1.sql
 *
 * API keys of Flowella organisations.  Read in this order: safety checks,
 * roles, tables, row-level security, functions, triggers, views, grants,
 * dump registration.
 *
 * Every name is schema-qualified and every SECURITY DEFINER function pins
 * search_path, because this script and those functions run with superuser
 * rights (see "Security Considerations for Extension Scripts" in the
 * PostgreSQL documentation).
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION flowella_apikey" to load this file. \quit

/*---- Refuse a planted schema ----*/

/*
 * CREATE EXTENSION reuses an existing schema named in the control file.  If
 * another role created "flowella" beforehand it could have planted objects
 * (CVE-2020-14350, CVE-2022-2625) or could drop ours later, so only an
 * empty schema owned by the installing role or a superuser is accepted.
 */
DO $$
DECLARE
	owner_oid oid;
BEGIN
	SELECT n.nspowner INTO owner_oid
	  FROM pg_catalog.pg_namespace n
	 WHERE n.nspname OPERATOR(pg_catalog.=) 'flowella';

	IF owner_oid OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r
	                   WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER)
	   AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r
	             WHERE r.oid OPERATOR(pg_catalog.=) owner_oid) THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = 'schema "flowella" is owned by another role',
			DETAIL = 'The schema was created before the extension by a role that is neither the installing role nor a superuser.',
			HINT = 'Drop or rename the schema, then create the extension again.';
	END IF;

	IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c
	            WHERE c.relnamespace OPERATOR(pg_catalog.=) 'flowella'::pg_catalog.regnamespace)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
	               WHERE p.pronamespace OPERATOR(pg_catalog.=) 'flowella'::pg_catalog.regnamespace)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t
	               WHERE t.typnamespace OPERATOR(pg_catalog.=) 'flowella'::pg_catalog.regnamespace)
	   OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
	               WHERE o.oprnamespace OPERATOR(pg_catalog.=) 'flowella'::pg_catalog.regnamespace) THEN
		RAISE EXCEPTION USING
			ERRCODE = 'object_not_in_prerequisite_state',
			MESSAGE = 'schema "flowella" is not empty',
			DETAIL = 'Objects created in the schema before the extension could shadow the extension''s own.',
			HINT = 'Drop or rename the schema, then create the extension again.';
	END IF;
END
$$;

/*---- Roles ----*/

/*
 * Cluster-wide NOLOGIN roles; the backend's login roles are granted them.
 * They outlive DROP EXTENSION (roles are not database objects), so they are
 * created only when absent.
 */
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['flowella_apikey_verifier', 'flowella_apikey_manager',
							 'flowella_apikey_admin', 'flowella_apikey_auditor']
	LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
		                WHERE rolname OPERATOR(pg_catalog.=) r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END
$$;

/*---- Validation helpers used by constraints ----*/

/*
 * Row validators for CHECK constraints, in C: the same code the API
 * functions validate their arguments with, so a direct INSERT by the owner
 * cannot store what the API would refuse.
 */
-- A label or organisation name: 1-100 characters, not blank, no control,
-- invisible or bidirectional formatting characters, no embedded token.
CREATE FUNCTION flowella.label_ok(label text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_label_ok'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- A scope set: one-dimensional, no NULLs, every name well formed
-- (lower-case segments separated by colons, e.g. messages:send).
CREATE FUNCTION flowella.scope_set_ok(scopes text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_scope_set_ok'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- The whole of an api_keys row: label as above, prefix and mode agreeing,
-- a 32-byte hash, scopes NULL or a non-empty valid set, expiry after
-- creation, no revoker without a revocation time.  Raises 23514 naming the
-- field rather than returning false.
CREATE FUNCTION flowella.api_key_row_ok(label text, prefix text, mode text,
										secret_hash bytea, scopes text[],
										created_at timestamptz,
										expires_at timestamptz,
										revoked_at timestamptz, revoked_by uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'flowella_api_key_row_ok'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

/*---- Tables ----*/

-- A plan: the API scopes it offers and whether it includes audit-log review.
CREATE TABLE flowella.plans (
	plan		text COLLATE "C" NOT NULL,
	scopes		text[] NOT NULL,
	audit_log	boolean NOT NULL DEFAULT false,
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT plans_pkey PRIMARY KEY (plan),
	CONSTRAINT plans_plan_check
		CHECK (plan OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_-]{0,62}$'),
	CONSTRAINT plans_scopes_check CHECK (flowella.scope_set_ok(scopes))
);

CREATE TABLE flowella.orgs (
	org_id		uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	name		text NOT NULL,
	plan		text COLLATE "C" NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT orgs_pkey PRIMARY KEY (org_id),
	CONSTRAINT orgs_plan_fkey FOREIGN KEY (plan) REFERENCES flowella.plans (plan),
	CONSTRAINT orgs_name_check CHECK (flowella.label_ok(name))
);

CREATE TABLE flowella.members (
	org_id		uuid NOT NULL,
	user_id		uuid NOT NULL,
	role		text NOT NULL,
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT members_pkey PRIMARY KEY (org_id, user_id),
	CONSTRAINT members_org_fkey FOREIGN KEY (org_id) REFERENCES flowella.orgs (org_id),
	CONSTRAINT members_role_check
		CHECK (role OPERATOR(pg_catalog.=) ANY (ARRAY['owner', 'admin', 'user', 'read_only']))
);

/*
 * One row per key, kept for good: revoking sets revoked_at and a trigger
 * forbids deleting rows or changing what identifies a key.  Only the SHA-256
 * of the token is stored; prefix is its public first 18 characters and the
 * unique index on it is the lookup apikey_verify probes.
 */
CREATE TABLE flowella.api_keys (
	key_id		uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	org_id		uuid NOT NULL,
	label		text NOT NULL,
	prefix		text COLLATE "C" NOT NULL,
	secret_hash	bytea NOT NULL,
	scopes		text[],
	mode		text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	created_by	uuid NOT NULL,
	last_used_at timestamptz,
	expires_at	timestamptz,
	revoked_at	timestamptz,
	revoked_by	uuid,
	replaces_key_id uuid,
	CONSTRAINT api_keys_pkey PRIMARY KEY (key_id),
	CONSTRAINT api_keys_prefix_key UNIQUE (prefix),
	CONSTRAINT api_keys_secret_hash_key UNIQUE (secret_hash),
	CONSTRAINT api_keys_org_fkey FOREIGN KEY (org_id) REFERENCES flowella.orgs (org_id),
	CONSTRAINT api_keys_replaces_fkey FOREIGN KEY (replaces_key_id)
		REFERENCES flowella.api_keys (key_id),
	CONSTRAINT api_keys_row_check
		CHECK (flowella.api_key_row_ok(label, prefix, mode, secret_hash, scopes,
									   created_at, expires_at, revoked_at, revoked_by))
);

CREATE INDEX api_keys_org_idx ON flowella.api_keys (org_id, created_at);

/*
 * The audit trail, written only by triggers and never changed afterwards.
 * Nobody reads it directly: flowella.audit_events filters it per role.  No
 * foreign keys: the orgs and keys it names can never be deleted, and a
 * record must not depend on (nor lock) the row it describes.
 */
CREATE SEQUENCE flowella.audit_records_event_id_seq AS bigint;

CREATE TABLE flowella.audit_records (
	event_id	bigint NOT NULL
		DEFAULT pg_catalog.nextval('flowella.audit_records_event_id_seq'::pg_catalog.regclass),
	org_id		uuid NOT NULL,
	key_id		uuid,
	action		text NOT NULL,
	actor_user_id uuid,
	actor_ip	inet,
	trace_context text,
	occurred_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	details		jsonb NOT NULL DEFAULT '{}',
	CONSTRAINT audit_records_pkey PRIMARY KEY (event_id),
	CONSTRAINT audit_records_action_check
		CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['key.created', 'key.revoked',
						  'key.scopes_changed', 'member.role_changed']))
);

ALTER SEQUENCE flowella.audit_records_event_id_seq
	OWNED BY flowella.audit_records.event_id;

CREATE INDEX audit_records_org_idx ON flowella.audit_records (org_id, event_id);
CREATE INDEX audit_records_key_idx ON flowella.audit_records (key_id);

/*---- Functions in C ----*/

-- Request context (transaction-local, see set_actor)
CREATE FUNCTION flowella.set_actor(user_id uuid, client_ip inet DEFAULT NULL,
								   traceparent text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_set_actor'
LANGUAGE C VOLATILE;

CREATE FUNCTION flowella.actor_user_id()
RETURNS uuid
AS 'MODULE_PATHNAME', 'flowella_actor_user_id'
LANGUAGE C STABLE;

CREATE FUNCTION flowella.actor_ip()
RETURNS inet
AS 'MODULE_PATHNAME', 'flowella_actor_ip'
LANGUAGE C STABLE;

CREATE FUNCTION flowella.actor_traceparent()
RETURNS text
AS 'MODULE_PATHNAME', 'flowella_actor_traceparent'
LANGUAGE C STABLE;

-- Counters of last-used tracking (all zero unless preloaded).
CREATE FUNCTION flowella.usage_stats(OUT pending bigint, OUT recorded bigint,
									 OUT dropped bigint, OUT flushes bigint,
									 OUT rows_updated bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'flowella_usage_stats'
LANGUAGE C VOLATILE;

CREATE TYPE flowella.verification AS (
	valid		boolean,
	code		text,
	key_id		uuid,
	org_id		uuid,
	scopes		text[],
	mode		text
);

/*
 * The hot path.  It runs with the caller's rights: it reads the keys
 * through the index directly, so the verifier needs no table privilege.
 */
CREATE FUNCTION flowella.apikey_verify(token text, required_scope text DEFAULT NULL)
RETURNS flowella.verification
AS 'MODULE_PATHNAME', 'flowella_apikey_verify'
LANGUAGE C VOLATILE;

/*
 * Management and provisioning run as the extension owner so that their
 * callers need no write privilege on any table; each checks the actor's
 * role itself before touching a row.
 */
CREATE FUNCTION flowella.apikey_create(org_id uuid, label text,
									   scopes text[] DEFAULT NULL,
									   mode text DEFAULT 'live',
									   expires_at timestamptz DEFAULT NULL)
RETURNS TABLE (key_id uuid, token text, prefix text)
AS 'MODULE_PATHNAME', 'flowella_apikey_create'
LANGUAGE C VOLATILE ROWS 1
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.apikey_replace(old_key_id uuid)
RETURNS TABLE (key_id uuid, token text, prefix text)
AS 'MODULE_PATHNAME', 'flowella_apikey_replace'
LANGUAGE C VOLATILE ROWS 1
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.apikey_revoke(key_id uuid)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'flowella_apikey_revoke'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.apikey_set_scopes(key_id uuid, scopes text[])
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_apikey_set_scopes'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.apikey_list(org_id uuid)
RETURNS TABLE (key_id uuid, label text, prefix text, scopes text[], mode text,
			   created_at timestamptz, created_by uuid, last_used_at timestamptz,
			   expires_at timestamptz, revoked_at timestamptz, revoked_by uuid,
			   status text)
AS 'MODULE_PATHNAME', 'flowella_apikey_list'
LANGUAGE C STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.org_create(name text, plan text, owner_user_id uuid)
RETURNS uuid
AS 'MODULE_PATHNAME', 'flowella_org_create'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.member_set(org_id uuid, user_id uuid, role text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_member_set'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.member_remove(org_id uuid, user_id uuid)
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_member_remove'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION flowella.plan_set(plan text, scopes text[], audit_log boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'flowella_plan_set'
LANGUAGE C VOLATILE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*---- Row-level security ----*/

/*
 * Whether the current actor is owner or admin of an organisation.  SECURITY
 * DEFINER so that a policy on members can call it without recursing into
 * that same policy.
 */
CREATE FUNCTION flowella.actor_manages(org_id uuid)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (
		SELECT 1 FROM flowella.members m
		 WHERE m.org_id OPERATOR(pg_catalog.=) $1
		   AND m.user_id OPERATOR(pg_catalog.=) flowella.actor_user_id()
		   AND m.role OPERATOR(pg_catalog.=) ANY (ARRAY['owner', 'admin']))
$$;

-- Whether the session may read an organisation's audit records.
CREATE FUNCTION flowella.actor_reads_audit(org_id uuid)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT flowella.actor_manages($1)
	   AND EXISTS (
		SELECT 1 FROM flowella.orgs o
		  JOIN flowella.plans p ON p.plan OPERATOR(pg_catalog.=) o.plan
		 WHERE o.org_id OPERATOR(pg_catalog.=) $1 AND p.audit_log)
$$;

ALTER TABLE flowella.plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.plans FORCE ROW LEVEL SECURITY;
ALTER TABLE flowella.orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.orgs FORCE ROW LEVEL SECURITY;
ALTER TABLE flowella.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.members FORCE ROW LEVEL SECURITY;
ALTER TABLE flowella.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE flowella.audit_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE flowella.audit_records FORCE ROW LEVEL SECURITY;

-- Managers see the orgs their actor owns or administers, and what hangs off them.
CREATE POLICY manager_read ON flowella.orgs FOR SELECT
	TO flowella_apikey_manager USING (flowella.actor_manages(org_id));
CREATE POLICY manager_read ON flowella.members FOR SELECT
	TO flowella_apikey_manager USING (flowella.actor_manages(org_id));
CREATE POLICY manager_read ON flowella.api_keys FOR SELECT
	TO flowella_apikey_manager USING (flowella.actor_manages(org_id));
CREATE POLICY manager_read ON flowella.plans FOR SELECT
	TO flowella_apikey_manager
	USING (EXISTS (SELECT 1 FROM flowella.orgs o
					WHERE o.plan OPERATOR(pg_catalog.=) plans.plan
					  AND flowella.actor_manages(o.org_id)));

-- Provisioning admins and auditors read every organisation.
CREATE POLICY admin_read ON flowella.orgs FOR SELECT
	TO flowella_apikey_admin, flowella_apikey_auditor USING (true);
CREATE POLICY admin_read ON flowella.members FOR SELECT
	TO flowella_apikey_admin, flowella_apikey_auditor USING (true);
CREATE POLICY admin_read ON flowella.plans FOR SELECT
	TO flowella_apikey_admin, flowella_apikey_auditor USING (true);
CREATE POLICY auditor_read ON flowella.api_keys FOR SELECT
	TO flowella_apikey_auditor USING (true);

-- audit_records has no policy at all: it is read through flowella.audit_events.

/*---- Triggers ----*/

-- Immutability of keys (spec section 7): fires for every role, the owner too.
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
	   OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
	   OR NEW.replaces_key_id IS DISTINCT FROM OLD.replaces_key_id THEN
		RAISE EXCEPTION USING
			ERRCODE = 'insufficient_privilege',
			MESSAGE = 'cannot change the identity of an API key',
			DETAIL = 'Key id, organisation, label, prefix, hash, mode, creation and expiry fields are immutable.';
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

-- Append-only audit trail and undeletable keys: no UPDATE/DELETE/TRUNCATE.
CREATE FUNCTION flowella.append_only_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION USING
		ERRCODE = 'insufficient_privilege',
		MESSAGE = pg_catalog.format('%s of %I.%I is not allowed', TG_OP,
									TG_TABLE_SCHEMA, TG_TABLE_NAME),
		DETAIL = 'The table is append-only.',
		HINT = 'A superuser may disable the trigger on purpose for maintenance.';
END
$$;

CREATE TRIGGER audit_records_guard BEFORE UPDATE OR DELETE ON flowella.audit_records
	FOR EACH ROW EXECUTE FUNCTION flowella.append_only_guard();
CREATE TRIGGER audit_records_truncate_guard BEFORE TRUNCATE ON flowella.audit_records
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.append_only_guard();
CREATE TRIGGER api_keys_truncate_guard BEFORE TRUNCATE ON flowella.api_keys
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.append_only_guard();
-- Emptying plans, orgs or members would orphan keys and their audit trail.
CREATE TRIGGER plans_truncate_guard BEFORE TRUNCATE ON flowella.plans
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.append_only_guard();
CREATE TRIGGER orgs_truncate_guard BEFORE TRUNCATE ON flowella.orgs
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.append_only_guard();
CREATE TRIGGER members_truncate_guard BEFORE TRUNCATE ON flowella.members
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.append_only_guard();

-- Fire even with session_replication_role = replica: only DISABLE stops them.
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_guard;
ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_truncate_guard;
ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_guard;
ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_truncate_guard;
ALTER TABLE flowella.plans ENABLE ALWAYS TRIGGER plans_truncate_guard;
ALTER TABLE flowella.orgs ENABLE ALWAYS TRIGGER orgs_truncate_guard;
ALTER TABLE flowella.members ENABLE ALWAYS TRIGGER members_truncate_guard;

-- Plan or org changes reach every backend's cached plan scopes at commit.
CREATE FUNCTION flowella.plan_cache_invalidate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowella_plan_cache_invalidate'
LANGUAGE C;

CREATE TRIGGER plans_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON flowella.plans
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.plan_cache_invalidate();
CREATE TRIGGER orgs_cache_invalidate AFTER INSERT OR UPDATE OR DELETE ON flowella.orgs
	FOR EACH STATEMENT EXECUTE FUNCTION flowella.plan_cache_invalidate();
ALTER TABLE flowella.plans ENABLE ALWAYS TRIGGER plans_cache_invalidate;
ALTER TABLE flowella.orgs ENABLE ALWAYS TRIGGER orgs_cache_invalidate;

/*
 * Audit trail: one record per change, in the changing transaction, with the
 * actor set by set_actor.  Details hold old/new values, never hash or token.
 * The functions insert as the owner of audit_records (flowella_audit.c).
 */
CREATE FUNCTION flowella.api_keys_audit()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowella_api_keys_audit'
LANGUAGE C;

CREATE TRIGGER api_keys_audit AFTER INSERT ON flowella.api_keys
	FOR EACH ROW EXECUTE FUNCTION flowella.api_keys_audit();
-- Only revocations and scope changes are events: the last-used flusher's
-- updates do not even call the function.
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

/*---- Views ----*/

/*
 * Views run with their owner's rights, which bypass row-level security, so
 * each one filters by the reader itself: the auditor role sees everything,
 * a manager what its actor may see.
 */
CREATE VIEW flowella.audit_events WITH (security_barrier) AS
	SELECT a.event_id, a.org_id, a.key_id, a.action, a.actor_user_id,
		   a.actor_ip, a.trace_context, a.occurred_at, a.details
	  FROM flowella.audit_records a
	 WHERE pg_catalog.pg_has_role('flowella_apikey_auditor', 'USAGE')
		OR flowella.actor_reads_audit(a.org_id);

CREATE VIEW flowella.rotation_due WITH (security_barrier) AS
	SELECT k.key_id, k.org_id, k.label, k.prefix, k.mode, k.created_at,
		   k.created_by, k.last_used_at
	  FROM flowella.api_keys k
	 WHERE k.revoked_at IS NULL
	   AND (k.expires_at IS NULL OR k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
	   AND k.created_at OPERATOR(pg_catalog.<)
		   (pg_catalog.now() OPERATOR(pg_catalog.-) '12 months'::pg_catalog.interval)
	   AND (pg_catalog.pg_has_role('flowella_apikey_auditor', 'USAGE')
			OR flowella.actor_manages(k.org_id));

/*---- Grants ----*/

REVOKE ALL ON SCHEMA flowella FROM PUBLIC;
GRANT USAGE ON SCHEMA flowella TO flowella_apikey_verifier, flowella_apikey_manager,
	flowella_apikey_admin, flowella_apikey_auditor;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA flowella FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA flowella FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA flowella FROM PUBLIC;
-- Not even the owning role keeps TRUNCATE (a superuser still bypasses this,
-- hence the guard triggers above).
REVOKE TRUNCATE ON ALL TABLES IN SCHEMA flowella FROM CURRENT_USER;
REVOKE ALL ON TYPE flowella.verification FROM PUBLIC;
-- Tables and views have row types, which PUBLIC may use by default.
REVOKE ALL ON TYPE flowella.plans, flowella.orgs, flowella.members,
	flowella.api_keys, flowella.audit_records, flowella.audit_events,
	flowella.rotation_due FROM PUBLIC;
GRANT USAGE ON TYPE flowella.verification TO flowella_apikey_verifier;

GRANT EXECUTE ON FUNCTION flowella.apikey_verify(text, text) TO flowella_apikey_verifier;

GRANT EXECUTE ON FUNCTION
	flowella.set_actor(uuid, inet, text),
	flowella.apikey_create(uuid, text, text[], text, timestamptz),
	flowella.apikey_replace(uuid),
	flowella.apikey_revoke(uuid),
	flowella.apikey_set_scopes(uuid, text[]),
	flowella.apikey_list(uuid)
	TO flowella_apikey_manager;

GRANT EXECUTE ON FUNCTION
	flowella.set_actor(uuid, inet, text),
	flowella.org_create(text, text, uuid),
	flowella.member_set(uuid, uuid, text),
	flowella.member_remove(uuid, uuid),
	flowella.plan_set(text, text[], boolean)
	TO flowella_apikey_admin;

GRANT EXECUTE ON FUNCTION flowella.usage_stats() TO flowella_apikey_auditor;

-- Policies and views call these as the reading role.
GRANT EXECUTE ON FUNCTION flowella.actor_manages(uuid), flowella.actor_reads_audit(uuid)
	TO flowella_apikey_manager, flowella_apikey_auditor;

-- Direct reads: never secret_hash; never any write.
GRANT SELECT (key_id, org_id, label, prefix, scopes, mode, created_at, created_by,
			  last_used_at, expires_at, revoked_at, revoked_by, replaces_key_id)
	ON flowella.api_keys TO flowella_apikey_manager, flowella_apikey_auditor;
GRANT SELECT ON flowella.orgs, flowella.members, flowella.plans
	TO flowella_apikey_manager, flowella_apikey_auditor, flowella_apikey_admin;
GRANT SELECT ON flowella.audit_events TO flowella_apikey_manager, flowella_apikey_auditor;
GRANT SELECT ON flowella.rotation_due TO flowella_apikey_manager, flowella_apikey_auditor;

/*---- pg_dump registration ----*/

SELECT pg_catalog.pg_extension_config_dump('flowella.plans', '');
SELECT pg_catalog.pg_extension_config_dump('flowella.orgs', '');
SELECT pg_catalog.pg_extension_config_dump('flowella.members', '');
SELECT pg_catalog.pg_extension_config_dump('flowella.api_keys', '');
SELECT pg_catalog.pg_extension_config_dump('flowella.audit_records', '');
SELECT pg_catalog.pg_extension_config_dump('flowella.audit_records_event_id_seq', '');
