/*-------------------------------------------------------------------------
 *
 * flowella_manage.c
 *		The management and provisioning API: apikey_create, apikey_replace,
 *		apikey_revoke, apikey_set_scopes, apikey_set_policy, apikey_list,
 *		org_create, member_set, member_remove and plan_set.
 *
 * These functions are SECURITY DEFINER: their callers hold no write
 * privilege on any table.  So each one checks the actor itself, before any
 * change, through a saved SPI plan that joins the actor's membership:
 *
 *	- a call naming an org fails with 42501 unless the actor is its owner or
 *	  admin (the same for an org that does not exist);
 *	- a call naming a key fails with 42704 unless the key exists and the
 *	  actor manages its org, so callers learn nothing about other orgs.
 *
 * The row locks taken by those checks (FOR SHARE on the membership, FOR
 * UPDATE on the key) keep a concurrent demotion or revoke from slipping
 * between the check and the change.  Audit records are written by triggers
 * on the tables, in the same transaction.
 *
 * Arguments are checked with the validators of flowella_token.c and
 * flowella_scopes.c, the same ones the tables' CHECK constraints call
 * (flowella_check.c), so the API and a direct write meet one rule.
 *
 * A new token exists in this file only in a stack buffer, wiped before
 * return, and in the result row handed to the executor.
 *
 * Functions whose signature or result changed in a version have one C entry
 * point per shape, named after the version (flowella_apikey_list_1_3): a
 * database not yet updated calls the old one, whose queries name only the
 * columns its schema has.
 *
 * Every saved query names each operator, function and type with its schema
 * (OPERATOR(pg_catalog.=), pg_catalog.now(), ...) and runs with search_path
 * pinned to pg_catalog, pg_temp (flwl_query_exec): the audit triggers run
 * them for whoever changes a row, in whatever search_path that session or
 * its database has.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "common/int.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

/*
 * Creating an organisation's 51st active key draws a NOTICE; counting stops
 * there, so a create costs the same in an org of 100 000 keys as in an
 * empty one.
 */
#define KEYS_NOTICE_THRESHOLD	50
#define KEYS_COUNT_LIMIT		51	/* a literal: it is spliced into SQL */
StaticAssertDecl(KEYS_COUNT_LIMIT == KEYS_NOTICE_THRESHOLD + 1,
				 "the count stops at the key that draws the NOTICE");

/*
 * What create_key needs to mint a key: the row it inserts, but for the
 * token, its prefix and hash, and the creator (the actor).
 */
typedef struct KeySpec
{
	Datum		org_id;
	Datum		label;
	Datum		scopes;			/* the checked set to store ... */
	bool		scopes_null;	/* ... or NULL: the plan's scopes */
	FlwlMode	mode;
	Datum		expires_at;
	bool		expires_null;	/* never expires */
	Datum		replaces;		/* the key it replaces ... */
	bool		replaces_null;	/* ... or none */
	bool		with_policy;	/* 1.3 on: the policy columns below */
	Datum		allowed_ips;	/* cidr[] ... */
	bool		allowed_ips_null;	/* ... or any address */
	Datum		rate_limit;		/* int4 ... */
	bool		rate_limit_null;	/* ... or no limit */
	TimestampTz now;			/* its created_at */
	int64		active;			/* the org's active keys before it */
} KeySpec;

/*---- Saved queries ----*/

/* $1 org, $2 actor: the org's plan, if the actor is its owner or admin */
#define ORG_ACCESS_FROM \
	"  FROM flowella.members m" \
	"  JOIN flowella.orgs o ON o.org_id OPERATOR(pg_catalog.=) m.org_id" \
	"  JOIN flowella.plans p ON p.plan OPERATOR(pg_catalog.=) o.plan" \
	" WHERE m.org_id OPERATOR(pg_catalog.=) $1" \
	"   AND m.user_id OPERATOR(pg_catalog.=) $2" \
	"   AND m.role OPERATOR(pg_catalog.=) ANY (" FLWL_KEY_MANAGER_ROLES_SQL ")"

/*
 * The org's active keys, counted up to KEYS_COUNT_LIMIT: all a create needs
 * to know is whether it makes the org's 51st.  Two range probes of the
 * partial index api_keys_active_idx (org_id, expires_at) WHERE revoked_at IS
 * NULL, each reading at most KEYS_COUNT_LIMIT entries however many keys the
 * org has: revoked keys are not in the index and expired ones are outside
 * the second range.  The ORDER BY keeps the planner on the index (a LIMITed
 * sequential scan looks cheaper in a table of few orgs, and reads every key
 * when few are active), and now() rather than clock_timestamp() lets the
 * expiry bound be an index condition.  A subquery of apikey_create's access
 * check, so a create runs one query fewer.
 */
#define COUNT_ACTIVE_RANGE(org, expiry) \
	" (SELECT FROM flowella.api_keys k" \
	"   WHERE k.org_id OPERATOR(pg_catalog.=) " org \
	"     AND k.revoked_at IS NULL AND " expiry \
	"   ORDER BY k.org_id, k.expires_at" \
	"   LIMIT " CppAsString2(KEYS_COUNT_LIMIT) ")"
#define COUNT_ACTIVE_SQL(org) \
	"SELECT pg_catalog.count(*) FROM (" \
	COUNT_ACTIVE_RANGE(org, "k.expires_at IS NULL") " UNION ALL" \
	COUNT_ACTIVE_RANGE(org, "k.expires_at OPERATOR(pg_catalog.>) pg_catalog.now()") \
	") a"

