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
 * recorded again (see flwl_change_is_restore), and the records keep the
 * record_hash they carry (nothing recomputes it).
 *
 * The hash chain (version 1.5, SPEC section 14): each record's record_hash
 * is SHA-256 of the previous record's hash in the same org (32 zero bytes
 * for the first) and the UTF-8 bytes of its canonical text
 * (AUDIT_CANONICAL_SQL), records in event_id order.  The INSERT computes
 * it with that very SQL expression and pg_catalog.sha256, so the stored
 * hash is what an auditor's plain-SQL recompute gives.  One org's records
 * are written one transaction at a time, so the chain cannot fork:
 *
 *	1. the trigger takes the org's chain lock, an ExclusiveLock on an
 *	   advisory lock tag of its own class (AUDIT_CHAIN_LOCK_CLASS, which
 *	   no pg_advisory_* call can name) keyed by the org_id folded to 64
 *	   bits, held until the transaction ends.  Only these triggers take
 *	   it, always after every row lock of the change (they fire AFTER
 *	   ROW), and the record insert that follows waits on nothing;
 *	2. it then reads the org's last record with the latest snapshot (a
 *	   REPEATABLE READ snapshot could predate the holder it waited for),
 *	   straight from the index on (org_id, event_id);
 *	3. it then draws event_id (nextval inside the INSERT), so that an
 *	   org's event_ids rise in the order its records commit: an id drawn
 *	   before the lock could be lower than that of a record committed
 *	   while it waited.  The trigger checks that it does rise (a sequence
 *	   given a CACHE, or set back, would break that) and fails otherwise.
 *
 * A transaction sees its own records, and commit makes them visible
 * before the lock is released, so the next holder chains from the
 * last.  Different orgs take different locks (two orgs whose ids fold to
 * the same 64 bits would share one: about 2^-64 per pair).
 *
 * On a schema before 1.5 (no record_hash), the trigger takes no lock and
 * writes the record as before.
 *
 * audit_digest and audit_verify (below the triggers) read the chain.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sodium.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include "flowella_apikey.h"

PG_FUNCTION_INFO_V1(flowella_api_keys_audit);
PG_FUNCTION_INFO_V1(flowella_members_audit);
PG_FUNCTION_INFO_V1(flowella_audit_digest);
PG_FUNCTION_INFO_V1(flowella_audit_verify);

/*
 * locktag_field4 of the chain locks: user advisory locks use 1 and 2, so
 * no pg_advisory_* call takes or waits for one (pg_locks shows them as
 * advisory locks with this objsubid).
 */
#define AUDIT_CHAIN_LOCK_CLASS	0x464c

#define AUDIT_HASH_LEN	crypto_hash_sha256_BYTES	/* 32 */

/*
 * SPEC section 14's canonical text of the record alias a, as UTF-8 bytes:
 * jsonb_build_object(...)::text with every name schema-qualified
 * (occurred_at AT TIME ZONE 'UTC' is pg_catalog.timezone('UTC', ...)).
 */
#define AUDIT_CANONICAL_SQL(a) \
	"pg_catalog.convert_to(CAST(pg_catalog.jsonb_build_object(" \
	"'event_id', " a ".event_id, 'org_id', " a ".org_id," \
	" 'key_id', " a ".key_id, 'action', " a ".action," \
	" 'actor_user_id', " a ".actor_user_id," \
	" 'actor_ip', CAST(" a ".actor_ip AS pg_catalog.text)," \
	" 'trace_context', " a ".trace_context," \
	" 'occurred_at', pg_catalog.to_char(pg_catalog.timezone('UTC', " a ".occurred_at)," \
	" 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')," \
	" 'details', " a ".details) AS pg_catalog.text), 'UTF8')"

/*
 * The common head of every record: $1 org, $2 key, $3 actor, $4 client IP,
 * $5 trace context.  The action is a literal, the details follow from $6.
 * Each action has two INSERTs: one for a schema before 1.5, one that
 * chains the record, whose last parameter is the previous record's hash
 * (AUDIT_CHAINED, given its number) and which returns the event_id it
 * drew.
 */
