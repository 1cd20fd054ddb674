/*-------------------------------------------------------------------------
 *
 * flowella_usage.c
 *		Last-used tracking: apikey_verify notes each successful use in shared
 *		memory, and a background worker writes them to api_keys.last_used_at
 *		at most once per key per flush interval.
 *
 * So verify never writes a row, never waits on a row lock and works in READ
 * ONLY transactions and on hot standbys (which record nothing: they cannot
 * write), while a key used 2 000 times a minute costs one row update a
 * minute.
 *
 * Shared state: a fixed-size hash table of (database, key) -> latest use,
 * sized by flowella.usage_max_keys, under one LWLock.  Recording a key
 * already present takes the lock shared and the entry's spinlock; adding one
 * takes it exclusive.  The flusher takes it exclusive only to move its
 * database's entries out.  The table never grows past usage_max_keys entries
 * nor beyond the shared memory reserved for it at start (HASH_FIXED_SIZE):
 * when it is full a new key's use is dropped (counted in usage_stats) and
 * recorded at its next use after a flush.
 *
 * Workers, the pg_cron way: the "flowella usage launcher" (static,
 * connected to shared catalogs only) wakes every flush interval and starts
 * one short-lived "flowella usage flush" worker per database with pending
 * uses, dropping those of databases that no longer exist; that worker updates
 * the rows in one transaction, skipping rows locked by others (they stay
 * pending for the next round), and exits.  A use that USAGE_MAX_RETRIES
 * rounds fail to write is given up, whatever the failure: a locked row, a
 * flush that raised an error, or a worker that never settled its round
 * (it could not start or connect; the launcher counts that round itself).
 * The launcher ignores SIGINT: it runs no statement to cancel.
 *
 * The flush worker is the bootstrap superuser, but it connects with the
 * database's own settings, and its search_path is the database owner's to
 * set (ALTER DATABASE ... SET search_path), superuser or not.  So its
 * queries name every operator, function and type with its schema, and its
 * transaction runs with search_path pinned to pg_catalog, pg_temp
 * (flwl_pin_search_path): nothing it runs, nor the triggers and checks its
 * update fires, can resolve to an object the owner planted.
 *
 * Without shared_preload_libraries none of this exists: verify records
 * nothing and last_used_at stays as it is (documented degradation; verify
 * neither blocks nor fails).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/extension.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "flowella_apikey.h"

/*---- GUC variables ----*/

static int	usage_max_keys = 10000;
static int	usage_flush_interval = 60;	/* seconds */

/*
 * A use that this many flush rounds failed to write (row locked, flush
 * failed, worker unable to connect) is given up.
 */
#define USAGE_MAX_RETRIES	5

/*---- Shared state ----*/

typedef struct UsageKey
{
	Oid			dbid;
	pg_uuid_t	key_id;
} UsageKey;

typedef struct UsageEntry
{
	UsageKey	key;			/* hash key: must be first */
	slock_t		mutex;			/* protects last_used */
	TimestampTz last_used;
	int			retries;		/* flush rounds that did not write it */
} UsageEntry;

typedef struct UsageShared
{
	LWLock	   *lock;			/* protects the hash table's membership */
	pg_atomic_uint64 recorded;	/* uses noted */
	pg_atomic_uint64 dropped;	/* uses lost to a full table */
	pg_atomic_uint64 flushed;	/* rows updated by flushes */
	pg_atomic_uint64 flushes;	/* flush transactions committed */
	Oid			round_done;		/* set by a flush worker that did its
								 * accounting; launcher only otherwise */
} UsageShared;

static UsageShared *usage = NULL;
static HTAB *usage_hash = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_usage_stats);

PGDLLEXPORT void flowella_usage_launcher_main(Datum main_arg);
PGDLLEXPORT void flowella_usage_flush_main(Datum main_arg);

static Size usage_memsize(void);
static void usage_shmem_request(void);
static void usage_shmem_startup(void);
static void usage_put(const UsageKey *key, TimestampTz when);
static void entry_round_failed(UsageEntry *entry);
static void database_round_failed(Oid dbid);
static void report_round_done(Oid dbid);

/*---- Set-up ----*/

/*
 * Called from _PG_init while shared_preload_libraries is processed: define
 * the GUCs, ask for shared memory and register the launcher.
 */
void
flwl_usage_init(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("flowella.usage_max_keys",
							"Number of keys whose last use shared memory can hold between flushes.",
							NULL,
							&usage_max_keys,
							10000, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowella.usage_flush_interval",
							"Seconds between writes of last_used_at.",
							"A key's row is written at most once per interval.",
							&usage_flush_interval,
							60, 1, 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = usage_shmem_request;
#else
	usage_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = usage_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "flowella_apikey");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "flowella_usage_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "flowella usage launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "flowella usage launcher");
	RegisterBackgroundWorker(&worker);
}

