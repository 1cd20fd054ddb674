/*-------------------------------------------------------------------------
 *
 * flowella_check.c
 *		The CHECK constraints of the tables, in C: label_ok, scope_set_ok,
 *		plan_name_ok, role_ok and api_key_row_ok; and the rule of a key's
 *		policy (allowlist and rate limit), which the API applies too.
 *
 * They apply the same validators as the API functions apply to their
 * arguments, so a direct write by the table owner or a restore cannot
 * store what the API would refuse.  They run for any role, in any
 * search_path, inside every INSERT and UPDATE of their tables: they run no
 * query, and see flwl_label_text_problem for their one name lookup.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_label_ok);
PG_FUNCTION_INFO_V1(flowella_scope_set_ok);
PG_FUNCTION_INFO_V1(flowella_plan_name_ok);
PG_FUNCTION_INFO_V1(flowella_role_ok);
PG_FUNCTION_INFO_V1(flowella_api_key_row_ok);

static const char *api_key_row_problem(FunctionCallInfo fcinfo,
									   const char **field);

/*---- Labels ----*/


/*
 * What is wrong with a label or organisation name, or NULL.
 *
 * The CHECK constraints call this for any role, in any search_path.  Its
 * one name lookup is the conversion to UTF-8 of a database in another
 * encoding (the default conversion is searched for along search_path), so
 * only then is the path pinned: a UTF-8 database pays nothing.
 */
const char *
flwl_label_text_problem(text *t)
{
	int			encoding = GetDatabaseEncoding();
	int			pinned = 0;
	char	   *utf8;

	if (encoding != PG_UTF8 && encoding != PG_SQL_ASCII)
		pinned = flwl_pin_search_path();
	utf8 = pg_server_to_any(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), PG_UTF8);
	flwl_unpin_search_path(pinned);

	return flwl_label_problem(utf8, (utf8 == VARDATA_ANY(t)) ?
							  VARSIZE_ANY_EXHDR(t) : strlen(utf8));
}


/* label_ok(text): the CHECK of labels and organisation names. */
Datum
flowella_label_ok(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(flwl_label_text_problem(PG_GETARG_TEXT_PP(0)) == NULL);
}

/*---- Scope sets ----*/

/*
 * scope_set_ok(text[]): the CHECK of plans' scope sets: one-dimensional,
 * no NULLs, every name well formed; empty is allowed.
 */
Datum
flowella_scope_set_ok(PG_FUNCTION_ARGS)
{
	Datum	   *elems;
	int			n;

	PG_RETURN_BOOL(flwl_scope_array_problem(PG_GETARG_ARRAYTYPE_P(0),
											FLWL_SCOPES_NAMES,
											&elems, &n) == NULL);
}

/*---- Plans and members ----*/

/* plan_name_ok(text): the CHECK of plan names (version 1.2 on). */
Datum
flowella_plan_name_ok(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(flwl_plan_name_problem(VARDATA_ANY(t),
										  VARSIZE_ANY_EXHDR(t)) == NULL);
}

/* role_ok(text): the CHECK of members' roles (version 1.2 on). */
Datum
flowella_role_ok(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_BOOL(flwl_role_known(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)));
}

/*---- Key policy ----*/

/*
 * What is wrong with an IP allowlist (not NULL: NULL means any address), or
 * NULL.  apikey_set_policy and the row CHECK both apply it.
 */
const char *
flwl_allowed_ips_problem(ArrayType *arr)
{
	if (ARR_NDIM(arr) == 0)
		return "An allowlist names at least one network; NULL allows every address.";
	if (ARR_NDIM(arr) != 1)
		return "An allowlist is a one-dimensional array of networks.";
	if (array_contains_nulls(arr))
		return "An allowlist must not contain NULL elements.";
	return NULL;
}

/* What is wrong with a rate limit (not NULL: NULL means none), or NULL. */
const char *
flwl_rate_limit_problem(int32 limit)
{
	if (limit < 1 || limit > FLWL_RATE_LIMIT_MAX)
		return "A rate limit is from 1 to " CppAsString2(FLWL_RATE_LIMIT_MAX) " requests per minute; NULL sets no limit.";
	return NULL;
}

