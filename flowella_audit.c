/*-------------------------------------------------------------------------
 *
 * flowella_audit.c
 *		The audit trail: AFTER ROW triggers on api_keys and members that
 *		write one record per key create, revoke, scope, policy and expiry
 *		change and per member role change, in the changing transaction.
 *
 * They are written in C because every apikey_create pays for one: a
 * plpgsql trigger calling a SECURITY DEFINER helper cost about a quarter of
 * a create.  Here the record goes in through one saved INSERT per action,
 * whose jsonb_build_object gives details the same shape as to_jsonb would.
 *
 * Whoever changes a key (the API's definer, the table owner, a superuser
 * restoring a dump), the record is inserted as the owner of audit_records
 * with FORCE ROW LEVEL SECURITY set aside, the way PostgreSQL's own
 * foreign-key triggers query the referenced table: nobody needs, or gets,
 * any right on audit_records to cause a record, and the function itself
 * is not SECURITY DEFINER.
 *
 * They run in the search_path of whoever changes the row, a superuser's
 * session in a database whose owner chose that path included.  So every
 * name below is schema-qualified and the INSERT runs with search_path
 * pinned to pg_catalog, pg_temp (flwl_query_exec): a change through the
 * API, whose functions pin that path already, pays one strcmp for it; a
 * direct change pays a GUC save and restore per record.
 *
 * The policy columns exist from version 1.3 on; on an older schema the
 * trigger neither records nor looks for them (has_column).
 *
 * Rows a superuser copies in with no API call running and no actor set are
 * a restore: their audit records come back with them, so they are not
 * recorded again (see flwl_change_is_restore).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "flowella_apikey.h"

PG_FUNCTION_INFO_V1(flowella_api_keys_audit);
PG_FUNCTION_INFO_V1(flowella_members_audit);

/*
 * The common head of every record: $1 org, $2 key, $3 actor, $4 client IP,
 * $5 trace context.  The action is a literal, the details follow from $6.
 */
#define AUDIT_INSERT(action) \
	"INSERT INTO flowella.audit_records" \
	" (org_id, key_id, action, actor_user_id, actor_ip, trace_context, details)" \
	" VALUES ($1, $2, '" action "', $3, $4, $5, pg_catalog.jsonb_build_object("
#define AUDIT_HEAD_TYPES	UUIDOID, UUIDOID, UUIDOID, INETOID, TEXTOID
#define AUDIT_HEAD_NARGS	5

static FlwlQuery q_key_created = {
	AUDIT_INSERT("key.created")
	"'label', $6, 'prefix', $7, 'mode', $8, 'scopes', $9,"
	" 'expires_at', $10, 'replaces_key_id', $11))",
	AUDIT_HEAD_NARGS + 6,
	{AUDIT_HEAD_TYPES, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
	TIMESTAMPTZOID, UUIDOID}
};

/* key.created on a 1.3 schema: the policy the key starts with, too */
static FlwlQuery q_key_created_1_3 = {
	AUDIT_INSERT("key.created")
	"'label', $6, 'prefix', $7, 'mode', $8, 'scopes', $9,"
	" 'expires_at', $10, 'replaces_key_id', $11,"
	" 'allowed_ips', $12, 'rate_limit_per_minute', $13))",
	AUDIT_HEAD_NARGS + 8,
	{AUDIT_HEAD_TYPES, TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
	TIMESTAMPTZOID, UUIDOID, CIDRARRAYOID, INT4OID}
};

static FlwlQuery q_key_revoked = {
	AUDIT_INSERT("key.revoked")
	"'label', $6, 'prefix', $7, 'revoked_at', $8, 'revoked_by', $9))",
	AUDIT_HEAD_NARGS + 4,
	{AUDIT_HEAD_TYPES, TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID}
};

static FlwlQuery q_key_scopes_changed = {
	AUDIT_INSERT("key.scopes_changed")
	"'prefix', $6, 'old_scopes', $7, 'new_scopes', $8))",
	AUDIT_HEAD_NARGS + 3,
	{AUDIT_HEAD_TYPES, TEXTOID, TEXTARRAYOID, TEXTARRAYOID}
};

static FlwlQuery q_key_policy_changed = {
	AUDIT_INSERT("key.policy_changed")
	"'prefix', $6, 'old_allowed_ips', $7, 'new_allowed_ips', $8,"
	" 'old_rate_limit_per_minute', $9, 'new_rate_limit_per_minute', $10))",
	AUDIT_HEAD_NARGS + 5,
	{AUDIT_HEAD_TYPES, TEXTOID, CIDRARRAYOID, CIDRARRAYOID, INT4OID, INT4OID}
};