/*
 * for apikey_create: the membership stays as checked until commit; column
 * 3 is the org's count of active keys
 */
static FlwlQuery q_org_access = {
	"SELECT o.plan, p.scopes, (" COUNT_ACTIVE_SQL("o.org_id") ")"
	ORG_ACCESS_FROM " FOR SHARE OF m",
	2, {UUIDOID, UUIDOID}
};

/* for reads, which must work in READ ONLY transactions and on standbys */
static FlwlQuery q_org_read = {
	"SELECT o.plan, p.scopes" ORG_ACCESS_FROM,
	2, {UUIDOID, UUIDOID}
};

/* $1 key, $2 actor: the key, if the actor manages its org; locked */
#define KEY_ACCESS_COLUMNS \
	"SELECT k.org_id, k.revoked_at, k.scopes, k.label, k.mode," \
	"       k.expires_at, o.plan, p.scopes, k.created_at"
#define KEY_ACCESS_FROM \
	"  FROM flowella.api_keys k" \
	"  JOIN flowella.members m ON m.org_id OPERATOR(pg_catalog.=) k.org_id" \
	"   AND m.user_id OPERATOR(pg_catalog.=) $2" \
	"   AND m.role OPERATOR(pg_catalog.=) ANY (" FLWL_KEY_MANAGER_ROLES_SQL ")" \
	"  JOIN flowella.orgs o ON o.org_id OPERATOR(pg_catalog.=) k.org_id" \
	"  JOIN flowella.plans p ON p.plan OPERATOR(pg_catalog.=) o.plan" \
	" WHERE k.key_id OPERATOR(pg_catalog.=) $1" \
	"   FOR UPDATE OF k FOR SHARE OF m"

static FlwlQuery q_key_access = {
	KEY_ACCESS_COLUMNS KEY_ACCESS_FROM,
	2, {UUIDOID, UUIDOID}
};

/* q_key_access on a 1.3 schema; columns 10 and 11 the key's policy */
static FlwlQuery q_key_access_1_3 = {
	KEY_ACCESS_COLUMNS ", k.allowed_ips, k.rate_limit_per_minute" KEY_ACCESS_FROM,
	2, {UUIDOID, UUIDOID}
};

static FlwlQuery q_count_active = {
	COUNT_ACTIVE_SQL("$1"),
	1, {UUIDOID}
};

/*
 * A prefix collision inserts nothing: retry with a new token.  Only the
 * prefix is an arbiter: prefixes (8 base62 characters, 47 bits) start to
 * repeat among some ten million keys, while a random key_id (122 bits) or
 * the hash of a fresh 190-bit secret never will, and each arbiter index
 * costs a probe before the insert.
 */
#define INSERT_KEY_COLUMNS \
	"INSERT INTO flowella.api_keys" \
	" (org_id, label, prefix, secret_hash, scopes, mode, created_at," \
	"  created_by, expires_at, replaces_key_id"
#define INSERT_KEY_VALUES	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10"
#define INSERT_KEY_CONFLICT	" ON CONFLICT (prefix) DO NOTHING RETURNING key_id"
#define INSERT_KEY_TYPES \
	UUIDOID, TEXTOID, TEXTOID, BYTEAOID, TEXTARRAYOID, TEXTOID, \
	TIMESTAMPTZOID, UUIDOID, TIMESTAMPTZOID, UUIDOID

static FlwlQuery q_insert_key = {
	INSERT_KEY_COLUMNS ")" INSERT_KEY_VALUES ")" INSERT_KEY_CONFLICT,
	10, {INSERT_KEY_TYPES}
};

/* q_insert_key on a 1.3 schema, with the key's policy */
static FlwlQuery q_insert_key_1_3 = {
	INSERT_KEY_COLUMNS ", allowed_ips, rate_limit_per_minute)"
	INSERT_KEY_VALUES ", $11, $12)" INSERT_KEY_CONFLICT,
	12, {INSERT_KEY_TYPES, CIDRARRAYOID, INT4OID}
};

static FlwlQuery q_revoke = {
	"UPDATE flowella.api_keys SET revoked_at = $3, revoked_by = $2"
	" WHERE key_id OPERATOR(pg_catalog.=) $1",
	3, {UUIDOID, UUIDOID, TIMESTAMPTZOID}
};

/* IS DISTINCT FROM, spelt out: it names no schema for its "=" */
static FlwlQuery q_set_scopes = {
	"UPDATE flowella.api_keys SET scopes = $2"
	" WHERE key_id OPERATOR(pg_catalog.=) $1"
	"   AND (scopes OPERATOR(pg_catalog.=) $2) IS NOT TRUE"
	"   AND (scopes IS NOT NULL OR $2 IS NOT NULL)",
	2, {UUIDOID, TEXTARRAYOID}
};

/* Both with IS DISTINCT FROM spelt out, as in q_set_scopes. */
static FlwlQuery q_set_policy = {
	"UPDATE flowella.api_keys SET allowed_ips = $2, rate_limit_per_minute = $3"
	" WHERE key_id OPERATOR(pg_catalog.=) $1"
	"   AND (((allowed_ips OPERATOR(pg_catalog.=) $2) IS NOT TRUE"
	"         AND (allowed_ips IS NOT NULL OR $2 IS NOT NULL))"
	"     OR ((rate_limit_per_minute OPERATOR(pg_catalog.=) $3) IS NOT TRUE"
	"         AND (rate_limit_per_minute IS NOT NULL OR $3 IS NOT NULL)))",
	3, {UUIDOID, CIDRARRAYOID, INT4OID}
};

