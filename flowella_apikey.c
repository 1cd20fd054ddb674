/*-------------------------------------------------------------------------
 *
 * flowella_apikey.c
 *		Module set-up, the request context (set_actor) and the hot path,
 *		apikey_verify.
 *
 * apikey_verify reads flowella.api_keys through its unique prefix index
 * directly, with no SPI and no SQL-level permission check: the verifier role
 * holds no table privilege at all, and the cost stays that of one index
 * probe plus the organisation's plan.  It takes the latest snapshot, so a
 * revoke committed before the call is seen even inside an older REPEATABLE
 * READ transaction.  It never raises for any text input: anything that does
 * not parse as a token answers MALFORMED before a table is touched.
 *
 * The verify path keeps three per-backend caches: the OIDs and column
 * numbers of its relations (vrels), each organisation's plan scopes (the
 * plan cache) and the descriptor of its result row.  Their invalidation
 * callback runs inside any call that accepts invalidation messages: locking
 * a relation (table_open, index_open), a catalog lookup that misses the
 * syscache, and detoasting a value, which opens its TOAST table.  Verify
 * makes such calls after reading the caches, so two rules hold:
 *
 * - A lookup that fills a cache counts the invalidations that arrive while
 *   it looks (a generation number) and starts again if one did, so that no
 *   invalidation is lost.  OIDs from vrels are checked again once their
 *   relations are locked, and verify works on its own copy of them.
 * - Nothing read from a cache is used after such a call unless the cache is
 *   pinned.  Verify pins the plan cache for its whole length: a reset while
 *   pinned only retires the cache's memory, which is freed when the last
 *   pin goes.  The result descriptor is looked up and used with no such
 *   call in between.
 *
 * The actor lives in backend-local memory, not in a GUC, so that no role
 * can claim one with a plain SET: only set_actor, granted to the manager
 * and admin roles, sets it.  It lasts until the end of the transaction and
 * is undone by rolling back the subtransaction that set it.
 *
 * Here too is the one helper that pins search_path to pg_catalog, pg_temp
 * around the queries the other files run outside a SECURITY DEFINER
 * function's SET clause (flwl_pin_search_path).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>

#include <sodium.h>

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation_d.h"
#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lockdefs.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

PG_MODULE_MAGIC;

/*---- Request context ----*/

/*
 * One set_actor call.  Entries form a stack by subtransaction level so that
 * rolling back a savepoint restores the actor that was in force before it.
 * Entries are allocated in TopTransactionContext and vanish with it.
 */
typedef struct ActorState
{
	pg_uuid_t	user_id;
	inet	   *client_ip;		/* NULL if not given */
	text	   *traceparent;	/* NULL if not given */
	int			nest_level;		/* subtransaction level that set it */
	struct ActorState *prev;
} ActorState;

static ActorState *current_actor = NULL;

/* Depth of SQL API calls in progress (see flwl_run_api). */
static int	api_depth = 0;

/*---- Verify path cache ----*/

/*
 * OIDs and column numbers the verify path needs, looked up once per backend
 * and forgotten when any of these relations is invalidated (for example by
 * DROP EXTENSION or an upgrade script).
 */
typedef struct VerifyRels
{
	bool		valid;
	Oid			keys;
	Oid			keys_prefix_idx;
	Oid			orgs;
	Oid			orgs_pkey;
	Oid			plans;
	Oid			plans_pkey;
	AttrNumber	k_key_id;
	AttrNumber	k_org_id;
	AttrNumber	k_secret_hash;
	AttrNumber	k_scopes;
	AttrNumber	k_expires_at;
	AttrNumber	k_revoked_at;
	AttrNumber	o_plan;
	AttrNumber	p_scopes;
} VerifyRels;

static VerifyRels vrels;
static uint64 vrels_generation = 0;	/* bumped when vrels is invalidated */

/*
 * Per-backend cache: organisation -> its plan's current scopes, so that a
 * verify costs one index probe.  Key status is never cached.  A statement
 * trigger on orgs and plans sends a relcache invalidation at commit
 * (flowella_plan_cache_invalidate); every backend then drops the whole cache
 * before its next verify, which calls AcceptInvalidationMessages first.
 *
 * A verify pins the cache (plan_cache_pins) while it uses an entry: a reset
 * that arrives meanwhile moves the cache's context under plan_cache_retired
 * instead of freeing it, and the last unpin frees what was retired.
 */
typedef struct PlanCacheEntry
{
	pg_uuid_t	org_id;			/* hash key */
	FlwlScopeSet scopes;		/* sorted, in plan_cache_cxt */
} PlanCacheEntry;