#define AUDIT_INSERT(action) \
	"INSERT INTO flowella.audit_records" \
	" (org_id, key_id, action, actor_user_id, actor_ip, trace_context, details)" \
	" VALUES ($1, $2, '" action "', $3, $4, $5, pg_catalog.jsonb_build_object("
#define AUDIT_INSERT_END	"))"
#define AUDIT_CHAINED(action, prev) \
	"INSERT INTO flowella.audit_records" \
	" (event_id, org_id, key_id, action, actor_user_id, actor_ip, trace_context," \
	"  occurred_at, details, record_hash)" \
	" SELECT r.event_id, r.org_id, r.key_id, r.action, r.actor_user_id, r.actor_ip," \
	"        r.trace_context, r.occurred_at, r.details," \
	"        pg_catalog.sha256(CAST($" prev " AS pg_catalog.bytea) OPERATOR(pg_catalog.||) " \
	AUDIT_CANONICAL_SQL("r") ")" \
	"   FROM (SELECT pg_catalog.nextval(CAST('flowella.audit_records_event_id_seq'" \
	"                                        AS pg_catalog.regclass)) AS event_id," \
	"                $1 AS org_id, $2 AS key_id, CAST('" action "' AS pg_catalog.text) AS action," \
	"                $3 AS actor_user_id, $4 AS actor_ip, $5 AS trace_context," \
	"                pg_catalog.clock_timestamp() AS occurred_at," \
	"                pg_catalog.jsonb_build_object("
#define AUDIT_CHAINED_END	") AS details) r RETURNING event_id"
#define AUDIT_HEAD_TYPES	UUIDOID, UUIDOID, UUIDOID, INETOID, TEXTOID
#define AUDIT_HEAD_NARGS	5

/* One action's two INSERTs; prev is its number of parameters + 1. */
typedef struct AuditQuery
{
	FlwlQuery	plain;
	FlwlQuery	chained;
} AuditQuery;

#define AUDIT_QUERY(action, details, nargs, prev, ...) \
	{ \
		{AUDIT_INSERT(action) details AUDIT_INSERT_END, \
		 AUDIT_HEAD_NARGS + (nargs), {AUDIT_HEAD_TYPES, __VA_ARGS__}}, \
		{AUDIT_CHAINED(action, prev) details AUDIT_CHAINED_END, \
		 AUDIT_HEAD_NARGS + (nargs) + 1, {AUDIT_HEAD_TYPES, __VA_ARGS__, BYTEAOID}} \
	}

static AuditQuery q_key_created = AUDIT_QUERY("key.created",
	"'label', $6, 'prefix', $7, 'mode', $8, 'scopes', $9,"
	" 'expires_at', $10, 'replaces_key_id', $11", 6, "12",
	TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID, UUIDOID);

/* key.created on a 1.3 schema: the policy the key starts with, too */
static AuditQuery q_key_created_1_3 = AUDIT_QUERY("key.created",
	"'label', $6, 'prefix', $7, 'mode', $8, 'scopes', $9,"
	" 'expires_at', $10, 'replaces_key_id', $11,"
	" 'allowed_ips', $12, 'rate_limit_per_minute', $13", 8, "14",
	TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID, UUIDOID,
	CIDRARRAYOID, INT4OID);

static AuditQuery q_key_revoked = AUDIT_QUERY("key.revoked",
	"'label', $6, 'prefix', $7, 'revoked_at', $8, 'revoked_by', $9", 4, "10",
	TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID);

static AuditQuery q_key_scopes_changed = AUDIT_QUERY("key.scopes_changed",
	"'prefix', $6, 'old_scopes', $7, 'new_scopes', $8", 3, "9",
	TEXTOID, TEXTARRAYOID, TEXTARRAYOID);

static AuditQuery q_key_policy_changed = AUDIT_QUERY("key.policy_changed",
	"'prefix', $6, 'old_allowed_ips', $7, 'new_allowed_ips', $8,"
	" 'old_rate_limit_per_minute', $9, 'new_rate_limit_per_minute', $10", 5, "11",
	TEXTOID, CIDRARRAYOID, CIDRARRAYOID, INT4OID, INT4OID);