static FlwlQuery q_set_expiry = {
	"UPDATE flowella.api_keys SET expires_at = $2"
	" WHERE key_id OPERATOR(pg_catalog.=) $1",
	2, {UUIDOID, TIMESTAMPTZOID}
};

#define LIST_COLUMNS \
	"SELECT key_id, label, prefix, scopes, mode, created_at, created_by," \
	"       last_used_at, expires_at, revoked_at, revoked_by," \
	"       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'" \
	"            WHEN expires_at OPERATOR(pg_catalog.<=) $2 THEN 'expired'" \
	"            ELSE 'active' END"
#define LIST_FROM \
	"  FROM flowella.api_keys WHERE org_id OPERATOR(pg_catalog.=) $1" \
	" ORDER BY created_at DESC, key_id DESC"

static FlwlQuery q_list = {
	LIST_COLUMNS LIST_FROM,
	2, {UUIDOID, TIMESTAMPTZOID}
};

/* 1.3 on: the policy after the 1.1 columns */
static FlwlQuery q_list_1_3 = {
	LIST_COLUMNS ", allowed_ips, rate_limit_per_minute" LIST_FROM,
	2, {UUIDOID, TIMESTAMPTZOID}
};

static FlwlQuery q_plan_exists = {
	"SELECT 1 FROM flowella.plans WHERE plan OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}
};

static FlwlQuery q_org_insert = {
	"INSERT INTO flowella.orgs (name, plan) VALUES ($1, $2) RETURNING org_id",
	2, {TEXTOID, TEXTOID}
};

/* Member changes of one org are serialized on its row. */
static FlwlQuery q_org_lock = {
	"SELECT 1 FROM flowella.orgs WHERE org_id OPERATOR(pg_catalog.=) $1"
	"   FOR NO KEY UPDATE",
	1, {UUIDOID}
};

/*
 * $1 org, $2 user: the member's role and the org's number of owners.  Run
 * after lock_org, with a new snapshot (not read-only), so that in READ
 * COMMITTED it sees the member changes committed while it waited for the
 * lock; the owners' rows are locked too, so that in REPEATABLE READ a
 * concurrent demotion fails this transaction (40001) instead of being
 * missed by its older snapshot.
 */
static FlwlQuery q_member_role = {
	"SELECT role,"
	"       (SELECT pg_catalog.count(*) FROM"
	"         (SELECT FROM flowella.members o"
	"           WHERE o.org_id OPERATOR(pg_catalog.=) $1"
	"             AND o.role OPERATOR(pg_catalog.=) '" FLWL_ROLE_OWNER "'"
	"             FOR UPDATE) owners)"
	"  FROM flowella.members"
	" WHERE org_id OPERATOR(pg_catalog.=) $1 AND user_id OPERATOR(pg_catalog.=) $2",
	2, {UUIDOID, UUIDOID}
};

/* role is NOT NULL: "<>" is IS DISTINCT FROM here */
static FlwlQuery q_member_upsert = {
	"INSERT INTO flowella.members AS m (org_id, user_id, role)"
	" VALUES ($1, $2, $3)"
	" ON CONFLICT (org_id, user_id) DO UPDATE"
	"   SET role = excluded.role, updated_at = pg_catalog.now()"
	" WHERE m.role OPERATOR(pg_catalog.<>) excluded.role",
	3, {UUIDOID, UUIDOID, TEXTOID}
};

static FlwlQuery q_member_delete = {
	"DELETE FROM flowella.members"
	" WHERE org_id OPERATOR(pg_catalog.=) $1 AND user_id OPERATOR(pg_catalog.=) $2",
	2, {UUIDOID, UUIDOID}
};

static FlwlQuery q_plan_upsert = {
	"INSERT INTO flowella.plans AS p (plan, scopes, audit_log)"
	" VALUES ($1, $2, $3)"
	" ON CONFLICT (plan) DO UPDATE"
	"   SET scopes = excluded.scopes, audit_log = excluded.audit_log,"
	"       updated_at = pg_catalog.now()",
	3, {TEXTOID, TEXTARRAYOID, BOOLOID}
};

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_apikey_create);
PG_FUNCTION_INFO_V1(flowella_apikey_replace);
PG_FUNCTION_INFO_V1(flowella_apikey_replace_1_3);
PG_FUNCTION_INFO_V1(flowella_apikey_revoke);
PG_FUNCTION_INFO_V1(flowella_apikey_set_scopes);
PG_FUNCTION_INFO_V1(flowella_apikey_set_policy);
PG_FUNCTION_INFO_V1(flowella_apikey_list);
PG_FUNCTION_INFO_V1(flowella_apikey_list_1_3);
PG_FUNCTION_INFO_V1(flowella_org_create);
PG_FUNCTION_INFO_V1(flowella_member_set);
PG_FUNCTION_INFO_V1(flowella_member_remove);
PG_FUNCTION_INFO_V1(flowella_plan_set);

/*---- SPI helpers ----*/

/*
 * The saved plan of q, prepared on first use.  Caller is connected to SPI,
 * with search_path pinned (flwl_pin_search_path).
 */
SPIPlanPtr
flwl_query_plan(FlwlQuery *q)
{
	if (q->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(q->sql, q->nargs, q->argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		q->plan = plan;
	}
	return q->plan;
}

/*
 * Run a saved query; returns the SPI result code, >= 0.  It is prepared and
 * run with search_path pinned (see flwl_pin_search_path): the audit triggers
 * run it for any role, in any search_path.
 */
int
flwl_query_exec(FlwlQuery *q, Datum *values, const char *nulls, bool read_only,
				long count)
{
	int			rc;
	int			pinned = flwl_pin_search_path();

	rc = SPI_execute_plan(flwl_query_plan(q), values, nulls, read_only, count);
	if (rc < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	flwl_unpin_search_path(pinned);
	return rc;
}

/* Column n (1-based) of result row 0, or (Datum) 0 with *isnull set. */
static Datum
result_value(int n, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, n, isnull);
}


/*---- Validation ----*/

static void
invalid_argument(const char *field, const char *detail_text)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s", field),
			 errdetail("%s", detail_text)));
}

