/*-------------------------------------------------------------------------
 *
 * flowella_redact.c
 *		Keep tokens out of the server log: an emit_log_hook that cuts every
 *		token-shaped string down to its prefix plus "[REDACTED]".
 *
 * Callers put tokens into SQL text and bind parameters, and the server logs
 * both (log_statement, log_min_duration_statement, errors with their
 * STATEMENT, bind parameters in DETAIL or CONTEXT).  The hook rewrites every
 * text field of the message and, since the STATEMENT line is printed from
 * debug_query_string after the hook returns, points debug_query_string at a
 * redacted copy for the rest of the query.  The same rewrite reaches the
 * client's copy of an error, so error texts never echo a token either.
 *
 * Installed from _PG_init; it only sees every backend's messages when the
 * library is preloaded.  Runs inside error reporting: it must not raise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

static emit_log_hook_type prev_emit_log_hook = NULL;

/*
 * The redacted statement debug_query_string points to, if any.  Kept in
 * TopMemoryContext and replaced only when a new statement needs redacting,
 * by which time debug_query_string points elsewhere.
 */
static char *redacted_statement = NULL;

/* Whether s holds a token-shaped run; NULL-safe. */
static bool
needs_redaction(const char *s)
{
	return s != NULL && strstr(s, "flwl_") != NULL &&
		flwl_contains_token(s, strlen(s));
}

/* A redacted copy of s in CurrentMemoryContext. */
static char *
redacted_copy(const char *s)
{
	size_t		len = strlen(s);
	char	   *out = palloc(FLWL_REDACT_MAX(len) + 1);
	size_t		n = flwl_redact(s, len, out);

	out[n] = '\0';
	return out;
}

static void
redact_field(char **field)
{
	if (needs_redaction(*field))
		*field = redacted_copy(*field);
}

static void
redact_emit_log_hook(ErrorData *edata)
{
	redact_field(&edata->message);
	redact_field(&edata->detail);
	redact_field(&edata->detail_log);
	redact_field(&edata->hint);
	redact_field(&edata->context);
	redact_field(&edata->internalquery);

	if (needs_redaction(debug_query_string))
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		char	   *copy = redacted_copy(debug_query_string);

		MemoryContextSwitchTo(oldcxt);
		/* debug_query_string held a token, so it is not our earlier copy */
		if (redacted_statement != NULL)
			pfree(redacted_statement);
		redacted_statement = copy;
		debug_query_string = copy;
	}

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
flwl_redact_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_emit_log_hook;
}