static AuditQuery q_key_expiry_changed = AUDIT_QUERY("key.expiry_changed",
	"'prefix', $6, 'old_expires_at', $7, 'new_expires_at', $8", 3, "9",
	TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID);

static AuditQuery q_member_role_changed = AUDIT_QUERY("member.role_changed",
	"'user_id', $6, 'old_role', $7, 'new_role', $8", 3, "9",
	UUIDOID, TEXTOID, TEXTOID);


/* Parameters of one record under construction. */
typedef struct AuditRecord
{
	Datum		values[14];
	char		nulls[14];
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
 * audit_records of schema nsp (the extension's): its OID, and its owner in
 * *owner.
 */
static Oid
audit_table(Oid nsp, Oid *owner)
{
	Oid			relid = get_relname_relid("audit_records", nsp);
	HeapTuple	classtup;

	classtup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(classtup))
		elog(ERROR, "relation \"audit_records\" of schema \"%s\" does not exist",
			 get_namespace_name(nsp));
	*owner = ((Form_pg_class) GETSTRUCT(classtup))->relowner;
	ReleaseSysCache(classtup);
	return relid;
}

/*
 * Take the chain lock of org org_id until the end of the transaction (see
 * the head of this file).
 */
static void
chain_lock(Datum org_id)
{
	const pg_uuid_t *org = DatumGetUUIDP(org_id);
	uint64		hi;
	uint64		lo;
	uint64		key;
	LOCKTAG		tag;

	memcpy(&hi, org->data, sizeof(hi));
	memcpy(&lo, org->data + sizeof(hi), sizeof(lo));
	key = hi ^ lo;
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (key >> 32), (uint32) key,
						 AUDIT_CHAIN_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Chain the record: under the org's chain lock, add the hash of the org's
 * last record (or 32 zero bytes) as the INSERT's last parameter; returns
 * that record's event_id, 0 for none.
 *
 * The last record is read straight from the index audit_records_org_idx
 * (org_id, event_id), backwards, with the latest snapshot after a command
 * counter increment: it sees every record committed before the lock was
 * granted and this transaction's own, whatever the isolation level.  (An
 * SPI query here cost a tenth of a create.)
 */
static int64
record_chain(AuditRecord *rec, Oid audit_relid)
{
	static bytea *zero_hash = NULL;
	Datum		org_id = rec->values[0];
	int64		prev_id = 0;
	Oid			index_relid;
	AttrNumber	hash_attnum = get_attnum(audit_relid, "record_hash");
	Relation	heap;
	Relation	index;
	Snapshot	snapshot;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData key;

	if (zero_hash == NULL)
	{
		zero_hash = MemoryContextAllocZero(TopMemoryContext,
										   VARHDRSZ + AUDIT_HASH_LEN);
		SET_VARSIZE(zero_hash, VARHDRSZ + AUDIT_HASH_LEN);
	}

	chain_lock(org_id);

	index_relid = get_relname_relid("audit_records_org_idx",
									get_rel_namespace(audit_relid));
	if (!OidIsValid(index_relid))
		elog(ERROR, "index \"audit_records_org_idx\" does not exist");

	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	heap = table_open(audit_relid, AccessShareLock);
	index = index_open(index_relid, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, org_id);
	scan = index_beginscan(heap, index, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	slot = table_slot_create(heap, NULL);
	if (index_getnext_slot(scan, BackwardScanDirection, slot))
	{
		bool		isnull;
		Datum		hash;

		prev_id = DatumGetInt64(slot_getattr(slot, 1, &isnull));
		hash = slot_getattr(slot, hash_attnum, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("audit record %lld has no record_hash",
							(long long) prev_id),
					 errdetail("The audit log of this organisation cannot be chained on.")));
		record_add(rec, PointerGetDatum(DatumGetByteaPCopy(hash)), false);
	}
	else
		record_add(rec, PointerGetDatum(zero_hash), false);
	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	UnregisterSnapshot(snapshot);
	return prev_id;
}

/*
 * Insert the record as the owner of audit_records, which lives in the
 * schema of the table the trigger is on; on a 1.5 schema, chained.
 */
static void
record_write(AuditQuery *q, AuditRecord *rec, Relation rel)
{
	Oid			owner;
	Oid			audit_relid = audit_table(RelationGetNamespace(rel), &owner);
	bool		chained;
	Oid			save_userid;
	int			save_sec_context;

	Assert(rec->n == q->plain.nargs);

	/*
	 * The lock the INSERT takes anyway, first: it waits for an ALTER
	 * EXTENSION UPDATE that adds record_hash, and then the catalog shows
	 * the column.
	 */
	LockRelationOid(audit_relid, RowExclusiveLock);
	chained = get_attnum(audit_relid, "record_hash") != InvalidAttrNumber;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* an error resets both at (sub)transaction abort */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);

	if (chained)
	{
		int64		prev_id = record_chain(rec, audit_relid);
		int64		event_id;
		bool		isnull;

		if (flwl_query_exec(&q->chained, rec->values, rec->nulls, false, 0) !=
			SPI_OK_INSERT_RETURNING || SPI_processed != 1)
			elog(ERROR, "audit record was not inserted");
		event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		if (event_id <= prev_id)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("audit event number %lld is not above the organisation's last, %lld",
							(long long) event_id, (long long) prev_id),
					 errdetail("An organisation's audit records must be numbered in the order they are chained."),
					 errhint("The sequence flowella.audit_records_event_id_seq must have CACHE 1 and never be set back.")));
	}
	else if (flwl_query_exec(&q->plain, rec->values, rec->nulls, false, 0) !=
			 SPI_OK_INSERT)
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

	/*
	 * This trigger fires for every change of a column verify reads (its
	 * WHEN clause), restores and records or not: the verify key caches must
	 * drop the row.
	 */
	flwl_verify_key_changed(rel);

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

