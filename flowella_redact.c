/*-------------------------------------------------------------------------
 *
 * flowella_redact.c
 *		Keep tokens, and the rows of the extension's tables, out of server
 *		log lines, client error and notice texts, and pg_stat_activity.
 *
 * Callers put tokens into SQL text and bind parameters, and the server logs
 * both (log_statement, log_min_duration_statement, errors with their
 * STATEMENT, bind parameters in DETAIL or CONTEXT).  Every token-shaped
 * string is cut down to its 18-character prefix plus "[REDACTED]" on four
 * paths:
 *
 *	- the server log: an emit_log_hook rewrites every text field of the
 *	  message and, since the STATEMENT line is printed from
 *	  debug_query_string after the hook returns, points debug_query_string
 *	  at a redacted copy for the rest of the query;
 *	- the client: emit_log_hook only runs for messages that also go to the
 *	  server log, so the ErrorResponse and NoticeResponse messages
 *	  themselves are rewritten on their way out, by wrapping the backend's
 *	  protocol output methods (PqCommMethods).  Only those two message
 *	  types are touched: result rows (apikey_create's token) pass as sent;
 *	- pg_stat_activity.query: once a top-level statement has been parsed,
 *	  a redacted copy of its text replaces what the backend reported;
 *	- rows in messages: an integrity-constraint error on one of the
 *	  extension's tables (NOT NULL, UNIQUE, foreign key, a CHECK other than
 *	  our own) would print the row or key values in its DETAIL, secret_hash
 *	  among them; that detail is replaced on both the log and client paths.
 *
 * What this cannot see is listed in the README ("What redaction covers"):
 * a token written with escapes or split over several literals, text in
 * application_name, and pg_stat_statements' copies of utility statements.
 *
 * Installed from _PG_init; the client path for every backend only when the
 * library is preloaded (a backend that loads it later wraps its own output
 * from then on).  All of this runs inside error reporting: it must not raise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "libpq/auth.h"
#include "libpq/libpq.h"
#include "miscadmin.h"
#include "parser/analyze.h"
#include "tcop/tcopprot.h"
#include "utils/backend_status.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

/*---- Hooks we chain to ----*/

static emit_log_hook_type prev_emit_log_hook = NULL;
static ClientAuthentication_hook_type prev_client_auth_hook = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;

/* The backend's protocol output methods we forward to, once wrapped. */
static const PQcommMethods *wrapped_comm = NULL;

/*
 * The redacted statement debug_query_string points to, if any.  Kept in
 * TopMemoryContext and replaced only when a new statement needs redacting,
 * by which time debug_query_string points elsewhere.
 */
static char *redacted_statement = NULL;

/* What replaces a detail that would print values of our tables. */
#define HIDDEN_ROW_DETAIL	"The values of the row are not shown."

/* The schema every table of the extension lives in. */
#define FLWL_SCHEMA			"flowella"

/*---- Function declarations ----*/

static bool needs_redaction(const char *s);
static char *redacted_copy(const char *s);
static bool hides_row_detail(const char *schema, bool integrity_error);
static void report_redacted_activity(const char *text);
static void redact_emit_log_hook(ErrorData *edata);
static void redact_client_auth_hook(Port *port, int status);
#if PG_VERSION_NUM >= 140000
static void redact_post_parse_analyze(ParseState *pstate, Query *query,
									  JumbleState *jstate);
#else
static void redact_post_parse_analyze(ParseState *pstate, Query *query);
#endif
static void wrap_client_output(void);
static int	redact_putmessage(char msgtype, const char *s, size_t len);
static void redact_putmessage_noblock(char msgtype, const char *s, size_t len);

/*---- Shared rules ----*/

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

/*
 * Whether the DETAIL of an error must be replaced: PostgreSQL's integrity
 * constraint errors print the failing row ("Failing row contains ...") or
 * the conflicting key values, and on our tables those include secret_hash.
 * Our own row CHECK names the field instead and sets no table, so it keeps
 * its detail.
 */