#define PLAN_CACHE_MAX_ORGS	10000

static MemoryContext plan_cache_cxt = NULL;
static HTAB *plan_cache = NULL;
static uint64 plan_cache_generation = 0;	/* bumped at each reset */
static int	plan_cache_pins = 0;
static MemoryContext plan_cache_retired = NULL;

/* Outcome codes of apikey_verify, indexes into verify_code_names. */
typedef enum VerifyCode
{
	VC_VALID,
	VC_MALFORMED,
	VC_NOT_FOUND,
	VC_REVOKED,
	VC_EXPIRED,
	VC_INSUFFICIENT_SCOPE
} VerifyCode;

static const char *const verify_code_names[] = {
	"VALID", "MALFORMED", "NOT_FOUND", "REVOKED", "EXPIRED", "INSUFFICIENT_SCOPE"
};

static text *verify_code_texts[lengthof(verify_code_names)];
static text *mode_texts[FLWL_MODE_TEST + 1];

/* Descriptor of flowella.verification, and the relation of that type. */
static TupleDesc verify_tupdesc = NULL;
static Oid	verify_type_relid = InvalidOid;
static uint64 verify_tupdesc_generation = 0;	/* bumped when it is dropped */

/*---- Function declarations ----*/

void		_PG_init(void);

PG_FUNCTION_INFO_V1(flowella_set_actor);
PG_FUNCTION_INFO_V1(flowella_actor_user_id);
PG_FUNCTION_INFO_V1(flowella_actor_ip);
PG_FUNCTION_INFO_V1(flowella_actor_traceparent);
PG_FUNCTION_INFO_V1(flowella_change_is_restore);
PG_FUNCTION_INFO_V1(flowella_apikey_verify);
PG_FUNCTION_INFO_V1(flowella_plan_cache_invalidate);

static void actor_xact_callback(XactEvent event, void *arg);
static void actor_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);
static void plan_cache_xact_callback(XactEvent event, void *arg);
static void plan_cache_subxact_callback(SubXactEvent event,
										SubTransactionId mySubid,
										SubTransactionId parentSubid, void *arg);
static void vrels_invalidate(Datum arg, Oid relid);
static void vrels_load(void);
static VerifyRels vrels_open(bool plan_side, Relation *rels);
static bool probe_unique(Relation heap, Relation index, RegProcedure eqproc,
						 Oid collation, Datum key, Snapshot snapshot,
						 TupleTableSlot *slot);
static Datum fetch_column(Relation rel, Relation idx, RegProcedure eqproc,
						  Oid collation, Datum key, AttrNumber attnum,
						  Snapshot snapshot);
static void plan_cache_reset(void);
static void plan_cache_unpin(void);
static const FlwlScopeSet *plan_scopes_of_org(Datum org_id, Snapshot snapshot);
static TupleDesc verification_desc(FunctionCallInfo fcinfo);
static Datum verify_body(FunctionCallInfo fcinfo);
static Datum verification_result(FunctionCallInfo fcinfo, VerifyCode code,
								 Datum key_id, Datum org_id, Datum scopes,
								 bool scopes_null, FlwlMode mode);

/*
 * Module load.  Preloaded, it also sets up last-used tracking (shared
 * memory and its background worker); loaded on first use instead, verify
 * works the same but records no use.
 */
void
_PG_init(void)
{
	if (sodium_init() < 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not initialize libsodium")));

	if (process_shared_preload_libraries_in_progress)
		flwl_usage_init();
	flwl_redact_init();

	RegisterXactCallback(actor_xact_callback, NULL);
	RegisterSubXactCallback(actor_subxact_callback, NULL);
	RegisterXactCallback(plan_cache_xact_callback, NULL);
	RegisterSubXactCallback(plan_cache_subxact_callback, NULL);
	CacheRegisterRelcacheCallback(vrels_invalidate, (Datum) 0);
}

/*---- Request context ----*/

/* The actor is transaction-local: forget it when the transaction ends. */
static void
actor_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			current_actor = NULL;
			api_depth = 0;
			break;
		default:
			break;
	}
}

/*
 * Rolling back a savepoint undoes the set_actor calls made inside it;
 * releasing one hands them to the enclosing level, so that a later rollback
 * of another savepoint at the same level leaves them alone.
 */
static void
actor_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ActorState *a;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (current_actor != NULL && current_actor->nest_level >= level)
			current_actor = current_actor->prev;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (a = current_actor; a != NULL && a->nest_level >= level; a = a->prev)
			a->nest_level = level - 1;
	}
}