/* Report 22023 for a NULL argument. */
void
flwl_require_arg(FunctionCallInfo fcinfo, int argno, const char *field)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s", field),
				 errdetail("The %s must not be null.", field)));
}

/* Labels and organisation names: see flwl_label_problem. */
static void
check_label(FunctionCallInfo fcinfo, int argno, const char *field)
{
	const char *problem;

	flwl_require_arg(fcinfo, argno, field);
	problem = flwl_label_text_problem(PG_GETARG_TEXT_PP(argno));
	if (problem != NULL)
		invalid_argument(field, problem);
}

static FlwlMode
check_mode(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	FlwlMode	mode;

	flwl_require_arg(fcinfo, argno, "mode");
	t = PG_GETARG_TEXT_PP(argno);
	mode = flwl_mode_from_name(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	if (mode == FLWL_MODE_INVALID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid mode"),
				 errdetail("Mode \"%s\" is unknown; a key's mode is \"live\" or \"test\".",
						   flwl_quotable(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)))));
	return mode;
}

/*
 * A scope list argument, checked by flwl_scope_array_problem with flags,
 * then sorted and deduplicated in byte order so that stored sets compare
 * equal.  22023 names what is wrong.
 */
static Datum *
scope_elements(ArrayType *arr, int flags, int *count)
{
	Datum	   *elems;
	int			n;
	int			kept = 0;
	const char *problem = flwl_scope_array_problem(arr, flags, &elems, &n);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid scopes"),
				 errdetail("%s", problem),
				 ARR_NDIM(arr) == 0 ?
				 errhint("Pass NULL to give the key all of its plan's scopes.") : 0));

	if (n > 1)
		qsort(elems, n, sizeof(Datum), flwl_text_datum_cmp);
	for (int i = 0; i < n; i++)
		if (kept == 0 || flwl_text_datum_cmp(&elems[kept - 1], &elems[i]) != 0)
			elems[kept++] = elems[i];

	*count = kept;
	return elems;
}

static Datum
scope_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

/*
 * A key's requested scopes, checked against its plan.  Returns the sorted
 * set to store.
 */
static Datum
check_key_scopes(ArrayType *arr, Datum plan_scopes, const char *plan)
{
	int			n;
	Datum	   *elems = scope_elements(arr, FLWL_SCOPES_NOT_EMPTY, &n);
	FlwlScopeSet offered = flwl_scope_set(plan_scopes);
	StringInfoData missing;
	int			listed = 0;

	initStringInfo(&missing);
	for (int i = 0; i < n; i++)
		if (!flwl_scope_set_has(&offered, elems[i]))
			flwl_append_name(&missing, &listed, DatumGetTextPP(elems[i]));

	if (listed > 0)
	{
		flwl_finish_name_list(&missing, listed);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid scopes"),
				 errdetail("Plan \"%s\" does not offer %s %s.", plan,
						   listed == 1 ? "scope" : "scopes", missing.data)));
	}
	return scope_array(elems, n);
}

/* 22023 unless the timestamp argument is NULL or after now. */
static void
check_expiry(FunctionCallInfo fcinfo, int argno, TimestampTz now)
{
	if (!PG_ARGISNULL(argno) && PG_GETARG_TIMESTAMPTZ(argno) <= now)
		invalid_argument("expires_at", "The expiry time must be in the future.");
}

/*
 * The policy arguments allowed_ips (cidr[]) and rate_limit_per_minute at
 * ips_arg and ips_arg + 1: NULL or what flwl_allowed_ips_problem and
 * flwl_rate_limit_problem accept, else 22023.
 */
static void
check_policy(FunctionCallInfo fcinfo, int ips_arg)
{
	const char *problem;

	if (!PG_ARGISNULL(ips_arg) &&
		(problem = flwl_allowed_ips_problem(PG_GETARG_ARRAYTYPE_P(ips_arg))) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid allowed_ips"),
				 errdetail("%s", problem),
				 errhint("Pass NULL to allow every client address.")));
	if (!PG_ARGISNULL(ips_arg + 1) &&
		(problem = flwl_rate_limit_problem(PG_GETARG_INT32(ips_arg + 1))) != NULL)
		invalid_argument("rate_limit_per_minute", problem);
}

/* The longest grace period of a rotation. */
#define GRACE_MAX_DAYS	30

/*
 * The grace period argument as a length of time in microseconds, a month
 * counting 30 days and a day 24 hours (as interval comparison counts them),
 * so that "30 days" is the bound whatever the calendar.  22023 unless it
 * is from 0 to 30 days.
 */
static int64
check_grace(FunctionCallInfo fcinfo, int argno)
{
	Interval   *grace = PG_GETARG_INTERVAL_P(argno);
	int64		days = (int64) grace->month * DAYS_PER_MONTH + grace->day;
	int64		span;

	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &span) ||
		pg_add_s64_overflow(span, grace->time, &span) ||
		span < 0 || span > GRACE_MAX_DAYS * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid grace"),
				 errdetail("A grace period is from 0 to %d days.", GRACE_MAX_DAYS),
				 errhint("Pass NULL to leave the old key's expiry as it is.")));
	return span;
}