static bool
hides_row_detail(const char *schema, bool integrity_error)
{
	return integrity_error && schema != NULL && strcmp(schema, FLWL_SCHEMA) == 0;
}

/*---- Server log ----*/

static void
redact_field(char **field)
{
	if (needs_redaction(*field))
		*field = redacted_copy(*field);
}

static void
redact_emit_log_hook(ErrorData *edata)
{
	/* first, so that a detail about to be hidden is not redacted in vain */
	if (hides_row_detail(edata->schema_name,
						 ERRCODE_TO_CATEGORY(edata->sqlerrcode) ==
						 ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION))
	{
		if (edata->detail != NULL)
			edata->detail = pstrdup(HIDDEN_ROW_DETAIL);
		edata->detail_log = NULL;
	}

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
		/* a statement that failed before analysis still shows its text */
		report_redacted_activity(copy);
	}

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*---- pg_stat_activity ----*/

/*
 * Show text (already redacted) as this backend's current query.  Only a
 * client backend reports one; pgstat_report_activity copies the text into
 * shared memory without allocating or raising.
 */
static void
report_redacted_activity(const char *text)
{
	if (MyBackendType == B_BACKEND && pgstat_track_activities)
		pgstat_report_activity(STATE_RUNNING, text);
}

/*
 * The backend reported a top-level statement's text before parsing it; as
 * soon as it has parsed, replace that report with a redacted copy.  Nested
 * statements (SPI) have other source texts and are left alone: only
 * debug_query_string is what pg_stat_activity shows.
 */
static void
#if PG_VERSION_NUM >= 140000
redact_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
#else
redact_post_parse_analyze(ParseState *pstate, Query *query)
#endif
{
	if (pstate->p_sourcetext != NULL &&
		pstate->p_sourcetext == debug_query_string &&
		needs_redaction(pstate->p_sourcetext))
	{
		char	   *copy = redacted_copy(pstate->p_sourcetext);

		report_redacted_activity(copy);
		pfree(copy);
	}

	if (prev_post_parse_analyze_hook)
#if PG_VERSION_NUM >= 140000
		prev_post_parse_analyze_hook(pstate, query, jstate);
#else
		prev_post_parse_analyze_hook(pstate, query);
#endif
}

/*---- Client messages ----*/

/*
 * ErrorResponse ('E') and NoticeResponse ('N') bodies are a list of fields,
 * each a one-byte code and a NUL-terminated string, closed by a zero byte.
 * Returns whether any field must change; sets *hide_detail when the detail
 * is a row of ours.  A body that does not parse is left as it is.
 */
static bool
client_message_needs_rewrite(const char *s, size_t len, bool *hide_detail)
{
	const char *p = s;
	const char *end = s + len;
	const char *schema = NULL;
	bool		integrity = false;
	bool		has_detail = false;
	bool		has_token = false;

	while (p < end && *p != '\0')
	{
		char		code = *p++;
		size_t		vlen = strnlen(p, end - p);

		if (p + vlen >= end)
			return false;		/* unterminated: not ours to judge */
		if (code == PG_DIAG_SCHEMA_NAME)
			schema = p;
		else if (code == PG_DIAG_SQLSTATE)
			integrity = strncmp(p, "23", 2) == 0;
		else if (code == PG_DIAG_MESSAGE_DETAIL)
			has_detail = true;
		if (!has_token && needs_redaction(p))	/* p[vlen] is its NUL */
			has_token = true;
		p += vlen + 1;
	}
	*hide_detail = has_detail && hides_row_detail(schema, integrity);
	return has_token || *hide_detail;
}

/*
 * Write the rewritten body of a message into out (at least
 * FLWL_REDACT_MAX(len) + sizeof(HIDDEN_ROW_DETAIL) bytes); returns its
 * length.  The body parsed in client_message_needs_rewrite.
 */