/*
 * set_actor(user_id uuid, client_ip inet, traceparent text)
 *
 * Validates everything before changing anything, so a bad call leaves the
 * previous actor in force.
 */
Datum
flowella_set_actor(PG_FUNCTION_ARGS)
{
	ActorState *state;
	MemoryContext oldcxt;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid user_id"),
				 errdetail("The acting user must not be null.")));

	if (!PG_ARGISNULL(1))
	{
		inet	   *ip = PG_GETARG_INET_PP(1);

		if (ip_bits(ip) != (ip_family(ip) == PGSQL_AF_INET ? 32 : 128))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid client_ip"),
					 errdetail("The client address must be a single host, not a network.")));
	}

	if (!PG_ARGISNULL(2))
	{
		text	   *tp = PG_GETARG_TEXT_PP(2);
		const char *problem = flwl_traceparent_problem(VARDATA_ANY(tp),
													   VARSIZE_ANY_EXHDR(tp));

		if (problem != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid traceparent"),
					 errdetail("%s", problem)));
	}

	if (!IsTransactionBlock())
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("the actor set outside a transaction block lasts only for this statement"),
				 errhint("Call set_actor after BEGIN, in the transaction it applies to.")));

	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	state = palloc0(sizeof(ActorState));
	memcpy(&state->user_id, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
	if (!PG_ARGISNULL(1))
	{
		inet	   *ip = PG_GETARG_INET_PP(1);

		state->client_ip = palloc(VARSIZE_ANY(ip));
		memcpy(state->client_ip, ip, VARSIZE_ANY(ip));
	}
	if (!PG_ARGISNULL(2))
		state->traceparent = PG_GETARG_TEXT_P_COPY(2);
	state->nest_level = GetCurrentTransactionNestLevel();
	state->prev = current_actor;
	MemoryContextSwitchTo(oldcxt);

	current_actor = state;
	PG_RETURN_VOID();
}

const pg_uuid_t *
flwl_actor_user(void)
{
	return current_actor ? &current_actor->user_id : NULL;
}

const pg_uuid_t *
flwl_require_actor(void)
{
	if (current_actor == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no actor is set for this transaction"),
				 errhint("Call flowella.set_actor at the start of the transaction.")));
	return &current_actor->user_id;
}

const inet *
flwl_actor_ip(void)
{
	return current_actor ? current_actor->client_ip : NULL;
}

const text *
flwl_actor_traceparent(void)
{
	return current_actor ? current_actor->traceparent : NULL;
}

Datum
flowella_actor_user_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *result;

	if (current_actor == NULL)
		PG_RETURN_NULL();
	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &current_actor->user_id, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