/*---- Access checks ----*/

/*
 * Run an access check query for the org or key in argument argno and the
 * actor; true when it found the one row (left in SPI_tuptable row 0).  A
 * NULL argument names nothing, so it finds nothing.
 */
static bool
access_row(FlwlQuery *q, FunctionCallInfo fcinfo, int argno, bool read_only)
{
	Datum		args[2];

	args[1] = UUIDPGetDatum(unconstify(pg_uuid_t *, flwl_require_actor()));
	if (PG_ARGISNULL(argno))
		return false;
	args[0] = PG_GETARG_DATUM(argno);
	return flwl_query_exec(q, args, NULL, read_only, 1) == SPI_OK_SELECT &&
		SPI_processed == 1;
}

/*
 * 42501 unless the actor is owner or admin of the org in argument argno
 * (a NULL org is one that does not exist); for_change also locks the
 * membership row.  Leaves the org's plan name and scopes in SPI_tuptable
 * row 0 (columns 1 and 2; for_change adds its count of active keys).
 */
static void
require_org_access(FunctionCallInfo fcinfo, int argno, bool for_change)
{
	if (!access_row(for_change ? &q_org_access : &q_org_read, fcinfo, argno,
					!for_change))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to manage API keys of this organisation"),
				 errdetail("Only owners and admins of an organisation may manage its API keys.")));
}

/*
 * 42704 unless the key in argument argno exists and the actor manages its
 * org; the key row is then locked and its columns are in SPI_tuptable row 0
 * (see q_key_access, or the query q given, which starts with the same
 * columns).
 */
static void
require_key_access_by(FlwlQuery *q, FunctionCallInfo fcinfo, int argno)
{
	if (!access_row(q, fcinfo, argno, false))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("API key not found"),
				 errdetail("No key with this id exists, or the acting user may not manage it.")));
}

static void
require_key_access(FunctionCallInfo fcinfo, int argno)
{
	require_key_access_by(&q_key_access, fcinfo, argno);
}

/*
 * require_key_access, then refuse (with sqlstate, the one the function's
 * contract gives) to change what of a revoked key: a revoked key stays as
 * it was when revoked.
 */
static void
require_unrevoked_key(FunctionCallInfo fcinfo, int argno, int sqlstate,
					  const char *what)
{
	bool		isnull;

	require_key_access(fcinfo, argno);
	(void) result_value(2, &isnull);
	if (!isnull)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("cannot change the %s of a revoked API key", what),
				 errdetail("A revoked key stays as it was when revoked.")));
}

/*---- Key creation ----*/

/*
 * Mint a key described by spec and add it to the SRF's materialized result
 * (rsinfo->setResult, set up by InitMaterializedSRF).  Caller is connected
 * to SPI.
 */
static void
create_key(ReturnSetInfo *rsinfo, const KeySpec *spec)
{
	char		token[FLWL_TOKEN_LEN];
	unsigned char hash[FLWL_HASH_LEN];
	bytea	   *hash_datum = palloc(VARHDRSZ + FLWL_HASH_LEN);
	Datum		args[12];
	char		nulls[12];
	Datum		key_id = (Datum) 0;
	bool		isnull;

	PG_TRY();
	{
		for (int attempt = 0; attempt < 5 && key_id == (Datum) 0; attempt++)
		{
			flwl_token_generate(spec->mode, token);
			flwl_token_hash(token, FLWL_TOKEN_LEN, hash);
			SET_VARSIZE(hash_datum, VARHDRSZ + FLWL_HASH_LEN);
			memcpy(VARDATA(hash_datum), hash, FLWL_HASH_LEN);

			memset(nulls, ' ', sizeof(nulls));
			args[0] = spec->org_id;
			args[1] = spec->label;
			args[2] = PointerGetDatum(cstring_to_text_with_len(token, FLWL_PREFIX_LEN));
			args[3] = PointerGetDatum(hash_datum);
			args[4] = spec->scopes;
			nulls[4] = spec->scopes_null ? 'n' : ' ';
			args[5] = CStringGetTextDatum(flwl_mode_name(spec->mode));
			args[6] = TimestampTzGetDatum(spec->now);
			args[7] = UUIDPGetDatum(unconstify(pg_uuid_t *, flwl_require_actor()));
			args[8] = spec->expires_at;
			nulls[8] = spec->expires_null ? 'n' : ' ';
			args[9] = spec->replaces;
			nulls[9] = spec->replaces_null ? 'n' : ' ';
			args[10] = spec->allowed_ips;
			nulls[10] = spec->allowed_ips_null ? 'n' : ' ';
			args[11] = spec->rate_limit;
			nulls[11] = spec->rate_limit_null ? 'n' : ' ';

			if (flwl_query_exec(spec->with_policy ? &q_insert_key_1_3 : &q_insert_key,
								args, nulls, false, 0) == SPI_OK_INSERT_RETURNING &&
				SPI_processed == 1)
				key_id = result_value(1, &isnull);
		}
		if (key_id == (Datum) 0)
			elog(ERROR, "could not find an unused key prefix");

		{
			Datum		values[3];
			bool		rnulls[3] = {false, false, false};
			text	   *token_text = cstring_to_text_with_len(token, FLWL_TOKEN_LEN);

			values[0] = key_id;
			values[1] = PointerGetDatum(token_text);
			values[2] = PointerGetDatum(cstring_to_text_with_len(token, FLWL_PREFIX_LEN));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values,
								 rnulls);
			sodium_memzero(token_text, VARSIZE(token_text));
		}
	}
	PG_FINALLY();
	{
		sodium_memzero(token, sizeof(token));
		sodium_memzero(hash, sizeof(hash));
	}
	PG_END_TRY();

	/* once, for the person who makes the 51st, not for every create after */
	if (spec->active == KEYS_NOTICE_THRESHOLD)
		ereport(NOTICE,
				(errmsg("organisation now has %d active API keys", KEYS_COUNT_LIMIT),
				 errdetail("It is given when a new key takes an organisation past %d active keys, not for each key after.",
						   KEYS_NOTICE_THRESHOLD),
				 errhint("Use one key per integration rather than one per developer: many active keys make rotation and review hard.")));
}