static Size
usage_memsize(void)
{
	return add_size(MAXALIGN(sizeof(UsageShared)),
					hash_estimate_size(usage_max_keys, sizeof(UsageEntry)));
}

static void
usage_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(usage_memsize());
	RequestNamedLWLockTranche("flowella_apikey", 1);
}

static void
usage_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	usage = ShmemInitStruct("flowella_apikey usage", sizeof(UsageShared), &found);
	if (!found)
	{
		usage->lock = &(GetNamedLWLockTranche("flowella_apikey"))->lock;
		pg_atomic_init_u64(&usage->recorded, 0);
		pg_atomic_init_u64(&usage->dropped, 0);
		pg_atomic_init_u64(&usage->flushed, 0);
		pg_atomic_init_u64(&usage->flushes, 0);
		usage->round_done = InvalidOid;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(UsageKey);
	info.entrysize = sizeof(UsageEntry);
	usage_hash = ShmemInitHash("flowella_apikey usage hash",
							   usage_max_keys, usage_max_keys,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/*---- Recording (verify path) ----*/

/*
 * Note a use of key (in database key->dbid) at when; keep the latest.  A
 * new key beyond usage_max_keys is dropped and counted.
 *
 * The bound is ours to keep: a shared hash table's max_size only sizes its
 * directory, and HASH_ENTER_NULL fails only once the whole shared memory
 * segment is used up.  So the table is HASH_FIXED_SIZE (it never takes
 * more than the entries it was given at start, which hash_estimate_size
 * reserved) and an entry is added only while fewer than usage_max_keys are
 * present, counted under the exclusive lock.
 */
static void
usage_put(const UsageKey *key, TimestampTz when)
{
	UsageEntry *entry;
	bool		found;

	LWLockAcquire(usage->lock, LW_SHARED);
	entry = hash_search(usage_hash, key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		SpinLockAcquire(&entry->mutex);
		if (when > entry->last_used)
			entry->last_used = when;
		SpinLockRelease(&entry->mutex);
		LWLockRelease(usage->lock);
		return;
	}
	LWLockRelease(usage->lock);

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	entry = hash_search(usage_hash, key, HASH_FIND, &found);
	if (entry == NULL && hash_get_num_entries(usage_hash) < usage_max_keys)
		entry = hash_search(usage_hash, key, HASH_ENTER_NULL, &found);
	if (entry == NULL)
		pg_atomic_fetch_add_u64(&usage->dropped, 1);
	else if (!found)
	{
		SpinLockInit(&entry->mutex);
		entry->last_used = when;
		entry->retries = 0;
	}
	else if (when > entry->last_used)
		entry->last_used = when;	/* exclusive lock: no spinlock needed */
	LWLockRelease(usage->lock);
}

/*
 * Record a successful use of key_id in the current database.  Does nothing
 * when the library was not preloaded, or on a hot standby.
 */
void
flwl_usage_record(const pg_uuid_t *key_id, TimestampTz when)
{
	UsageKey	key;

	/* a standby cannot write last_used_at: do not fill the table there */
	if (usage == NULL || usage_hash == NULL || RecoveryInProgress())
		return;
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	memcpy(&key.key_id, key_id, sizeof(pg_uuid_t));
	usage_put(&key, when);
	pg_atomic_fetch_add_u64(&usage->recorded, 1);
}

/*
 * usage_stats(): counters of the tracker, for monitoring and tests.  All
 * zero and pending NULL when the library is not preloaded.
 */
Datum
flowella_usage_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	if (usage == NULL)
	{
		memset(values, 0, sizeof(values));
		for (int i = 0; i < 5; i++)
			values[i] = Int64GetDatum(0);
		nulls[0] = true;
	}
	else
	{
		LWLockAcquire(usage->lock, LW_SHARED);
		values[0] = Int64GetDatum(hash_get_num_entries(usage_hash));
		LWLockRelease(usage->lock);
		values[1] = Int64GetDatum(pg_atomic_read_u64(&usage->recorded));
		values[2] = Int64GetDatum(pg_atomic_read_u64(&usage->dropped));
		values[3] = Int64GetDatum(pg_atomic_read_u64(&usage->flushes));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&usage->flushed));
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*---- Launcher ----*/

/*
 * Start a flush worker for dbid and wait for it to finish, so that at most
 * one flush runs at a time and a database is flushed at most once a round.
 */
static void
launch_flush(Oid dbid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	bool		done;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "flowella_apikey");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "flowella_usage_flush_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "flowella usage flush");
	snprintf(worker.bgw_type, BGW_MAXLEN, "flowella usage flush");
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_notify_pid = MyProcPid;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	usage->round_done = InvalidOid;
	LWLockRelease(usage->lock);

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("flowella usage launcher could not start a flush worker"),
				 errhint("Raise max_worker_processes.")));
		database_round_failed(dbid);
		return;
	}
	(void) WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);

	/* only this launcher starts flush workers, one at a time */
	LWLockAcquire(usage->lock, LW_SHARED);
	done = usage->round_done == dbid;
	LWLockRelease(usage->lock);
	if (!done)
	{
		ereport(LOG,
				(errmsg("flowella usage flush worker for database %u ended before writing its last uses",
						dbid),
				 errdetail("The uses stay pending for at most %d rounds.",
						   USAGE_MAX_RETRIES)));
		database_round_failed(dbid);
	}
}