/*---- Reading the chain: audit_digest, audit_verify ----*/

/* $1 org: whether the actor may read its audit records (audit_events' rule) */
static FlwlQuery q_reads_audit = {
	"SELECT flowella.actor_reads_audit($1)",
	1, {UUIDOID}
};

/* $1 org: its last record and its number of records, in one snapshot */
static FlwlQuery q_digest = {
	"SELECT h.event_id, h.record_hash, c.n"
	"  FROM (SELECT pg_catalog.count(*) AS n FROM flowella.audit_records a"
	"         WHERE a.org_id OPERATOR(pg_catalog.=) $1) c"
	"  LEFT JOIN LATERAL (SELECT a.event_id, a.record_hash FROM flowella.audit_records a"
	"                      WHERE a.org_id OPERATOR(pg_catalog.=) $1"
	"                      ORDER BY a.event_id DESC LIMIT 1) h ON true",
	1, {UUIDOID}
};

/* $1 org: its records in chain order, each with its canonical text */
static FlwlQuery q_chain = {
	"SELECT a.event_id, a.record_hash, " AUDIT_CANONICAL_SQL("a")
	"  FROM flowella.audit_records a"
	" WHERE a.org_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY a.event_id",
	1, {UUIDOID}
};

/* Records audit_verify fetches at a time. */
#define AUDIT_VERIFY_BATCH	1000

/*
 * Set up a read of org's chain for the caller of fcinfo: refuse (42501)
 * unless the caller may read the org's records as audit_events shows them
 * (the auditor role: every org; otherwise an actor who is owner or admin
 * of the org on a plan with the audit log), then connect to SPI as the
 * owner of audit_records, whose rows the caller cannot read itself.
 * Undo with chain_read_end.
 */
