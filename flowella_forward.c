/*-------------------------------------------------------------------------
 *
 * flowella_forward.c
 *		Usage across servers: a hot standby's usage worker hands what
 *		verify counted there to the primary over libpq; the primary takes
 *		it with flowella.usage_submit.
 *
 * A standby cannot write, so what verify counts there (usage buckets and
 * last uses, flowella_usage.c) is submitted to the primary named by
 * flowella.usage_primary_conninfo, in the database of the same name, by
 * the database's flush worker logged in as a role granted
 * flowella_apikey_replica (which may call usage_submit and nothing else).
 *
 * Exactly once: the counts go in numbered batches.  flowella_usage.c moves
 * a batch's amounts out of the pending counts into "in flight" and keeps
 * them there, unchanged, until the primary has answered; a batch whose
 * answer was lost (the link broke, the primary stopped, the session was
 * ended) goes again as it was, under the same source (one run of the
 * standby's server) and number.  The primary records the last batch it
 * applied from each source in the same transaction as the counts, so the
 * second arrival changes nothing.  Last uses ride along: the primary keeps
 * the newest, so sending one twice is harmless.
 *
 * The link: connecting and each statement wait on the worker's latch (a
 * SIGTERM or the postmaster's death ends the wait at once) and give up
 * after USAGE_LINK_TIMEOUT_MS, so a primary that stopped answering cannot
 * hold a round forever; verify never waits on any of it.  A failed round
 * is logged; the launcher backs off before the next.  The connection
 * string may hold a password: the setting is superuser-only and no message
 * prints it (libpq's own name the host and the failure, not the password).
 *
 * usage_submit checks every element of a batch before writing anything
 * (22023 otherwise): keys of this database only (others are skipped),
 * minutes on a minute, scopes that are scope names, counted codes, counts
 * above zero.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "flowella_apikey.h"

/* Longest wait for the primary, to connect or to answer one statement. */
#define USAGE_LINK_TIMEOUT_MS	30000

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_usage_submit);

static void link_wait(PGconn *conn, int io_flag, TimestampTz deadline,
					  const char *what);
static char *link_error(PGconn *conn);
static char *trimmed(const char *msg);

/*
 * Wait until the connection's socket is ready for io_flag (or the latch is
 * set: interrupts are processed then).  Raises ERROR once deadline has
 * passed; the caller closes the connection (see flwl_link_close).
 */
static void
link_wait(PGconn *conn, int io_flag, TimestampTz deadline, const char *what)
{
	for (;;)
	{
		long		timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															  deadline);
		int			rc;

		if (timeout <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("flowella usage: the primary did not answer within %d ms while %s",
							USAGE_LINK_TIMEOUT_MS, what)));
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | io_flag,
							   PQsocket(conn), timeout, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & io_flag)
			return;
	}
}

/* libpq's last message for conn, trimmed. */
static char *
link_error(PGconn *conn)
{
	return trimmed(conn ? PQerrorMessage(conn) : "out of memory");
}

/* A palloc'd copy of a libpq message without its trailing newline. */
static char *
trimmed(const char *msg)
{
	char	   *copy = pstrdup(msg);
	size_t		len = strlen(copy);

	while (len > 0 && (copy[len - 1] == '\n' || copy[len - 1] == '\r'))
		copy[--len] = '\0';
	return copy;
}

/*
 * Connect to the primary with conninfo, in database dbname (a database
 * named in conninfo is overridden).  Raises ERROR (the connection closed) on failure.  The result
 * must be closed with flwl_link_close, also when a later call raises:
 * callers wrap its use in PG_TRY.
 */