/*
 * One more round failed to write this entry's use: give it up after
 * USAGE_MAX_RETRIES rounds, so that no use stays pending forever.  Caller
 * holds the lock exclusively.
 */
static void
entry_round_failed(UsageEntry *entry)
{
	if (++entry->retries >= USAGE_MAX_RETRIES)
		hash_search(usage_hash, &entry->key, HASH_REMOVE, NULL);
}

/*
 * A flush worker for dbid ended without settling its entries: it could not
 * start or connect (datallowconn = false, say), or died.  Count the round
 * against every entry of the database, as a failed flush would.
 */
static void
database_round_failed(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (entry->key.dbid == dbid)
			entry_round_failed(entry);	/* removing the current entry is safe */
	LWLockRelease(usage->lock);
}

/* Tell the launcher that this worker settled its database's entries. */
static void
report_round_done(Oid dbid)
{
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	usage->round_done = dbid;
	LWLockRelease(usage->lock);
}

/*
 * Whether a database still exists.  Uses of a dropped database can never be
 * flushed (no worker can connect to it) and must not stay pending forever.
 */
static bool
database_exists(Oid dbid)
{
	bool		exists;

	StartTransactionCommand();
	exists = SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dbid));
	CommitTransactionCommand();
	return exists;
}

static void
forget_database(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (entry->key.dbid == dbid)
			hash_search(usage_hash, &entry->key, HASH_REMOVE, NULL);
	LWLockRelease(usage->lock);
}

void
flowella_usage_launcher_main(Datum main_arg)
{
	TimestampTz last_round;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/* it runs no statement to cancel: pg_cancel_backend must not end it */
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	/* no database: shared catalogs only, to see which databases exist */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	last_round = GetCurrentTimestamp();
	while (!ShutdownRequestPending)
	{
		Oid		   *dbids;
		int			ndb = 0;
		HASH_SEQ_STATUS seq;
		UsageEntry *entry;
		TimestampTz next_round;
		TimestampTz now;

		/*
		 * Sleep until a whole interval has passed since the last round.  The
		 * latch is also set by a reload and by our own workers' exits: such
		 * a wake-up must not start a round early, or a key in constant use
		 * would be written more than once per interval.
		 */
		next_round = TimestampTzPlusMilliseconds(last_round,
												 usage_flush_interval * 1000L);
		now = GetCurrentTimestamp();
		if (now < next_round)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 TimestampDifferenceMilliseconds(now, next_round),
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			continue;
		}
		last_round = now;

		/* the distinct databases with pending uses */
		LWLockAcquire(usage->lock, LW_SHARED);
		dbids = palloc(sizeof(Oid) * (hash_get_num_entries(usage_hash) + 1));
		hash_seq_init(&seq, usage_hash);
		while ((entry = hash_seq_search(&seq)) != NULL)
		{
			int			i;

			for (i = 0; i < ndb && dbids[i] != entry->key.dbid; i++)
				;
			if (i == ndb)
				dbids[ndb++] = entry->key.dbid;
		}
		LWLockRelease(usage->lock);

		for (int i = 0; i < ndb && !ShutdownRequestPending; i++)
		{
			if (database_exists(dbids[i]))
				launch_flush(dbids[i]);
			else
				forget_database(dbids[i]);
		}
		pfree(dbids);
	}
	proc_exit(0);
}

/*---- Flush worker ----*/

/* Run one of the flush queries over $1 uuid[] keys, $2 timestamptz[] uses. */
static void
flush_query(const char *sql, Datum *args, int expected)
{
	if (SPI_execute_with_args(sql, 2, (Oid[]) {UUIDARRAYOID, TIMESTAMPTZARRAYOID},
							  args, NULL, false, 0) != expected)
		elog(ERROR, "flowella usage flush query failed");
}

/*
 * Write the newest use of each of the n keys (ids, whens) and set done[i]
 * for those now written, already newer or gone.  Returns the number of rows
 * updated.
 */