/*
 * apikey_create(org_id uuid, label text, scopes text[], mode text,
 *				 expires_at timestamptz) returns table (key_id, token, prefix)
 */
static Datum
apikey_create_body(PG_FUNCTION_ARGS)
{
	KeySpec		spec = {0};
	char	   *plan;
	bool		isnull;

	spec.now = GetCurrentTimestamp();
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	require_org_access(fcinfo, 0, true);
	spec.active = DatumGetInt64(result_value(3, &isnull));

	check_label(fcinfo, 1, "label");
	spec.mode = check_mode(fcinfo, 3);
	check_expiry(fcinfo, 4, spec.now);

	plan = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	spec.scopes_null = PG_ARGISNULL(2);
	if (!spec.scopes_null)
		spec.scopes = check_key_scopes(PG_GETARG_ARRAYTYPE_P(2),
									   result_value(2, &isnull), plan);

	spec.org_id = PG_GETARG_DATUM(0);
	spec.label = PG_GETARG_DATUM(1);
	spec.expires_at = PG_GETARG_DATUM(4);
	spec.expires_null = PG_ARGISNULL(4);
	spec.replaces_null = true;
	create_key((ReturnSetInfo *) fcinfo->resultinfo, &spec);

	SPI_finish();
	return (Datum) 0;
}

Datum
flowella_apikey_create(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_create_body);
}

/*
 * apikey_replace(old_key_id uuid [, grace interval]) returns table (key_id,
 * token, prefix)
 *
 * The new key takes the old one's org, label, mode and scopes (those its
 * plan still offers), from 1.3 on its policy, and, if the old key had an
 * expiry, the same lifetime (exactly, in microseconds) counted from now.
 * Without a grace period the old key is left as it is, revoked or not:
 * rotation is replace, roll out, revoke.  With one (1.3 on), an active old
 * key's expiry becomes least(expires_at, now() + grace), now() being the
 * start of the transaction, but never before the old key's creation (a key
 * created and replaced in one transaction expires a microsecond after it
 * was created); the audit trigger records key.expiry_changed.
 */
static Datum
replace_key(FunctionCallInfo fcinfo, bool v1_3)
{
	KeySpec		spec = {0};
	bool		isnull;
	text	   *mode_text;
	bool		with_grace = v1_3 && !PG_ARGISNULL(1);
	int64		grace = 0;
	bool		old_revoked;
	TimestampTz old_expiry = 0;
	TimestampTz old_created;

	spec.now = GetCurrentTimestamp();
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	require_key_access_by(v1_3 ? &q_key_access_1_3 : &q_key_access, fcinfo, 0);
	if (with_grace)
		grace = check_grace(fcinfo, 1);

	(void) result_value(2, &isnull);
	old_revoked = !isnull;
	old_created = DatumGetTimestampTz(result_value(9, &isnull));
	if (v1_3)
	{
		spec.with_policy = true;
		spec.allowed_ips = result_value(10, &spec.allowed_ips_null);
		spec.rate_limit = result_value(11, &spec.rate_limit_null);
	}

	spec.org_id = result_value(1, &isnull);
	spec.scopes = result_value(3, &spec.scopes_null);
	spec.label = result_value(4, &isnull);
	mode_text = DatumGetTextPP(result_value(5, &isnull));
	spec.mode = flwl_mode_from_name(VARDATA_ANY(mode_text),
									VARSIZE_ANY_EXHDR(mode_text));
	spec.expires_at = result_value(6, &spec.expires_null);
	if (!spec.expires_null)
	{
		old_expiry = DatumGetTimestampTz(spec.expires_at);
		/* an infinite expiry stays infinite; a finite one keeps its length */
		if (!TIMESTAMP_NOT_FINITE(old_expiry))
			spec.expires_at = TimestampTzGetDatum(spec.now +
												  (old_expiry - old_created));
	}
	spec.replaces = PG_GETARG_DATUM(0);

	/* a plan downgrade may have taken some of the old key's scopes away */
	if (!spec.scopes_null)
	{
		FlwlScopeSet offered = flwl_scope_set(result_value(8, &isnull));
		FlwlScopeSet kept = flwl_effective_scopes(spec.scopes, false, &offered);

		spec.scopes = kept.array;
		if (kept.n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid scopes"),
					 errdetail("Plan \"%s\" no longer offers any of the old key's scopes.",
							   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7))));
	}

	flwl_query_exec(&q_count_active, &spec.org_id, NULL, true, 1);
	spec.active = DatumGetInt64(result_value(1, &isnull));
	create_key((ReturnSetInfo *) fcinfo->resultinfo, &spec);

	if (with_grace && !old_revoked)
	{
		TimestampTz end = GetCurrentTransactionStartTimestamp() + grace;

		if (end <= old_created)
			end = old_created + 1;
		if (spec.expires_null || end < old_expiry)
		{
			Datum		args[2];

			args[0] = PG_GETARG_DATUM(0);
			args[1] = TimestampTzGetDatum(end);
			flwl_query_exec(&q_set_expiry, args, NULL, false, 0);
		}
	}

	SPI_finish();
	return (Datum) 0;
}