PGconn *
flwl_link_open(const char *conninfo, const char *dbname)
{
	const char *keys[4];
	const char *values[4];
	PGconn	   *conn;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   USAGE_LINK_TIMEOUT_MS);

	/*
	 * expand_dbname reads the first "dbname" as the connection string, and
	 * later keywords win over what it sets: the counts of a database go to
	 * the database of the same name on the primary, whatever conninfo says.
	 */
	keys[0] = "dbname";
	values[0] = conninfo;
	keys[1] = "dbname";
	values[1] = dbname;
	keys[2] = "fallback_application_name";
	values[2] = "flowella usage forwarder";
	keys[3] = NULL;
	values[3] = NULL;

	conn = PQconnectStartParams(keys, values, true);
	if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
	{
		char	   *msg = link_error(conn);

		flwl_link_close(conn);
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("flowella usage: could not connect to the primary: %s", msg)));
	}

	PG_TRY();
	{
		PostgresPollingStatusType status = PGRES_POLLING_WRITING;

		while (status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED)
		{
			link_wait(conn, status == PGRES_POLLING_READING ?
					  WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
					  deadline, "connecting");
			status = PQconnectPoll(conn);
		}
		if (status == PGRES_POLLING_FAILED)
			ereport(ERROR,
					(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
					 errmsg("flowella usage: could not connect to the primary: %s",
							link_error(conn))));
	}
	PG_CATCH();
	{
		flwl_link_close(conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return conn;
}

/* Close a connection from flwl_link_open (NULL is fine). */
void
flwl_link_close(PGconn *conn)
{
	if (conn != NULL)
		PQfinish(conn);
}

/*
 * Run one statement with text parameters on the primary and return its one
 * result value (a palloc'd string; NULL for an SQL NULL).  The statement
 * must return one row of one column.  Raises ERROR, with the primary's
 * message, when it fails or the link breaks: whether the primary committed
 * is then unknown, and the caller must be able to send it again.
 */
char *
flwl_link_query(PGconn *conn, const char *sql, int nparams,
				const char *const *values)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   USAGE_LINK_TIMEOUT_MS);
	PGresult   *res;
	PGresult   *last = NULL;
	char	   *answer = NULL;
	char	   *problem = NULL;

	if (!PQsendQueryParams(conn, sql, nparams, NULL, values, NULL, NULL, 0))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("flowella usage: could not send counts to the primary: %s",
						link_error(conn))));

	/* flush what the socket did not take at once */
	for (;;)
	{
		int			rc = PQflush(conn);

		if (rc == 0)
			break;
		if (rc < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("flowella usage: could not send counts to the primary: %s",
							link_error(conn))));
		link_wait(conn, WL_SOCKET_WRITEABLE, deadline, "sending");
	}

	/* read every result; the last one says how it went */
	for (;;)
	{
		while (PQisBusy(conn))
		{
			link_wait(conn, WL_SOCKET_READABLE, deadline, "waiting for its answer");
			if (!PQconsumeInput(conn))
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("flowella usage: lost the connection to the primary: %s",
								link_error(conn))));
		}
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		if (last != NULL)
			PQclear(last);
		last = res;
	}

	if (last == NULL)
		problem = pstrdup("no result");
	else if (PQresultStatus(last) != PGRES_TUPLES_OK)
		problem = trimmed(PQresultErrorMessage(last));
	else if (PQntuples(last) != 1 || PQnfields(last) != 1)
		problem = psprintf("%d rows of %d columns instead of one value",
						   PQntuples(last), PQnfields(last));
	else if (!PQgetisnull(last, 0, 0))
		answer = pstrdup(PQgetvalue(last, 0, 0));
	if (last != NULL)
		PQclear(last);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("flowella usage: the primary refused the counts: %s",
						problem)));
	return answer;
}

/*---- Standby side: the round ----*/

/* What a standby runs on its primary, once per batch. */
#define USAGE_SUBMIT_SQL \
	"SELECT flowella.usage_submit($1::pg_catalog.uuid, $2::pg_catalog.int8," \
	" $3::pg_catalog.uuid[], $4::pg_catalog.timestamptz[], $5::pg_catalog.inet[]," \
	" $6::pg_catalog.text[], $7::pg_catalog.text[], $8::pg_catalog.int8[]," \
	" $9::pg_catalog.uuid[], $10::pg_catalog.timestamptz[])"

/*
 * On a hot standby: hand dbid's pending counts, and in a regular round its
 * last uses, to the primary, batch after batch.  The batch in flight (sent,
 * its answer not seen) goes first and goes again as it was: the primary
 * knows each batch by its source and number and applies it once, so a
 * batch whose answer was lost is never counted twice.  A failure is logged
 * and ends the round; the counts stay pending (bounded by the shared
 * table, as everywhere) and the launcher tries again later, backing off.
 * Returns whether the round got everything through.
 */