static uint64
write_uses(int n, Datum *ids, Datum *whens, bool *done)
{
	Datum		args[2];
	uint64		updated;

	args[0] = PointerGetDatum(construct_array(ids, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
	args[1] = PointerGetDatum(construct_array(whens, n, TIMESTAMPTZOID, sizeof(TimestampTz),
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	flush_query("WITH u AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(key_id, used_at)),"
				" l AS (SELECT k.key_id, u.used_at FROM flowella.api_keys k"
				"        JOIN u ON u.key_id OPERATOR(pg_catalog.=) k.key_id"
				"       FOR UPDATE OF k SKIP LOCKED)"
				" UPDATE flowella.api_keys k"
				"    SET last_used_at = GREATEST(k.last_used_at, l.used_at)"
				"   FROM l WHERE k.key_id OPERATOR(pg_catalog.=) l.key_id"
				"    AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) l.used_at)"
				" RETURNING k.key_id",
				args, SPI_OK_UPDATE_RETURNING);
	updated = SPI_processed;

	/* Written, already newer, or gone: done.  The rest were locked by others. */
	flush_query("SELECT (u.ord OPERATOR(pg_catalog.-) 1)::pg_catalog.int4"
				"  FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(key_id, ord)"
				" WHERE NOT EXISTS (SELECT 1 FROM flowella.api_keys k"
				"                    WHERE k.key_id OPERATOR(pg_catalog.=) u.key_id"
				"                      AND (k.last_used_at IS NULL OR k.last_used_at"
				"                           OPERATOR(pg_catalog.<) ($2::pg_catalog.timestamptz[])[u.ord]))",
				args, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int			idx = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1, &isnull));

		if (idx >= 0 && idx < n)
			done[idx] = true;
	}
	return updated;
}

/*
 * One flush transaction (see write_uses), with search_path pinned.  If the
 * extension has been dropped from this database meanwhile (its schema
 * outlives it: CREATE EXTENSION made the schema, not the script), every use
 * is done with.
 */
static uint64
flush_database(int n, Datum *ids, Datum *whens, bool *done)
{
	uint64		updated = 0;
	int			pinned;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pinned = flwl_pin_search_path();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "flowella: flushing last_used_at");

	if (OidIsValid(get_extension_oid("flowella_apikey", true)))
		updated = write_uses(n, ids, whens, done);
	else
		memset(done, true, sizeof(bool) * n);

	SPI_finish();
	PopActiveSnapshot();
	flwl_unpin_search_path(pinned);
	CommitTransactionCommand();
	return updated;
}

/*
 * Write one database's pending uses.  Rows locked by another transaction
 * are skipped, never waited for, and stay pending for the next round.
 * Entries leave shared memory only once their write has committed (and the
 * counters are updated), so "pending = 0" means "written".
 */
void
flowella_usage_flush_main(Datum main_arg)
{
	Oid			dbid = DatumGetObjectId(main_arg);
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	UsageKey   *keys;
	Datum	   *ids;
	Datum	   *whens;
	bool	   *done;
	int			n = 0;
	int			capacity;
	volatile uint64 updated = 0;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);

	/* copy this database's entries */
	LWLockAcquire(usage->lock, LW_SHARED);
	capacity = hash_get_num_entries(usage_hash) + 1;
	keys = palloc(sizeof(UsageKey) * capacity);
	ids = palloc(sizeof(Datum) * capacity);
	whens = palloc(sizeof(Datum) * capacity);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid)
			continue;
		keys[n] = entry->key;
		ids[n] = UUIDPGetDatum(&keys[n].key_id);
		SpinLockAcquire(&entry->mutex);
		whens[n] = TimestampTzGetDatum(entry->last_used);
		SpinLockRelease(&entry->mutex);
		n++;
	}
	LWLockRelease(usage->lock);

	if (n == 0)
	{
		report_round_done(dbid);
		proc_exit(0);
	}
	done = palloc0(sizeof(bool) * n);

	/*
	 * An error (say, a table changed under us) is logged and costs the
	 * entries one retry, so that they cannot stay pending forever.
	 */
	PG_TRY();
	{
		updated = flush_database(n, ids, whens, done);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(TopMemoryContext);
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		memset(done, false, sizeof(bool) * n);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);

	pg_atomic_fetch_add_u64(&usage->flushed, updated);
	pg_atomic_fetch_add_u64(&usage->flushes, 1);

	/*
	 * Forget what was written, unless a newer use arrived meanwhile; keep a
	 * locked row's use for the next round, up to USAGE_MAX_RETRIES rounds.
	 */
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		entry = hash_search(usage_hash, &keys[i], HASH_FIND, NULL);
		if (entry == NULL || entry->last_used > DatumGetTimestampTz(whens[i]))
			continue;
		if (done[i])
			hash_search(usage_hash, &keys[i], HASH_REMOVE, NULL);
		else
			entry_round_failed(entry);
	}
	usage->round_done = dbid;
	LWLockRelease(usage->lock);
	proc_exit(0);
}