static Datum
apikey_replace_body(PG_FUNCTION_ARGS)
{
	return replace_key(fcinfo, false);
}

static Datum
apikey_replace_1_3_body(PG_FUNCTION_ARGS)
{
	return replace_key(fcinfo, true);
}

/* Versions 1.0 to 1.2: apikey_replace(old_key_id uuid) */
Datum
flowella_apikey_replace(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_replace_body);
}

/* 1.3 on: apikey_replace(old_key_id uuid, grace interval) */
Datum
flowella_apikey_replace_1_3(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_replace_1_3_body);
}

/*---- Key changes ----*/

/*
 * apikey_revoke(key_id uuid) returns timestamptz
 *
 * Idempotent: revoking a revoked key returns its first revocation time and
 * changes nothing, so it writes no second audit record.
 */
static Datum
apikey_revoke_body(PG_FUNCTION_ARGS)
{
	TimestampTz revoked_at;
	Datum		revoked;
	bool		isnull;

	SPI_connect();
	require_key_access(fcinfo, 0);

	revoked = result_value(2, &isnull);
	if (!isnull)
		revoked_at = DatumGetTimestampTz(revoked);
	else
	{
		Datum		args[3];

		revoked_at = GetCurrentTimestamp();
		args[0] = PG_GETARG_DATUM(0);
		args[1] = UUIDPGetDatum(unconstify(pg_uuid_t *, flwl_require_actor()));
		args[2] = TimestampTzGetDatum(revoked_at);
		flwl_query_exec(&q_revoke, args, NULL, false, 0);
	}

	SPI_finish();
	PG_RETURN_TIMESTAMPTZ(revoked_at);
}

Datum
flowella_apikey_revoke(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_revoke_body);
}

/*
 * apikey_set_scopes(key_id uuid, scopes text[]) returns void
 *
 * NULL makes the key inherit its plan's scopes again.  Setting the scopes a
 * key already has changes nothing and is not audited.
 */
static Datum
apikey_set_scopes_body(PG_FUNCTION_ARGS)
{
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;

	SPI_connect();
	require_unrevoked_key(fcinfo, 0, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						  "scopes");

	args[0] = PG_GETARG_DATUM(0);
	if (PG_ARGISNULL(1))
		nulls[1] = 'n';
	else
		args[1] = check_key_scopes(PG_GETARG_ARRAYTYPE_P(1),
								   result_value(8, &isnull),
								   SPI_getvalue(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 7));
	flwl_query_exec(&q_set_scopes, args, nulls, false, 0);

	SPI_finish();
	PG_RETURN_VOID();
}

Datum
flowella_apikey_set_scopes(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_set_scopes_body);
}

/*
 * apikey_set_policy(key_id uuid, allowed_ips cidr[],
 *					 rate_limit_per_minute integer) returns void
 *
 * NULL lifts either restriction.  Refused (22023) on a revoked key, which
 * stays as it was when revoked.  Setting the policy a key already has
 * changes nothing and is not audited.
 */
static Datum
apikey_set_policy_body(PG_FUNCTION_ARGS)
{
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};

	SPI_connect();
	require_unrevoked_key(fcinfo, 0, ERRCODE_INVALID_PARAMETER_VALUE, "policy");
	check_policy(fcinfo, 1);

	/* SPI reads no value whose null flag is set */
	for (int i = 0; i <= 2; i++)
	{
		args[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	flwl_query_exec(&q_set_policy, args, nulls, false, 0);

	SPI_finish();
	PG_RETURN_VOID();
}

Datum
flowella_apikey_set_policy(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_set_policy_body);
}

/*
 * apikey_list(org_id uuid): every key of the org, newest first, revoked and
 * expired ones included; never hash or token.  From 1.3 on, each key's
 * policy follows (q_list_1_3).
 */
static Datum
list_keys(FunctionCallInfo fcinfo, FlwlQuery *q)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		args[2];

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	require_org_access(fcinfo, 0, false);

	args[0] = PG_GETARG_DATUM(0);
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	flwl_query_exec(q, args, NULL, true, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);

	SPI_finish();
	return (Datum) 0;
}

static Datum
apikey_list_body(PG_FUNCTION_ARGS)
{
	return list_keys(fcinfo, &q_list);
}

static Datum
apikey_list_1_3_body(PG_FUNCTION_ARGS)
{
	return list_keys(fcinfo, &q_list_1_3);
}

/* Versions 1.0 to 1.2: twelve columns */
Datum
flowella_apikey_list(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_list_body);
}

/* 1.3 on: the policy columns too */
Datum
flowella_apikey_list_1_3(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, apikey_list_1_3_body);
}

/*---- Provisioning ----*/

/* 22023 unless the plan exists. Caller is connected to SPI. */
static void
require_plan(Datum plan)
{
	if (flwl_query_exec(&q_plan_exists, &plan, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
	{
		text	   *t = DatumGetTextPP(plan);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid plan"),
				 errdetail("Plan \"%s\" does not exist.",
						   flwl_quotable(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t))),
				 errhint("Create it with flowella.plan_set first.")));
	}
}

/* 42704 unless the org exists; locks it against concurrent member changes. */
static void
lock_org(Datum org_id)
{
	if (flwl_query_exec(&q_org_lock, &org_id, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("organisation not found")));
}