bool
flwl_forward_round(Oid dbid, bool regular, const char *conninfo)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "flowella usage forward",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	PGconn	   *volatile conn = NULL;
	volatile bool ok = false;
	char	   *dbname;

	StartTransactionCommand();
	dbname = MemoryContextStrdup(cxt, get_database_name(dbid));
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	/* timestamps go as text: in a form every primary reads the same way */
	SetConfigOption("datestyle", "ISO, YMD", PGC_SUSET, PGC_S_OVERRIDE);

	PG_TRY();
	{
		FlwlUsageBatch batch;
		bool		with_uses = regular;

		conn = flwl_link_open(conninfo, dbname);
		batch.more = true;
		while (batch.more && flwl_usage_batch_next(dbid, with_uses, &batch))
		{
			const char *values[2 + FLWL_BATCH_ARRAYS];

			values[0] = DatumGetCString(DirectFunctionCall1(uuid_out,
															UUIDPGetDatum(&batch.source)));
			values[1] = psprintf(INT64_FORMAT, batch.number);
			/* array_out looks its element types up: a short transaction */
			StartTransactionCommand();
			MemoryContextSwitchTo(cxt);
			for (int i = 0; i < FLWL_BATCH_ARRAYS; i++)
				values[2 + i] = OidOutputFunctionCall(F_ARRAY_OUT, batch.arrays[i]);
			CommitTransactionCommand();
			MemoryContextSwitchTo(cxt);
			(void) flwl_link_query(conn, USAGE_SUBMIT_SQL, lengthof(values), values);
			flwl_usage_batch_done(&batch);
			with_uses = false;
			MemoryContextReset(cxt);
		}
		ok = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		/* an error while converting a batch leaves its transaction open */
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(cxt);
	}
	PG_END_TRY();

	flwl_link_close(conn);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	return ok;
}

/*---- Primary side: usage_submit ----*/

/*
 * usage_submit(source uuid, batch bigint, key_ids uuid[], minutes
 * timestamptz[], client_ips inet[], scopes text[], codes text[], requests
 * bigint[], used_keys uuid[], used_at timestamptz[]) returns boolean
 *
 * Add a standby's batch to this database: the buckets to the usage table,
 * the last uses to api_keys (never moving one back).  A batch of a source
 * already applied (its number not above the last one recorded) changes
 * nothing and answers false: it was sent again because its answer was
 * lost.  Every argument is checked before anything is written; keys this
 * database does not have are skipped.  SECURITY DEFINER (its caller, a
 * role granted flowella_apikey_replica, holds no table privilege), with
 * search_path pinned by the function's SET clause.
 */
Datum
flowella_usage_submit(PG_FUNCTION_ARGS)
{
	Datum		arrays[FLWL_BATCH_ARRAYS];
	Datum		args[2];
	void	   *submission;
	bool		applied;

	for (int i = 0; i < 2 + FLWL_BATCH_ARRAYS; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid usage submission"),
					 errdetail("Argument %d is null.", i + 1)));
	if (PG_GETARG_INT64(1) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid usage submission"),
				 errdetail("The batch number must be positive.")));
	for (int i = 0; i < FLWL_BATCH_ARRAYS; i++)
		arrays[i] = PG_GETARG_DATUM(2 + i);

	/* every element is checked before anything is written */
	submission = flwl_usage_read_submission(arrays);

	SPI_connect();
	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	if (SPI_execute_with_args("INSERT INTO flowella.usage_submissions AS s"
							  " (source, last_batch, submitted_at)"
							  " VALUES ($1, $2, pg_catalog.now())"
							  " ON CONFLICT (source) DO UPDATE"
							  " SET last_batch = excluded.last_batch,"
							  "     submitted_at = excluded.submitted_at"
							  " WHERE s.last_batch OPERATOR(pg_catalog.<) excluded.last_batch",
							  2, (Oid[]) {UUIDOID, INT8OID}, args, NULL, false, 0)
		!= SPI_OK_INSERT)
		elog(ERROR, "flowella usage submission query failed");
	applied = (SPI_processed == 1);
	if (applied)
		flwl_usage_write_submission(submission);
	SPI_finish();
	PG_RETURN_BOOL(applied);
}
