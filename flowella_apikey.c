/*-------------------------------------------------------------------------
 *
 * flowella_apikey.c
 *		Module set-up, and the request context every API call runs in:
 *		the actor (set_actor), the API-call marker and the search_path pin.
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

#include "access/xact.h"
#include "catalog/namespace.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

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

/*---- Function declarations ----*/

void		_PG_init(void);

PG_FUNCTION_INFO_V1(flowella_set_actor);
PG_FUNCTION_INFO_V1(flowella_actor_user_id);
PG_FUNCTION_INFO_V1(flowella_actor_ip);
PG_FUNCTION_INFO_V1(flowella_actor_traceparent);
PG_FUNCTION_INFO_V1(flowella_change_is_restore);

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void shmem_request(void);
static void shmem_startup(void);
static void actor_xact_callback(XactEvent event, void *arg);
static void actor_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

/*
 * Module load.  Preloaded, it also sets up last-used tracking (shared
 * memory and its background worker), the rate limiter's buckets and the
 * shared key cache (shared memory); loaded on first use instead, verify works the same but records
 * no use and limits no rate (see flowella_ratelimit.c).
 */
void
_PG_init(void)
{
	if (sodium_init() < 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not initialize libsodium")));

	/* first: it defines settings, which the prefix reservation below keeps */
	flwl_verify_init();
	if (process_shared_preload_libraries_in_progress)
	{
		flwl_usage_init();
		flwl_ratelimit_init();
#if PG_VERSION_NUM >= 150000
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = shmem_request;
#else
		shmem_request();
#endif
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = shmem_startup;
#if PG_VERSION_NUM >= 150000

		/*
		 * Only once every flowella.* setting is defined: reserving the
		 * prefix drops the placeholders of those not yet defined, and with
		 * them the values postgresql.conf gave them.
		 */
		MarkGUCPrefixReserved("flowella");
#endif
	}
	flwl_redact_init();

	RegisterXactCallback(actor_xact_callback, NULL);
	RegisterSubXactCallback(actor_subxact_callback, NULL);
}

/*---- Shared memory ----*/

/*
 * Ask for the shared memory and locks of the usage pipeline, the rate
 * limiter and the shared key cache (before PostgreSQL 15, straight from
 * _PG_init).
 */
static void
shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	flwl_usage_shmem_request();
	flwl_ratelimit_shmem_request();
	flwl_verify_shmem_request();
}

/* Attach to (or, the first time, build) the three modules' shared state. */
static void
shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	flwl_usage_shmem_startup();
	flwl_ratelimit_shmem_startup();
	flwl_verify_shmem_startup();
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

/*---- Set-returning functions ----*/

#if PG_VERSION_NUM < 150000
/*
 * InitMaterializedSRF(fcinfo, 0) of PostgreSQL 15 for 13 and 14: a
 * materialized result set in per-query memory (flowella_manage.c, flowella_audit.c; not tested here).
 */
void
InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext oldcxt;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(false, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(oldcxt);
}
#endif

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