/* 22023 unless the role argument names a role (flwl_role_names). */
static void
check_role(FunctionCallInfo fcinfo, int argno)
{
	text	   *t;
	StringInfoData roles;

	flwl_require_arg(fcinfo, argno, "role");
	t = PG_GETARG_TEXT_PP(argno);
	if (flwl_role_known(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)))
		return;

	/* "owner, admin, user or read_only" */
	initStringInfo(&roles);
	for (size_t i = 0; i < flwl_role_count; i++)
		appendStringInfo(&roles, "%s%s",
						 i == 0 ? "" : (i + 1 < flwl_role_count ? ", " : " or "),
						 flwl_role_names[i]);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid role"),
			 errdetail("Role \"%s\" is unknown; a member's role is %s.",
					   flwl_quotable(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)),
					   roles.data)));
}

/*
 * 55000 if the member about to lose owner rights is the org's last owner:
 * an org without an owner could never be managed again.  Expects the result
 * of q_member_role.
 */
static void
protect_last_owner(const char *new_role)
{
	char	   *role = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	bool		isnull;

	if (strcmp(role, FLWL_ROLE_OWNER) == 0 &&
		(new_role == NULL || strcmp(new_role, FLWL_ROLE_OWNER) != 0) &&
		DatumGetInt64(result_value(2, &isnull)) <= 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot remove the last owner of an organisation"),
				 errhint("Make another member owner first.")));
}

/* org_create(name text, plan text, owner_user_id uuid) returns uuid */
static Datum
org_create_body(PG_FUNCTION_ARGS)
{
	Datum		args[3];
	Datum		org_id;
	bool		isnull;
	MemoryContext upper = CurrentMemoryContext;

	check_label(fcinfo, 0, "name");
	flwl_require_arg(fcinfo, 1, "plan");
	flwl_require_arg(fcinfo, 2, "owner_user_id");

	SPI_connect();
	require_plan(PG_GETARG_DATUM(1));

	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	flwl_query_exec(&q_org_insert, args, NULL, false, 0);
	org_id = result_value(1, &isnull);
	{
		MemoryContext spicxt = MemoryContextSwitchTo(upper);

		org_id = datumCopy(org_id, false, UUID_LEN);
		MemoryContextSwitchTo(spicxt);
	}

	args[0] = org_id;
	args[1] = PG_GETARG_DATUM(2);
	args[2] = CStringGetTextDatum(FLWL_ROLE_OWNER);
	flwl_query_exec(&q_member_upsert, args, NULL, false, 0);

	SPI_finish();
	PG_RETURN_DATUM(org_id);
}

Datum
flowella_org_create(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, org_create_body);
}

/* member_set(org_id uuid, user_id uuid, role text): add or change a member */
static Datum
member_set_body(PG_FUNCTION_ARGS)
{
	Datum		args[3];

	flwl_require_arg(fcinfo, 0, "org_id");
	flwl_require_arg(fcinfo, 1, "user_id");
	check_role(fcinfo, 2);

	SPI_connect();
	lock_org(PG_GETARG_DATUM(0));

	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	args[2] = PG_GETARG_DATUM(2);
	flwl_query_exec(&q_member_role, args, NULL, false, 1);
	if (SPI_processed == 1)
		protect_last_owner(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	flwl_query_exec(&q_member_upsert, args, NULL, false, 0);

	SPI_finish();
	PG_RETURN_VOID();
}

Datum
flowella_member_set(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, member_set_body);
}

/* member_remove(org_id uuid, user_id uuid) */
static Datum
member_remove_body(PG_FUNCTION_ARGS)
{
	Datum		args[2];

	flwl_require_arg(fcinfo, 0, "org_id");
	flwl_require_arg(fcinfo, 1, "user_id");

	SPI_connect();
	lock_org(PG_GETARG_DATUM(0));

	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	flwl_query_exec(&q_member_role, args, NULL, false, 1);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("member not found"),
				 errdetail("The user is not a member of this organisation.")));
	protect_last_owner(NULL);
	flwl_query_exec(&q_member_delete, args, NULL, false, 0);

	SPI_finish();
	PG_RETURN_VOID();
}

Datum
flowella_member_remove(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, member_remove_body);
}

/*
 * plan_set(plan text, scopes text[], audit_log boolean): create or change a
 * plan.  Taking a scope away takes it from every key of the plan's orgs at
 * once, since verify intersects with the plan's current scopes.
 */
static Datum
plan_set_body(PG_FUNCTION_ARGS)
{
	text	   *plan;
	const char *problem;
	Datum	   *elems;
	int			n;
	Datum		args[3];

	flwl_require_arg(fcinfo, 0, "plan");
	flwl_require_arg(fcinfo, 1, "scopes");
	flwl_require_arg(fcinfo, 2, "audit_log");

	plan = PG_GETARG_TEXT_PP(0);
	problem = flwl_plan_name_problem(VARDATA_ANY(plan), VARSIZE_ANY_EXHDR(plan));
	if (problem != NULL)
		invalid_argument("plan", problem);

	elems = scope_elements(PG_GETARG_ARRAYTYPE_P(1), FLWL_SCOPES_NAMES, &n);

	SPI_connect();
	args[0] = PG_GETARG_DATUM(0);
	args[1] = scope_array(elems, n);
	args[2] = PG_GETARG_DATUM(2);
	flwl_query_exec(&q_plan_upsert, args, NULL, false, 0);
	SPI_finish();
	PG_RETURN_VOID();
}

Datum
flowella_plan_set(PG_FUNCTION_ARGS)
{
	return flwl_run_api(fcinfo, plan_set_body);
}