Datum
flowella_actor_ip(PG_FUNCTION_ARGS)
{
	const inet *ip = flwl_actor_ip();

	if (ip == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INET_P(ip);
}

Datum
flowella_actor_traceparent(PG_FUNCTION_ARGS)
{
	const text *tp = flwl_actor_traceparent();

	if (tp == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(tp);
}

/*
 * Whether a row being inserted comes from a restore or bulk load rather than
 * from the API: no API call is running, no actor is set, and the role doing
 * it is a superuser.  Such rows keep the values they carry and are not
 * audited again (their audit records are restored with them).
 */
bool
flwl_change_is_restore(void)
{
	return api_depth == 0 && current_actor == NULL &&
		superuser_arg(GetOuterUserId());
}

/*
 * change_is_restore(), called by the plpgsql audit triggers of version 1.0;
 * kept so that a 1.0 schema works with this library until it is updated.
 */
Datum
flowella_change_is_restore(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(flwl_change_is_restore());
}

Datum
flwl_run_api(FunctionCallInfo fcinfo, PGFunction body)
{
	Datum		result;

	api_depth++;
	PG_TRY();
	{
		result = body(fcinfo);
	}
	PG_FINALLY();
	{
		api_depth--;
	}
	PG_END_TRY();
	return result;
}

char *
flwl_quotable(const char *s, size_t len)
{
	char	   *out;
	size_t		n;

	if (len > 200)				/* messages quote names, not documents */
		len = pg_mbcliplen(s, len, 200);
	out = palloc(FLWL_REDACT_MAX(len) + 1);
	n = flwl_redact(s, len, out);
	out[n] = '\0';
	return out;
}

/*---- Pinned search_path ----*/

/*
 * Set search_path to FLWL_SEARCH_PATH for the query about to run, the way
 * fmgr_security_definer applies a function's SET clause; returns what to
 * pass to flwl_unpin_search_path afterwards.  Callers must be in a
 * transaction.
 *
 * The database's or the session's search_path is chosen by people who need
 * not be superusers (a database owner sets it with ALTER DATABASE), while
 * the background workers run as the bootstrap superuser and the triggers
 * run for whoever changes a row, superusers included: any name they left
 * to the search path could resolve to an operator, function or type that
 * such a person planted, and run it with those rights.  Every query names
 * everything with its schema as well; the pin also covers what those
 * queries call in turn and what the parser looks up implicitly.
 *
 * Cheap where it matters: under the SQL API's SECURITY DEFINER functions
 * the path is already exactly this (their SET clause), so an audit trigger
 * fired by apikey_create pays one strcmp.  Otherwise it costs what a SET
 * clause costs, a GUC save and restore.  The saved plans of flwl_query_exec
 * are prepared and run only under this path, so the plan cache never
 * re-plans them for a search_path change.
 */
int
flwl_pin_search_path(void)
{
	int			nestlevel;

	if (namespace_search_path != NULL &&
		strcmp(namespace_search_path, FLWL_SEARCH_PATH) == 0)
		return 0;

	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", FLWL_SEARCH_PATH,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	return nestlevel;
}

/* Restore the search_path a flwl_pin_search_path call replaced, if any. */
void
flwl_unpin_search_path(int nestlevel)
{
	if (nestlevel > 0)
		AtEOXact_GUC(true, nestlevel);
}

/*---- Verify path ----*/

/*
 * Drop every entry of the plan cache.  While a verify holds a pin, the
 * entries it reads must stay where they are: the context is retired, not
 * reset, and the next lookup starts a new one.  Runs inside invalidation
 * callbacks, so it allocates nothing.
 */
static void
plan_cache_reset(void)
{
	plan_cache_generation++;
	plan_cache = NULL;
	if (plan_cache_cxt == NULL)
		return;
	if (plan_cache_pins == 0)
		MemoryContextReset(plan_cache_cxt);
	else
	{
		MemoryContextSetParent(plan_cache_cxt, plan_cache_retired);
		plan_cache_cxt = NULL;
	}
}

/* Release a pin taken by verify; the last one frees retired caches. */
static void
plan_cache_unpin(void)
{
	Assert(plan_cache_pins > 0);
	if (--plan_cache_pins == 0 && plan_cache_retired != NULL)
		MemoryContextReset(plan_cache_retired);
}

/*
 * A verify that fails leaves its pin behind.  No verify is running when a
 * transaction or subtransaction aborts (verify runs no user code and starts
 * no subtransaction), so the pins are released then; cheaper than a PG_TRY
 * block around every verify.  Until then resets only retire memory.
 */
static void
plan_cache_xact_callback(XactEvent event, void *arg)
{
	if ((event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) &&
		plan_cache_pins > 0)
	{
		plan_cache_pins = 1;
		plan_cache_unpin();
	}
}

static void
plan_cache_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && plan_cache_pins > 0)
	{
		plan_cache_pins = 1;
		plan_cache_unpin();
	}
}

/*
 * Relcache invalidation callback of the three verify caches.  Until a cache
 * is filled, every invalidation counts: the relations it will hold are not
 * known yet, and the lookup in progress may already have read them.
 */
static void
vrels_invalidate(Datum arg, Oid relid)
{
	if (verify_tupdesc == NULL || relid == InvalidOid ||
		relid == verify_type_relid)
	{
		verify_tupdesc_generation++;
		if (verify_tupdesc != NULL)
		{
			FreeTupleDesc(verify_tupdesc);
			verify_tupdesc = NULL;
		}
	}

	if (relid == InvalidOid || !vrels.valid ||
		relid == vrels.orgs || relid == vrels.plans)
		plan_cache_reset();
	if (!vrels.valid || relid == InvalidOid || relid == vrels.keys ||
		relid == vrels.keys_prefix_idx || relid == vrels.orgs ||
		relid == vrels.orgs_pkey || relid == vrels.plans ||
		relid == vrels.plans_pkey)
	{
		vrels_generation++;
		vrels.valid = false;
	}
}

static Oid
vrels_relid(Oid nsp, const char *name)
{
	Oid			relid = get_relname_relid(name, nsp);

	if (!OidIsValid(relid))
		elog(ERROR, "flowella_apikey relation \"%s\" is missing", name);
	return relid;
}

static AttrNumber
vrels_attnum(Oid relid, const char *name)
{
	AttrNumber	attnum = get_attnum(relid, name);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "flowella_apikey column \"%s\" is missing", name);
	return attnum;
}