static FlwlQuery q_key_expiry_changed = {
	AUDIT_INSERT("key.expiry_changed")
	"'prefix', $6, 'old_expires_at', $7, 'new_expires_at', $8))",
	AUDIT_HEAD_NARGS + 3,
	{AUDIT_HEAD_TYPES, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};

static FlwlQuery q_member_role_changed = {
	AUDIT_INSERT("member.role_changed")
	"'user_id', $6, 'old_role', $7, 'new_role', $8))",
	AUDIT_HEAD_NARGS + 3,
	{AUDIT_HEAD_TYPES, UUIDOID, TEXTOID, TEXTOID}
};

/* Parameters of one record under construction. */
typedef struct AuditRecord
{
	Datum		values[13];
	char		nulls[13];
	int			n;
} AuditRecord;

static void
record_add(AuditRecord *rec, Datum value, bool isnull)
{
	Assert(rec->n < lengthof(rec->values));
	rec->values[rec->n] = isnull ? (Datum) 0 : value;
	rec->nulls[rec->n] = isnull ? 'n' : ' ';
	rec->n++;
}

/* Column name of tuple, from the relation the trigger fired on. */
static Datum
column_value(TriggerData *trigdata, HeapTuple tuple, const char *name,
			 bool *isnull)
{
	TupleDesc	tupdesc = RelationGetDescr(trigdata->tg_relation);
	int			attnum = SPI_fnumber(tupdesc, name);

	if (attnum <= 0)
		elog(ERROR, "column \"%s\" of relation \"%s\" does not exist", name,
			 RelationGetRelationName(trigdata->tg_relation));
	return heap_getattr(tuple, attnum, tupdesc, isnull);
}

/* Whether the relation the trigger fired on has column name. */
static bool
has_column(TriggerData *trigdata, const char *name)
{
	return SPI_fnumber(RelationGetDescr(trigdata->tg_relation), name) > 0;
}

/* Add column name of tuple to the record. */
static void
record_add_column(AuditRecord *rec, TriggerData *trigdata, HeapTuple tuple,
				  const char *name)
{
	bool		isnull;
	Datum		value = column_value(trigdata, tuple, name, &isnull);

	record_add(rec, value, isnull);
}

/* Start a record about the org (and key, if any) of tuple. */
static void
record_start(AuditRecord *rec, TriggerData *trigdata, HeapTuple tuple,
			 bool has_key)
{
	const pg_uuid_t *actor = flwl_actor_user();
	const inet *ip = flwl_actor_ip();
	const text *tp = flwl_actor_traceparent();

	rec->n = 0;
	record_add_column(rec, trigdata, tuple, "org_id");
	if (has_key)
		record_add_column(rec, trigdata, tuple, "key_id");
	else
		record_add(rec, (Datum) 0, true);
	record_add(rec, PointerGetDatum(actor), actor == NULL);
	record_add(rec, PointerGetDatum(ip), ip == NULL);
	record_add(rec, PointerGetDatum(tp), tp == NULL);
}

/*
 * Insert the record as the owner of audit_records, which lives in the
 * schema of the table the trigger is on.
 */
static void
record_write(FlwlQuery *q, AuditRecord *rec, Relation rel)
{
	Oid			audit_relid;
	HeapTuple	classtup;
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;

	Assert(rec->n == q->nargs);

	audit_relid = get_relname_relid("audit_records", RelationGetNamespace(rel));
	classtup = SearchSysCache1(RELOID, ObjectIdGetDatum(audit_relid));
	if (!HeapTupleIsValid(classtup))
		elog(ERROR, "relation \"audit_records\" of schema \"%s\" does not exist",
			 get_namespace_name(RelationGetNamespace(rel)));
	owner = ((Form_pg_class) GETSTRUCT(classtup))->relowner;
	ReleaseSysCache(classtup);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* an error resets both at (sub)transaction abort */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);

	if (flwl_query_exec(q, rec->values, rec->nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "audit record was not inserted");

	SetUserIdAndSecContext(save_userid, save_sec_context);

	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
}

/* Refuse to run as anything but an AFTER ROW trigger. */
static TriggerData *
audit_trigger_data(FunctionCallInfo fcinfo, const char *funcname)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired AFTER ROW", funcname)));
	return trigdata;
}