static size_t
rewrite_client_message(const char *s, size_t len, bool hide_detail, char *out)
{
	const char *p = s;
	const char *end = s + len;
	size_t		o = 0;

	while (p < end && *p != '\0')
	{
		char		code = *p++;
		size_t		vlen = strnlen(p, end - p);

		out[o++] = code;
		if (code == PG_DIAG_MESSAGE_DETAIL && hide_detail)
		{
			memcpy(out + o, HIDDEN_ROW_DETAIL, sizeof(HIDDEN_ROW_DETAIL));
			o += sizeof(HIDDEN_ROW_DETAIL);
		}
		else
		{
			o += flwl_redact(p, vlen, out + o);
			out[o++] = '\0';
		}
		p += vlen + 1;
	}
	out[o++] = '\0';
	return o;
}

/*
 * Send a message through the wrapped methods, rewritten first when it is an
 * error or notice that carries a token or a row of ours.  If no memory is
 * left for the copy, the client gets a message without any text rather
 * than the original.
 */
static int
send_redacted(char msgtype, const char *s, size_t len, bool noblock)
{
	bool		hide_detail = false;
	const char *body = s;
	size_t		body_len = len;
	char	   *copy = NULL;
	int			result = 0;

	if ((msgtype == 'E' || msgtype == 'N') &&
		client_message_needs_rewrite(s, len, &hide_detail))
	{
		static const char withheld[] = "SERROR\0VERROR\0C53200\0Mmessage withheld: out of memory\0";

		copy = MemoryContextAllocExtended(CurrentMemoryContext,
										  FLWL_REDACT_MAX(len) + sizeof(HIDDEN_ROW_DETAIL),
										  MCXT_ALLOC_NO_OOM);
		if (copy != NULL)
		{
			body_len = rewrite_client_message(s, len, hide_detail, copy);
			body = copy;
		}
		else
		{
			body = withheld;
			body_len = sizeof(withheld);
		}
	}

	if (noblock)
		wrapped_comm->putmessage_noblock(msgtype, body, body_len);
	else
		result = wrapped_comm->putmessage(msgtype, body, body_len);
	if (copy != NULL)
		pfree(copy);
	return result;
}

static int
redact_putmessage(char msgtype, const char *s, size_t len)
{
	return send_redacted(msgtype, s, len, false);
}

static void
redact_putmessage_noblock(char msgtype, const char *s, size_t len)
{
	(void) send_redacted(msgtype, s, len, true);
}

static void
redact_comm_reset(void)
{
	wrapped_comm->comm_reset();
}

static int
redact_flush(void)
{
	return wrapped_comm->flush();
}

static int
redact_flush_if_writable(void)
{
	return wrapped_comm->flush_if_writable();
}

static bool
redact_is_send_pending(void)
{
	return wrapped_comm->is_send_pending();
}

static const PQcommMethods redacting_comm_methods = {
	redact_comm_reset,
	redact_flush,
	redact_flush_if_writable,
	redact_is_send_pending,
	redact_putmessage,
	redact_putmessage_noblock
};

/*
 * Put our methods in front of the backend's socket methods.  Called once a
 * client backend has its connection (and again harmlessly).
 */
static void
wrap_client_output(void)
{
	if (PqCommMethods == &redacting_comm_methods)
		return;
	wrapped_comm = PqCommMethods;
	PqCommMethods = &redacting_comm_methods;
}

/*
 * Every client backend, walsenders included, authenticates once its
 * connection is set up and before it runs any statement: wrap its output
 * there.
 */
static void
redact_client_auth_hook(Port *port, int status)
{
	if (prev_client_auth_hook)
		prev_client_auth_hook(port, status);
	wrap_client_output();
}

/*---- Set-up ----*/

void
flwl_redact_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_emit_log_hook;
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = redact_post_parse_analyze;

	if (process_shared_preload_libraries_in_progress)
	{
		prev_client_auth_hook = ClientAuthentication_hook;
		ClientAuthentication_hook = redact_client_auth_hook;
	}
	else if (MyProcPort != NULL)
		wrap_client_output();	/* loaded by a connected backend */
}