/*---- Key rows ----*/

/*
 * api_key_row_ok(label, prefix, mode, secret_hash, scopes, created_at,
 * expires_at, revoked_at, revoked_by [, allowed_ips, rate_limit_per_minute]):
 * the one CHECK constraint of api_keys.  Version 1.3 passes the two policy
 * columns as well; 1.1 and 1.2 schemas call the 9-argument form.
 *
 * The API never writes a row that fails it; it stops direct writes and bad
 * restores.  One C function rather than a CHECK per rule because PostgreSQL
 * reads every CHECK expression back from the catalog on each INSERT, and
 * seven of them cost a tenth of a create.  It raises its own error naming
 * the bad field, without the "Failing row contains" detail that would put
 * the row (hash included) into the server log.
 */
static const char *
api_key_row_problem(FunctionCallInfo fcinfo, const char **field)
{
	FlwlMode	prefix_mode = FLWL_MODE_INVALID;
	const char *why;

	*field = "label";
	if (PG_ARGISNULL(0))
		return "The label must not be null.";
	if ((why = flwl_label_text_problem(PG_GETARG_TEXT_PP(0))) != NULL)
		return why;

	*field = "prefix";
	if (!PG_ARGISNULL(1))
	{
		text	   *prefix = PG_GETARG_TEXT_PP(1);

		prefix_mode = flwl_prefix_parse(VARDATA_ANY(prefix),
										VARSIZE_ANY_EXHDR(prefix));
	}
	if (prefix_mode == FLWL_MODE_INVALID)
		return "A prefix is \"flwl_live_\" or \"flwl_test_\" followed by 8 base62 characters.";

	*field = "mode";
	if (PG_ARGISNULL(2) ||
		flwl_mode_from_name(VARDATA_ANY(PG_GETARG_TEXT_PP(2)),
							VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(2))) != prefix_mode)
		return "The mode must be \"live\" or \"test\", the one the prefix names.";

	*field = "secret_hash";
	if (PG_ARGISNULL(3) || VARSIZE_ANY_EXHDR(PG_GETARG_BYTEA_PP(3)) != FLWL_HASH_LEN)
		return "The secret hash is the 32-byte SHA-256 of the token.";

	*field = "scopes";
	if (!PG_ARGISNULL(4))
	{
		Datum	   *elems;
		int			n;

		if (flwl_scope_array_problem(PG_GETARG_ARRAYTYPE_P(4),
									 FLWL_SCOPES_NOT_EMPTY | FLWL_SCOPES_NAMES,
									 &elems, &n) != NULL)
			return "Scopes are NULL (the plan's) or a non-empty one-dimensional array of valid scope names.";
	}

	*field = "expires_at";
	if (!PG_ARGISNULL(5) && !PG_ARGISNULL(6) &&
		PG_GETARG_TIMESTAMPTZ(6) <= PG_GETARG_TIMESTAMPTZ(5))
		return "A key must expire after it was created.";

	*field = "revoked_at";
	if (!PG_ARGISNULL(8) && PG_ARGISNULL(7))
		return "A key revoked by someone has a revocation time.";

	if (PG_NARGS() < 11)
		return NULL;

	*field = "allowed_ips";
	if (!PG_ARGISNULL(9) &&
		(why = flwl_allowed_ips_problem(PG_GETARG_ARRAYTYPE_P(9))) != NULL)
		return why;

	*field = "rate_limit_per_minute";
	if (!PG_ARGISNULL(10) &&
		(why = flwl_rate_limit_problem(PG_GETARG_INT32(10))) != NULL)
		return why;

	return NULL;
}

Datum
flowella_api_key_row_ok(PG_FUNCTION_ARGS)
{
	const char *field;
	const char *why = api_key_row_problem(fcinfo, &field);

	if (why != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid value in column \"%s\" of an API key row", field),
				 errdetail("%s", why)));
	PG_RETURN_BOOL(true);
}