/*
 * Look the relations up by name in schema flowella.  The schema name is
 * fixed (the extension is not relocatable) and the install script refuses a
 * schema planted by another role, so the names cannot be hijacked.
 *
 * The lookups may accept invalidation messages; one that arrives meanwhile
 * (the extension dropped and created again, say) may concern what was
 * already read, so the whole lookup starts again.  Setting valid afterwards
 * without this check would lose it for good.
 */
static void
vrels_load(void)
{
	VerifyRels	r;
	uint64		generation;
	Oid			nsp;

retry:
	generation = vrels_generation;
	nsp = get_namespace_oid("flowella", false);
	r.keys = vrels_relid(nsp, "api_keys");
	r.keys_prefix_idx = vrels_relid(nsp, "api_keys_prefix_key");
	r.orgs = vrels_relid(nsp, "orgs");
	r.orgs_pkey = vrels_relid(nsp, "orgs_pkey");
	r.plans = vrels_relid(nsp, "plans");
	r.plans_pkey = vrels_relid(nsp, "plans_pkey");
	r.k_key_id = vrels_attnum(r.keys, "key_id");
	r.k_org_id = vrels_attnum(r.keys, "org_id");
	r.k_secret_hash = vrels_attnum(r.keys, "secret_hash");
	r.k_scopes = vrels_attnum(r.keys, "scopes");
	r.k_expires_at = vrels_attnum(r.keys, "expires_at");
	r.k_revoked_at = vrels_attnum(r.keys, "revoked_at");
	r.o_plan = vrels_attnum(r.orgs, "plan");
	r.p_scopes = vrels_attnum(r.plans, "scopes");
	if (generation != vrels_generation)
		goto retry;
	r.valid = true;
	vrels = r;
}

/*
 * Lock and open the relations of one side of the verify path: the keys
 * table and its prefix index, or (plan_side) orgs, plans and their primary
 * keys, into rels in that order.  Returns the copy of vrels their OIDs came
 * from, for the caller to read column numbers from: locking accepts
 * invalidations, which may make vrels stale (and a later reload change it)
 * while the caller still works with these relations.  A relation that has
 * gone, or an invalidation while locking, means the lookup starts again.
 */
static VerifyRels
vrels_open(bool plan_side, Relation *rels)
{
	for (;;)
	{
		VerifyRels	r;
		uint64		generation;
		Oid			relids[4];
		int			n;
		int			opened = 0;

		if (!vrels.valid)
			vrels_load();
		r = vrels;
		generation = vrels_generation;
		if (plan_side)
		{
			relids[0] = r.orgs;
			relids[1] = r.orgs_pkey;
			relids[2] = r.plans;
			relids[3] = r.plans_pkey;
			n = 4;
		}
		else
		{
			relids[0] = r.keys;
			relids[1] = r.keys_prefix_idx;
			n = 2;
		}

		/* tables and indexes alternate in relids */
		while (opened < n &&
			   (rels[opened] = try_relation_open(relids[opened],
												 AccessShareLock)) != NULL)
		{
			char		relkind = rels[opened++]->rd_rel->relkind;

			if (relkind != ((opened % 2) ? RELKIND_RELATION : RELKIND_INDEX))
				elog(ERROR, "flowella_apikey relation \"%s\" has the wrong kind",
					 RelationGetRelationName(rels[opened - 1]));
		}
		if (opened == n && generation == vrels_generation)
			return r;

		/*
		 * Keep the locks: locking the same relations again then accepts no
		 * invalidation, so the next round settles even under a stream of
		 * them (a plan change invalidates vrels too).
		 */
		while (opened > 0)
			relation_close(rels[--opened], NoLock);
		vrels.valid = false;
	}
}

/*
 * Fetch the one row whose unique index key equals key into slot.  Returns
 * false when there is none visible to snapshot.
 */