static void
chain_read_begin(FunctionCallInfo fcinfo, Datum org_id, Oid *save_userid,
				 int *save_sec_context)
{
	Oid			owner;
	Oid			auditor = get_role_oid("flowella_apikey_auditor", true);
	bool		auditor_reads;

	(void) audit_table(get_func_namespace(fcinfo->flinfo->fn_oid), &owner);
	auditor_reads = OidIsValid(auditor) && has_privs_of_role(GetUserId(), auditor);
	if (!auditor_reads)
		(void) flwl_require_actor();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(save_userid, save_sec_context);
	SetUserIdAndSecContext(owner, *save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);

	if (!auditor_reads)
	{
		bool		isnull;

		if (flwl_query_exec(&q_reads_audit, &org_id, NULL, true, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not check the access to the audit log");
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull)) || isnull)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to read the audit log of this organisation"),
					 errdetail("The acting user is not an owner or admin of the organisation, the organisation does not exist, or its plan does not include the audit log.")));
	}
}

static void
chain_read_end(Oid save_userid, int save_sec_context)
{
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
}

/*
 * audit_digest(org_id) -> (last_event_id, head_hash, records): what to keep
 * outside the database.  An org without records answers (NULL, NULL, 0).
 */
Datum
flowella_audit_digest(PG_FUNCTION_ARGS)
{
	Datum		org_id;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			save_userid;
	int			save_sec_context;
	Datum		values[3];
	bool		nulls[3];
	MemoryContext oldcxt;

	flwl_require_arg(fcinfo, 0, "org_id");
	org_id = PG_GETARG_DATUM(0);
	InitMaterializedSRF(fcinfo, 0);
	chain_read_begin(fcinfo, org_id, &save_userid, &save_sec_context);

	if (flwl_query_exec(&q_digest, &org_id, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the audit chain head");
	/* the row outlives SPI: build it in the result's memory */
	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	for (int i = 0; i < 3; i++)
	{
		values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  i + 1, &nulls[i]);
		if (i == 1 && !nulls[i])
			values[i] = PointerGetDatum(DatumGetByteaPCopy(values[i]));
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	MemoryContextSwitchTo(oldcxt);

	chain_read_end(save_userid, save_sec_context);
	return (Datum) 0;
}

/*
 * audit_verify(org_id, expected_event_id, expected_hash) -> (ok, checked,
 * first_bad_event_id, detail): recompute the org's chain from its first
 * record, AUDIT_VERIFY_BATCH records at a time through a cursor (one
 * snapshot; memory does not grow with the chain), and stop at the first
 * record that is wrong:
 *
 *	- its record_hash is not SHA-256 of the previous record's and its own
 *	  canonical text: it was changed, or a record between the two was
 *	  deleted (a deletion shows only as the next record not chaining);
 *	- with a digest (expected_event_id and expected_hash, from an earlier
 *	  audit_digest): the record expected_event_id is missing, or its hash
 *	  is not the digest's: the chain up to it was rewritten, which a
 *	  recompute alone cannot tell.
 *
 * checked counts the records recomputed, the wrong one included.  A
 * deleted last record is caught only against a digest that names it.
 */
Datum
flowella_audit_verify(PG_FUNCTION_ARGS)
{
	Datum		org_id;
	bool		with_digest = !PG_ARGISNULL(1);
	int64		expected_id = with_digest ? PG_GETARG_INT64(1) : 0;
	bytea	   *expected_hash = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			save_userid;
	int			save_sec_context;
	unsigned char prev[AUDIT_HASH_LEN];
	int64		prev_id = 0;
	int64		checked = 0;
	int64		bad_id = 0;
	bool		digest_seen = false;
	char	   *detail = NULL;
	MemoryContext rowcxt;
	MemoryContext oldcxt;
	Portal		portal;
	int			pinned;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	flwl_require_arg(fcinfo, 0, "org_id");
	org_id = PG_GETARG_DATUM(0);
	if (PG_ARGISNULL(1) != PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid digest"),
				 errdetail("expected_event_id and expected_hash are given together, or neither.")));
	if (with_digest)
	{
		expected_hash = PG_GETARG_BYTEA_PP(2);
		if (VARSIZE_ANY_EXHDR(expected_hash) != AUDIT_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid expected_hash"),
					 errdetail("A record hash is %d bytes, not %d.", AUDIT_HASH_LEN,
							   (int) VARSIZE_ANY_EXHDR(expected_hash))));
	}

	InitMaterializedSRF(fcinfo, 0);
	chain_read_begin(fcinfo, org_id, &save_userid, &save_sec_context);

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "audit_verify row",
								   ALLOCSET_DEFAULT_SIZES);
	memset(prev, 0, sizeof(prev));

	pinned = flwl_pin_search_path();
	portal = SPI_cursor_open(NULL, flwl_query_plan(&q_chain), &org_id, NULL, true);
	while (detail == NULL)
	{
		SPI_cursor_fetch(portal, true, AUDIT_VERIFY_BATCH);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed && detail == NULL; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		event_id;
			Datum		stored;
			bool		stored_null;
			bytea	   *canonical;
			unsigned char computed[AUDIT_HASH_LEN];
			crypto_hash_sha256_state st;

			oldcxt = MemoryContextSwitchTo(rowcxt);
			event_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			stored = SPI_getbinval(tup, desc, 2, &stored_null);
			canonical = DatumGetByteaPP(SPI_getbinval(tup, desc, 3, &isnull));

			/* a digest's record that the chain skips is missing */
			if (with_digest && !digest_seen && event_id > expected_id)
			{
				bad_id = expected_id;
				detail = psprintf("event %lld of the digest is missing: it was deleted, or the digest is not of this organisation",
								  (long long) expected_id);
				MemoryContextSwitchTo(oldcxt);
				break;
			}

			checked++;
			crypto_hash_sha256_init(&st);
			crypto_hash_sha256_update(&st, prev, sizeof(prev));
			crypto_hash_sha256_update(&st, (unsigned char *) VARDATA_ANY(canonical),
									  VARSIZE_ANY_EXHDR(canonical));
			crypto_hash_sha256_final(&st, computed);

			if (stored_null ||
				VARSIZE_ANY_EXHDR(DatumGetByteaPP(stored)) != AUDIT_HASH_LEN ||
				memcmp(VARDATA_ANY(DatumGetByteaPP(stored)), computed,
					   AUDIT_HASH_LEN) != 0)
			{
				bad_id = event_id;
				if (prev_id == 0)
					detail = psprintf("event %lld does not chain from the start of the organisation's chain: it was changed, or an earlier record of the organisation was deleted",
									  (long long) event_id);
				else
					detail = psprintf("event %lld does not chain from event %lld: it was changed, or a record of the organisation between the two was deleted",
									  (long long) event_id, (long long) prev_id);
			}
			else if (with_digest && event_id == expected_id)
			{
				digest_seen = true;
				if (memcmp(VARDATA_ANY(expected_hash), computed, AUDIT_HASH_LEN) != 0)
				{
					bad_id = event_id;
					detail = psprintf("the hash of event %lld is not the digest's: the chain up to it was rewritten",
									  (long long) event_id);
				}
			}
			memcpy(prev, computed, sizeof(prev));
			prev_id = event_id;
			MemoryContextSwitchTo(oldcxt);
			/* detail lives in rowcxt: copy it out before the reset */
			if (detail != NULL)
				detail = MemoryContextStrdup(rsinfo->econtext->ecxt_per_query_memory,
											 detail);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	flwl_unpin_search_path(pinned);

	if (detail == NULL && with_digest && !digest_seen)
	{
		bad_id = expected_id;
		detail = psprintf("event %lld of the digest is missing: it was deleted, or the digest is not of this organisation",
						  (long long) expected_id);
	}

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	values[0] = BoolGetDatum(bad_id == 0);
	values[1] = Int64GetDatum(checked);
	values[2] = Int64GetDatum(bad_id);
	nulls[2] = bad_id == 0;
	if (detail == NULL)
	{
		if (checked == 0)
			detail = pstrdup("the organisation has no audit records");
		else if (with_digest)
			detail = psprintf("%lld records chain from the first to event %lld; event %lld has the digest's hash",
							  (long long) checked, (long long) prev_id,
							  (long long) expected_id);
		else
			detail = psprintf("%lld records chain from the first to event %lld",
							  (long long) checked, (long long) prev_id);
	}
	values[3] = CStringGetTextDatum(detail);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	MemoryContextSwitchTo(oldcxt);

	chain_read_end(save_userid, save_sec_context);
	return (Datum) 0;
}