/* Whether column name differs between the old and new row (IS DISTINCT FROM). */
static bool
column_changed(TriggerData *trigdata, const char *name, Oid eqfunc)
{
	bool		oldnull,
				newnull;
	Datum		oldval = column_value(trigdata, trigdata->tg_trigtuple, name, &oldnull);
	Datum		newval = column_value(trigdata, trigdata->tg_newtuple, name, &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !DatumGetBool(OidFunctionCall2Coll(eqfunc, DEFAULT_COLLATION_OID,
											  oldval, newval));
}

static bool
column_is_null(TriggerData *trigdata, HeapTuple tuple, const char *name)
{
	bool		isnull;

	(void) column_value(trigdata, tuple, name, &isnull);
	return isnull;
}

/*
 * api_keys_audit(): AFTER INSERT records key.created; AFTER UPDATE records
 * key.revoked, key.scopes_changed, key.policy_changed and/or
 * key.expiry_changed, in that order (the trigger's WHEN clause keeps
 * last-used updates from calling it at all).
 */
Datum
flowella_api_keys_audit(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = audit_trigger_data(fcinfo, "api_keys_audit");
	Relation	rel = trigdata->tg_relation;
	bool		with_policy = has_column(trigdata, "allowed_ips");
	HeapTuple	oldtup;
	HeapTuple	newtup;
	AuditRecord rec;

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		newtup = trigdata->tg_trigtuple;
		if (flwl_change_is_restore())
			return PointerGetDatum(NULL);

		record_start(&rec, trigdata, newtup, true);
		record_add_column(&rec, trigdata, newtup, "label");
		record_add_column(&rec, trigdata, newtup, "prefix");
		record_add_column(&rec, trigdata, newtup, "mode");
		record_add_column(&rec, trigdata, newtup, "scopes");
		record_add_column(&rec, trigdata, newtup, "expires_at");
		record_add_column(&rec, trigdata, newtup, "replaces_key_id");
		if (with_policy)
		{
			record_add_column(&rec, trigdata, newtup, "allowed_ips");
			record_add_column(&rec, trigdata, newtup, "rate_limit_per_minute");
		}
		record_write(with_policy ? &q_key_created_1_3 : &q_key_created, &rec, rel);
		return PointerGetDatum(NULL);
	}

	if (!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired for INSERT or UPDATE",
						"api_keys_audit")));

	oldtup = trigdata->tg_trigtuple;
	newtup = trigdata->tg_newtuple;
	if (column_is_null(trigdata, oldtup, "revoked_at") &&
		!column_is_null(trigdata, newtup, "revoked_at"))
	{
		record_start(&rec, trigdata, newtup, true);
		record_add_column(&rec, trigdata, newtup, "label");
		record_add_column(&rec, trigdata, newtup, "prefix");
		record_add_column(&rec, trigdata, newtup, "revoked_at");
		record_add_column(&rec, trigdata, newtup, "revoked_by");
		record_write(&q_key_revoked, &rec, rel);
	}
	if (column_changed(trigdata, "scopes", F_ARRAY_EQ))
	{
		record_start(&rec, trigdata, newtup, true);
		record_add_column(&rec, trigdata, newtup, "prefix");
		record_add_column(&rec, trigdata, oldtup, "scopes");
		record_add_column(&rec, trigdata, newtup, "scopes");
		record_write(&q_key_scopes_changed, &rec, rel);
	}
	if (with_policy &&
		(column_changed(trigdata, "allowed_ips", F_ARRAY_EQ) ||
		 column_changed(trigdata, "rate_limit_per_minute", F_INT4EQ)))
	{
		record_start(&rec, trigdata, newtup, true);
		record_add_column(&rec, trigdata, newtup, "prefix");
		record_add_column(&rec, trigdata, oldtup, "allowed_ips");
		record_add_column(&rec, trigdata, newtup, "allowed_ips");
		record_add_column(&rec, trigdata, oldtup, "rate_limit_per_minute");
		record_add_column(&rec, trigdata, newtup, "rate_limit_per_minute");
		record_write(&q_key_policy_changed, &rec, rel);
	}
	if (column_changed(trigdata, "expires_at", F_TIMESTAMPTZ_EQ))
	{
		record_start(&rec, trigdata, newtup, true);
		record_add_column(&rec, trigdata, newtup, "prefix");
		record_add_column(&rec, trigdata, oldtup, "expires_at");
		record_add_column(&rec, trigdata, newtup, "expires_at");
		record_write(&q_key_expiry_changed, &rec, rel);
	}
	return PointerGetDatum(NULL);
}

/*
 * members_audit(): member.role_changed for a member added (old role NULL),
 * whose role changed, or removed (new role NULL).
 */
Datum
flowella_members_audit(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = audit_trigger_data(fcinfo, "members_audit");
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	AuditRecord rec;

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		if (flwl_change_is_restore())
			return PointerGetDatum(NULL);
		newtup = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		if (!column_changed(trigdata, "role", F_TEXTEQ))
			return PointerGetDatum(NULL);
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else
		oldtup = trigdata->tg_trigtuple;

	record_start(&rec, trigdata, newtup ? newtup : oldtup, false);
	record_add_column(&rec, trigdata, newtup ? newtup : oldtup, "user_id");
	if (oldtup)
		record_add_column(&rec, trigdata, oldtup, "role");
	else
		record_add(&rec, (Datum) 0, true);
	if (newtup)
		record_add_column(&rec, trigdata, newtup, "role");
	else
		record_add(&rec, (Datum) 0, true);
	record_write(&q_member_role_changed, &rec, trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