static bool
probe_unique(Relation heap, Relation index, RegProcedure eqproc, Oid collation,
			 Datum key, Snapshot snapshot, TupleTableSlot *slot)
{
	ScanKeyData skey;
	IndexScanDesc scan;
	bool		found;

	ScanKeyEntryInitialize(&skey, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   collation, eqproc, key);
	scan = index_beginscan(heap, index, snapshot, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	return found;
}

/*
 * Column attnum of the row whose unique key is key, as a detoasted copy in
 * CurrentMemoryContext.  The row must exist.  The caller has rel and idx
 * open and locked.
 */
static Datum
fetch_column(Relation rel, Relation idx, RegProcedure eqproc, Oid collation,
			 Datum key, AttrNumber attnum, Snapshot snapshot)
{
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Datum		value;
	bool		isnull;

	if (!probe_unique(rel, idx, eqproc, collation, key, snapshot, slot))
		elog(ERROR, "row referenced by API key not found in \"%s\"",
			 RelationGetRelationName(rel));
	value = slot_getattr(slot, attnum, &isnull);
	if (isnull)
		elog(ERROR, "unexpected null in \"%s\"", RelationGetRelationName(rel));
	value = PointerGetDatum(PG_DETOAST_DATUM_COPY(value));

	ExecDropSingleTupleTableSlot(slot);
	return value;
}

/*
 * The current scopes of an organisation's plan, as a sorted set, from the
 * cache if there.  The result lives in the cache or in CurrentMemoryContext;
 * the caller must hold a pin on the cache for as long as it uses it.
 */
static const FlwlScopeSet *
plan_scopes_of_org(Datum org_id, Snapshot snapshot)
{
	PlanCacheEntry *entry;
	uint64		generation = plan_cache_generation;
	VerifyRels	r;
	Relation	rels[4];
	Datum		plan,
				scopes;
	bool		found;
	MemoryContext oldcxt;
	FlwlScopeSet *fresh;

	Assert(plan_cache_pins > 0);
	if (plan_cache != NULL)
	{
		entry = hash_search(plan_cache, DatumGetPointer(org_id), HASH_FIND, NULL);
		if (entry != NULL)
			return &entry->scopes;
	}

	r = vrels_open(true, rels);
	plan = fetch_column(rels[0], rels[1], F_UUID_EQ, InvalidOid,
						org_id, r.o_plan, snapshot);
	scopes = fetch_column(rels[2], rels[3], F_TEXTEQ,
						  C_COLLATION_OID, plan, r.p_scopes, snapshot);
	for (int i = 3; i >= 0; i--)
		relation_close(rels[i], AccessShareLock);

	/* an invalidation arrived while reading: do not cache what was read */
	if (generation != plan_cache_generation)
	{
		fresh = palloc(sizeof(FlwlScopeSet));
		*fresh = flwl_scope_set(scopes);
		return fresh;
	}

	if (plan_cache != NULL &&
		hash_get_num_entries(plan_cache) >= PLAN_CACHE_MAX_ORGS)
		plan_cache_reset();
	if (plan_cache_cxt == NULL)
	{
		/* made here, as plan_cache_reset must not allocate */
		if (plan_cache_retired == NULL)
			plan_cache_retired = AllocSetContextCreate(TopMemoryContext,
													   "flowella retired plan caches",
													   ALLOCSET_SMALL_SIZES);
		plan_cache_cxt = AllocSetContextCreate(TopMemoryContext,
											   "flowella plan cache",
											   ALLOCSET_DEFAULT_SIZES);
	}
	if (plan_cache == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(pg_uuid_t);
		info.entrysize = sizeof(PlanCacheEntry);
		info.hcxt = plan_cache_cxt;
		plan_cache = hash_create("flowella plan cache", 256, &info,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = hash_search(plan_cache, DatumGetPointer(org_id), HASH_ENTER, &found);
	oldcxt = MemoryContextSwitchTo(plan_cache_cxt);
	entry->scopes = flwl_scope_set(datumCopy(scopes, false, -1));
	MemoryContextSwitchTo(oldcxt);
	return &entry->scopes;
}

/*
 * Trigger on orgs and plans: a change of an org's plan or of a plan's scopes
 * must reach every backend's plan cache.  A relcache invalidation is sent at
 * commit (and dropped on rollback), exactly when the change becomes visible.
 */
Datum
flowella_plan_cache_invalidate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

/* Byte order of two text Datums, for qsort and bsearch. */
int
flwl_text_datum_cmp(const void *a, const void *b)
{
	text	   *x = DatumGetTextPP(*(const Datum *) a);
	text	   *y = DatumGetTextPP(*(const Datum *) b);
	size_t		lx = VARSIZE_ANY_EXHDR(x);
	size_t		ly = VARSIZE_ANY_EXHDR(y);
	int			c = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(lx, ly));

	return c != 0 ? c : (lx > ly) - (lx < ly);
}

/*
 * The elements of a text[] (NULLs dropped), sorted, for flwl_scope_set_has.
 * Sorting makes membership tests O(log n): scope arrays come from callers
 * and may hold thousands of names.
 */
FlwlScopeSet
flwl_scope_set(Datum scopes)
{
	FlwlScopeSet set;
	bool	   *nulls;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(scopes), TEXTOID, -1, false,
					  TYPALIGN_INT, &set.elems, &nulls, &n);
	set.array = scopes;
	set.n = 0;
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			set.elems[set.n++] = set.elems[i];
	if (set.n > 1)
		qsort(set.elems, set.n, sizeof(Datum), flwl_text_datum_cmp);
	return set;
}

bool
flwl_scope_set_has(const FlwlScopeSet *set, Datum scope)
{
	return bsearch(&scope, set->elems, set->n, sizeof(Datum),
				   flwl_text_datum_cmp) != NULL;
}

/*
 * The scopes a key may use now: its own (or, when NULL, all of its plan's)
 * that its organisation's plan still offers.
 */
FlwlScopeSet
flwl_effective_scopes(Datum key_scopes, bool key_scopes_null,
					  const FlwlScopeSet *plan)
{
	FlwlScopeSet set;
	bool	   *nulls;
	int			n;

	if (key_scopes_null)
		return *plan;

	deconstruct_array(DatumGetArrayTypeP(key_scopes), TEXTOID, -1, false,
					  TYPALIGN_INT, &set.elems, &nulls, &n);
	set.n = 0;
	for (int i = 0; i < n; i++)
		if (!nulls[i] && flwl_scope_set_has(plan, set.elems[i]))
			set.elems[set.n++] = set.elems[i];

	/* the array keeps the key's order; the elements are sorted for lookups */
	set.array = PointerGetDatum(construct_array(set.elems, set.n, TEXTOID, -1,
												false, TYPALIGN_INT));
	if (set.n > 1)
		qsort(set.elems, set.n, sizeof(Datum), flwl_text_datum_cmp);
	return set;
}

/*
 * The descriptor of flowella.verification, looked up once per backend
 * (fn_extra would not outlive one query execution) and dropped when the
 * type's relation is invalidated.  The lookups accept invalidations: the
 * descriptor is cached only if none arrived meanwhile (see vrels_invalidate),
 * and the caller must use it before any other call that accepts them.
 */
static TupleDesc
verification_desc(FunctionCallInfo fcinfo)
{
	while (verify_tupdesc == NULL)
	{
		uint64		generation = verify_tupdesc_generation;
		MemoryContext oldcxt;
		TupleDesc	tupdesc;
		Oid			typid;
		Oid			typrelid;

		if (get_call_result_type(fcinfo, &typid, &tupdesc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		typrelid = get_typ_typrelid(typid);
		if (generation != verify_tupdesc_generation)
			continue;

		oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		/* the constant texts of the result, made once per backend */
		if (verify_code_texts[0] == NULL)
		{
			for (size_t i = 0; i < lengthof(verify_code_names); i++)
				verify_code_texts[i] = cstring_to_text(verify_code_names[i]);
			mode_texts[FLWL_MODE_LIVE] = cstring_to_text(flwl_mode_name(FLWL_MODE_LIVE));
			mode_texts[FLWL_MODE_TEST] = cstring_to_text(flwl_mode_name(FLWL_MODE_TEST));
		}
		verify_tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		verify_type_relid = typrelid;
		MemoryContextSwitchTo(oldcxt);
	}
	return verify_tupdesc;
}

/*
 * Build the flowella.verification row.  scopes may point into the plan
 * cache, which the caller keeps pinned; heap_form_tuple copies it.
 */
static Datum
verification_result(FunctionCallInfo fcinfo, VerifyCode code, Datum key_id,
					Datum org_id, Datum scopes, bool scopes_null, FlwlMode mode)
{
	TupleDesc	tupdesc = verification_desc(fcinfo);
	Datum		values[6];
	bool		nulls[6];
	bool		known = (key_id != (Datum) 0);

	values[0] = BoolGetDatum(code == VC_VALID);
	nulls[0] = false;
	values[1] = PointerGetDatum(verify_code_texts[code]);
	nulls[1] = false;
	values[2] = key_id;
	nulls[2] = !known;
	values[3] = org_id;
	nulls[3] = !known;
	values[4] = scopes;
	nulls[4] = scopes_null;
	values[5] = known ? PointerGetDatum(mode_texts[mode]) : (Datum) 0;
	nulls[5] = !known;

	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * apikey_verify(token text, required_scope text) returns flowella.verification
 *
 * Order of checks: shape and checksum (MALFORMED, no table access), key by
 * prefix and constant-time hash compare (NOT_FOUND either way, so a guess
 * learns nothing), revoked, expired, then scope.  key_id, org_id and mode
 * are returned once the hash matched; scopes only for VALID and
 * INSUFFICIENT_SCOPE.
 *
 * The plan cache stays pinned for the whole call: the plan's scopes are
 * read from it before the key's scopes and the required scope are detoasted
 * and before the result descriptor is looked up, and any of these may reset
 * it.  A pin costs less than copying thousands of scopes on every call.
 * An error leaves the pin to plan_cache_xact_callback.
 */
Datum
flowella_apikey_verify(PG_FUNCTION_ARGS)
{
	Datum		result;

	plan_cache_pins++;
	result = verify_body(fcinfo);
	plan_cache_unpin();
	return result;
}

/* The body of apikey_verify, run with the plan cache pinned. */
static Datum
verify_body(FunctionCallInfo fcinfo)
{
	text	   *token;
	const char *tok;
	size_t		len;
	FlwlMode	mode;
	unsigned char hash[FLWL_HASH_LEN];
	Snapshot	snapshot;
	VerifyRels	r;
	Relation	rels[2];
	TupleTableSlot *slot;
	VerifyCode	code;
	Datum		key_id = (Datum) 0;
	Datum		org_id = (Datum) 0;
	Datum		scopes = (Datum) 0;
	bool		scopes_null = true;
	Datum		d;
	bool		isnull;
	TimestampTz now;

	if (PG_ARGISNULL(0))
		return verification_result(fcinfo, VC_MALFORMED, 0, 0, 0, true, 0);

	/* Anything longer than a token is malformed: do not even detoast it. */
	if (toast_raw_datum_size(PG_GETARG_DATUM(0)) != VARHDRSZ + FLWL_TOKEN_LEN)
		return verification_result(fcinfo, VC_MALFORMED, 0, 0, 0, true, 0);

	token = PG_GETARG_TEXT_PP(0);
	tok = VARDATA_ANY(token);
	len = VARSIZE_ANY_EXHDR(token);
	mode = flwl_token_parse(tok, len);
	if (mode == FLWL_MODE_INVALID)
		return verification_result(fcinfo, VC_MALFORMED, 0, 0, 0, true, 0);

	flwl_token_hash(tok, len, hash);

	/* see plan changes committed since the last call, even mid-transaction */
	AcceptInvalidationMessages();

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	r = vrels_open(false, rels);
	slot = table_slot_create(rels[0], NULL);

	if (!probe_unique(rels[0], rels[1], F_TEXTEQ, C_COLLATION_OID,
					  PointerGetDatum(cstring_to_text_with_len(tok, FLWL_PREFIX_LEN)),
					  snapshot, slot))
		code = VC_NOT_FOUND;
	else
	{
		bytea	   *stored;

		d = slot_getattr(slot, r.k_secret_hash, &isnull);
		stored = isnull ? NULL : DatumGetByteaPP(d);
		if (stored == NULL || VARSIZE_ANY_EXHDR(stored) != FLWL_HASH_LEN ||
			sodium_memcmp(VARDATA_ANY(stored), hash, FLWL_HASH_LEN) != 0)
			code = VC_NOT_FOUND;
		else
		{
			key_id = datumCopy(slot_getattr(slot, r.k_key_id, &isnull), false, UUID_LEN);
			org_id = datumCopy(slot_getattr(slot, r.k_org_id, &isnull), false, UUID_LEN);

			now = GetCurrentTimestamp();
			slot_getattr(slot, r.k_revoked_at, &isnull);
			if (!isnull)
				code = VC_REVOKED;
			else
			{
				d = slot_getattr(slot, r.k_expires_at, &isnull);
				if (!isnull && DatumGetTimestampTz(d) <= now)
					code = VC_EXPIRED;
				else
					code = VC_VALID;
			}

			if (code == VC_VALID)
			{
				Datum		key_scopes;
				bool		key_scopes_null;
				FlwlScopeSet effective;

				/* read while the slot still pins its page */
				key_scopes = slot_getattr(slot, r.k_scopes, &key_scopes_null);
				effective = flwl_effective_scopes(key_scopes, key_scopes_null,
												  plan_scopes_of_org(org_id, snapshot));
				scopes = effective.array;
				scopes_null = false;

				if (!PG_ARGISNULL(1) &&
					!flwl_scope_set_has(&effective,
										PointerGetDatum(PG_GETARG_TEXT_PP(1))))
					code = VC_INSUFFICIENT_SCOPE;
				else
					flwl_usage_record(DatumGetUUIDP(key_id), now);
			}
		}
	}

	ExecDropSingleTupleTableSlot(slot);
	relation_close(rels[1], AccessShareLock);
	relation_close(rels[0], AccessShareLock);
	UnregisterSnapshot(snapshot);
	sodium_memzero(hash, sizeof(hash));

	/* a detoasted copy of the token is ours to wipe */
	if ((Pointer) token != DatumGetPointer(PG_GETARG_DATUM(0)))
		sodium_memzero(token, VARSIZE_ANY(token));

	return verification_result(fcinfo, code, key_id, org_id, scopes,
							   scopes_null, mode);
}
