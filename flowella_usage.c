/*-------------------------------------------------------------------------
 *
 * flowella_usage.c
 *		The usage pipeline: apikey_verify counts each request of a known key
 *		in per-minute buckets in shared memory and notes each successful use;
 *		background workers write both to the database.
 *
 * So verify never writes a row, never waits on a row lock and works in READ
 * ONLY transactions, while a key used 2 000 times a minute costs one row
 * update of api_keys a minute.  A hot standby counts the same way when
 * flowella.usage_primary_conninfo names its primary (else it records
 * nothing): its flush worker hands the counts and uses to the primary in
 * numbered batches instead of writing them (flowella_forward.c; "Hot
 * standbys" below).
 *
 * Shared state, under one LWLock (usage->lock), two fixed-size hash tables
 * (HASH_FIXED_SIZE: neither ever takes more than the shared memory reserved
 * at start, so they cannot starve the lock table of the cluster):
 *
 * - buckets: (database, key, minute, client IP, scope, code) -> requests,
 *   at most flowella.usage_max_buckets entries.  The IP is kept in inet's
 *   binary form (family 0 = no IP given), the scope as its bytes when it is
 *   a well-formed scope name (at most 64 bytes, never token-shaped), else it
 *   counts as no scope.  Counting a request of an existing bucket takes the
 *   lock shared and adds to the entry's atomic counter; a new bucket takes
 *   the lock exclusive.
 * - last uses: (database, key) -> latest successful use, at most
 *   flowella.usage_max_keys entries (beyond it a use is dropped and
 *   counted, as before 1.3); the same verify call updates it, under the
 *   same lock acquisition.
 *
 * Counts are exact.  Detailed buckets (with an IP or a scope) may fill the
 * table only up to three quarters of it; past that a request is folded into
 * its key's coarse bucket (key, minute, no IP, no scope, code), which may
 * use the last quarter, and the launcher is woken for an early round that
 * writes buckets only.  A request that finds even that reserve full is
 * counted in usage_stats().requests_overflowed and the launcher logs how
 * many such requests a round saw: the count leaves the table only in that
 * logged, visible way, never silently.
 *
 * Writing: a flush worker copies its database's buckets (counts read
 * atomically) and sorts them by key and minute.  In a 1.4 schema each
 * key-minute becomes one row of flowella.api_key_usage_log, its buckets in
 * parallel arrays (client IPs, scopes, codes, requests), built here as
 * values of the table's row type and appended by one INSERT ... SELECT
 * from one array parameter: the heap tuple and its two index entries are
 * paid per key-minute, not per bucket.  Rows are never updated; a minute
 * flushed in two rounds has two rows, which readers (apikey_usage, the
 * view api_key_usage) sum.  Until it is updated, a 1.3 schema gets one
 * row per bucket in its table api_key_usage, by INSERT ... ON CONFLICT DO
 * UPDATE SET requests = requests + excluded.requests.
 *
 * Exactly once: the buckets are written in batches of USAGE_FLUSH_BATCH,
 * each in its own transaction, and only after a batch's commit are the
 * amounts it wrote subtracted from the entries (removing those that reach
 * zero, under the exclusive lock), so requests counted meanwhile stay
 * pending.  A batch that fails before its commit subtracts nothing: it and
 * the batches after it are written by a later round.  Nothing between a
 * commit and its subtraction can raise or take an interrupt.  A crash
 * resets shared memory, so it may lose the pending counts but never write
 * one twice.
 *
 * A clean shutdown keeps what is pending: the postmaster writes both tables
 * to pg_stat/flowella_usage.stat at exit (pg_stat_statements' way: a
 * versioned header, written to a temporary file and renamed), and the next
 * start loads and removes it.  A crash skips the dump; the file of a
 * previous clean shutdown was removed when it was loaded, so it can never
 * be counted twice.  A file that does not read back is logged and ignored.
 *
 * Hot standbys: the launcher runs there too (from a consistent state on),
 * and a standby's flush worker sends its database's buckets and uses to
 * the primary instead of writing them.  Each batch's amounts move from
 * requests to inflight and stay there until the primary has answered; a
 * batch whose answer was lost goes again as it was, under its number (the
 * primary applies each number of a source once).  A round that fails (no
 * primary, a broken link) is logged and the database waits before the
 * next: one interval, then two, four... up to USAGE_BACKOFF_MAX_MS; a
 * failed round costs the last uses no retry.  A promoted server settles a
 * batch left in flight by asking its own (replayed) usage_submissions
 * whether the old primary applied it.  A clean restart keeps what is in
 * flight and its number (dump format 3).
 *
 * Workers, the pg_cron way: the "flowella usage launcher" (static,
 * connected to shared catalogs only) wakes every flush interval and starts
 * one short-lived "flowella usage flush" worker per database with pending
 * counts or uses, dropping those of databases that no longer exist.  That
 * worker writes the buckets (a transaction per batch), then the last uses
 * (one more, skipping rows locked by others: they stay pending for the next
 * round), then deletes buckets older than flowella.usage_retention in batches of
 * USAGE_PRUNE_BATCH rows, each batch its own transaction, for at most
 * USAGE_PRUNE_BUDGET_MS.  An early round (the bucket table filling) starts
 * workers that write buckets only: last_used_at is written by the regular
 * rounds alone, a whole interval apart, so a key is still written at most
 * once per interval.  A use that USAGE_MAX_RETRIES rounds fail to write is
 * given up, whatever the failure: a locked row, a flush that raised an
 * error, or a worker that never settled its round (it could not start or
 * connect; the launcher counts that round itself).  Buckets are never given
 * up: a bucket flush that fails is retried every round.  In a database
 * whose schema predates 1.3 (no usage table) or whose extension was
 * dropped, buckets have nowhere to go: they are discarded and counted
 * (requests_discarded).  Retention deletes rows of whichever table the
 * schema has.  The launcher ignores SIGINT: it runs no statement
 * to cancel.
 *
 * The flush worker is the bootstrap superuser, but it connects with the
 * database's own settings, and its search_path is the database owner's to
 * set (ALTER DATABASE ... SET search_path), superuser or not.  So its
 * queries name every operator, function and type with its schema, and its
 * transactions run with search_path pinned to pg_catalog, pg_temp
 * (flwl_pin_search_path): nothing it runs, nor the triggers and checks its
 * writes fire, can resolve to an object the owner planted.
 *
 * Without shared_preload_libraries none of this exists: verify records
 * nothing, last_used_at stays as it is and no usage is recorded
 * (documented degradation; verify neither blocks nor fails).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_type_d.h"
#include "commands/extension.h"
#include "common/controldata_utils.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
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
#include "utils/inet.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

/*---- GUC variables ----*/

static int	usage_max_keys = 10000;
static int	usage_max_buckets = 50000;
static int	usage_flush_interval = 60;	/* seconds */
static char *usage_retention = NULL;	/* an interval, "90 days" */
char	   *flwl_usage_primary_conninfo = NULL; /* a standby's primary */

/*
 * A use that this many flush rounds failed to write (row locked, flush
 * failed, worker unable to connect) is given up.
 */
#define USAGE_MAX_RETRIES	5

/* Retention: rows deleted per transaction, and time spent per round. */
#define USAGE_PRUNE_BATCH		1000

/* Buckets written per transaction (and subtracted under one lock hold). */
#define USAGE_FLUSH_BATCH		50000
#define USAGE_PRUNE_BUDGET_MS	2000

/*
 * A standby hands its counts to the primary in batches of at most
 * USAGE_FLUSH_BATCH buckets; the primary takes at most USAGE_SUBMIT_MAX in
 * one.  After a failed round the standby waits one interval, then two,
 * four... up to USAGE_BACKOFF_MAX_MS.  USAGE_FORWARD_SLOTS databases may
 * have a batch in flight (or be backing off) at once.
 */
#define USAGE_SUBMIT_MAX		1000000
#define USAGE_BACKOFF_MAX_MS	300000
#define USAGE_FORWARD_SLOTS		64

/* Early rounds (the bucket table filling) start at most this often. */
#define USAGE_EARLY_GAP_MS		1000

/* Longest scope name kept in a bucket (the scope-name rule's bound). */
#define USAGE_SCOPE_MAX		64

/* The file of pending counts kept over a clean restart. */
#define USAGE_DUMP_FILE		PGSTAT_STAT_PERMANENT_DIRECTORY "/flowella_usage.stat"
#define USAGE_DUMP_MAGIC	0x464c5755	/* "FLWU" */
#define USAGE_DUMP_FORMAT	3	/* 2: codes are FlwlVerifyCode values;
								 * 3: and batches in flight */

/*
 * A bucket's code is an FlwlVerifyCode.  MALFORMED and NOT_FOUND identify
 * no key and are never counted.
 */
#define USAGE_CODE_COUNTED(code) \
	((code) < FLWL_VC_COUNT && (code) != FLWL_VC_MALFORMED && (code) != FLWL_VC_NOT_FOUND)

/*---- Shared state ----*/

/* The last-use table is keyed by key and database. */
typedef FlwlDbKey UsageKey;

typedef struct UsageEntry
{
	UsageKey	key;			/* hash key: must be first */
	slock_t		mutex;			/* protects last_used */
	TimestampTz last_used;
	int			retries;		/* flush rounds that did not write it */
} UsageEntry;

/* A bucket's identity; zeroed before it is filled (HASH_BLOBS compares all). */
typedef struct BucketKey
{
	Oid			dbid;
	uint8		code;			/* an FlwlVerifyCode */
	uint8		ip_family;		/* PGSQL_AF_INET(6), or 0: no client IP */
	uint8		ip_bits;
	uint8		scope_len;		/* 0: no scope */
	pg_uuid_t	key_id;
	TimestampTz minute;
	unsigned char ip[16];
	char		scope[USAGE_SCOPE_MAX];
} BucketKey;

typedef struct BucketEntry
{
	BucketKey	key;			/* hash key: must be first */
	pg_atomic_uint64 requests;	/* counted, not yet written */
	uint64		inflight;		/* a standby's: sent in its database's batch
								 * in flight, answer not seen (under the
								 * lock; verify never touches it) */
} BucketEntry;

/* A pending bucket as a flush copied it: its identity and the count read (or the amount in flight). */
typedef struct FlushBucket
{
	BucketKey	key;
	uint64		requests;
} FlushBucket;

/*
 * A standby's forwarding state for one database: the batch in flight (its
 * buckets' inflight amounts went to the primary as batch number of source,
 * and whether the primary has it is not known yet) and the back-off after
 * failed rounds.  A slot is free when dbid is InvalidOid.
 */
typedef struct ForwardState
{
	Oid			dbid;
	bool		in_flight;
	pg_uuid_t	source;
	int64		number;
	int			failures;		/* rounds failed in a row */
	TimestampTz next_try;		/* no round before this */
} ForwardState;

typedef struct UsageShared
{
	LWLock	   *lock;			/* protects both tables' membership */
	pg_atomic_uint64 recorded;	/* uses noted */
	pg_atomic_uint64 dropped;	/* uses lost to a full table */
	pg_atomic_uint64 flushed;	/* rows updated by flushes */
	pg_atomic_uint64 flushes;	/* flush workers that ran */
	pg_atomic_uint64 counted;	/* requests counted (and loaded) */
	pg_atomic_uint64 written;	/* requests written to the usage table */
	pg_atomic_uint64 folded;	/* requests folded into a coarse bucket */
	pg_atomic_uint64 overflowed;	/* requests no bucket could take */
	pg_atomic_uint64 discarded; /* requests with no usage table to go to */
	pg_atomic_uint64 pruned;	/* usage rows deleted by retention */
	pg_atomic_uint32 wake_wanted;	/* an early round is asked for */
	Latch	   *launcher_latch; /* set by the launcher */
	Oid			round_done;		/* set by a flush worker that did its
								 * accounting; launcher only otherwise */
	pg_uuid_t	source;			/* this run of the server, for a primary: drawn
								 * at start, so batch numbers never repeat */
	int64		last_batch;		/* last batch number given out */
	ForwardState forward[USAGE_FORWARD_SLOTS];	/* under the lock */
} UsageShared;

static UsageShared *usage = NULL;
static HTAB *usage_hash = NULL;
static HTAB *bucket_hash = NULL;

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_usage_stats);

PGDLLEXPORT void flowella_usage_launcher_main(Datum main_arg);
PGDLLEXPORT void flowella_usage_flush_main(Datum main_arg);

static bool usage_retention_check(char **newval, void **extra, GucSource source);
static Size usage_memsize(void);
static void usage_shmem_shutdown(int code, Datum arg);
static void usage_load(void);
static bool lastuse_put_locked(const UsageKey *key, TimestampTz when);
static BucketEntry *bucket_add_locked(const BucketKey *key, uint32 hash, uint64 n,
									  bool *folded);
static void wake_launcher(void);
static void entry_round_failed(UsageEntry *entry);
static void lastuse_settle_database_locked(Oid dbid, bool forget);
static void database_round_failed(Oid dbid);
static void report_round_done(Oid dbid);
static int	copy_buckets(Oid dbid, bool inflight, int max, FlushBucket ***sorted);
static uint64 take_away_locked(int n, FlushBucket **b, bool inflight);
static int	copy_last_uses(Oid dbid, UsageKey **keys, Datum **ids, Datum **whens);
static void settle_last_uses(int n, UsageKey *keys, Datum *whens,
							 const bool *done);
static ForwardState *forward_slot_locked(Oid dbid, bool create);
static bool forward_due(Oid dbid, TimestampTz now);
static void forward_round_done(Oid dbid, bool ok);
static void settle_after_promotion(Oid dbid);
static bool usage_scope_ok(const char *scope, size_t len);
static int	usage_code_of(const char *name);
static void forward_release_locked(Oid dbid);

/*---- Set-up ----*/

/*
 * Called from _PG_init while shared_preload_libraries is processed: define
 * the GUCs and register the launcher (flwl_usage_shmem_request asks for the
 * shared memory).
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
	DefineCustomIntVariable("flowella.usage_max_buckets",
							"Number of usage buckets (key, minute, client IP, scope, code) shared memory holds between flushes.",
							"Past three quarters of it, client IP and scope are folded into a per-key bucket.",
							&usage_max_buckets,
							50000, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowella.usage_flush_interval",
							"Seconds between writes of last_used_at and usage counts.",
							"A key's row is written at most once per interval.",
							&usage_flush_interval,
							60, 1, 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomStringVariable("flowella.usage_retention",
							   "How long usage buckets are kept (an interval).",
							   "Older buckets are deleted by the flush worker.",
							   &usage_retention,
							   "90 days",
							   PGC_SIGHUP, 0,
							   usage_retention_check, NULL, NULL);
	DefineCustomStringVariable("flowella.usage_primary_conninfo",
							   "Connection string a hot standby's usage worker uses to hand its counts to the primary.",
							   "Empty: a standby records no usage.  The database is the one the counts are of.",
							   &flwl_usage_primary_conninfo,
							   "",
							   PGC_SUSET, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "flowella_apikey");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "flowella_usage_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "flowella usage launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "flowella usage launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * flowella.usage_retention must read as a positive interval.  The check
 * runs in the postmaster too, so a parse error is caught and reported as
 * a refused value rather than raised.
 */
static bool
usage_retention_check(char **newval, void **extra, GucSource source)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	bool		ok = false;

	PG_TRY();
	{
		Interval   *iv;
		Interval	zero;

		iv = DatumGetIntervalP(DirectFunctionCall3(interval_in,
												   CStringGetDatum(*newval),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
		memset(&zero, 0, sizeof(zero));
		ok = DatumGetBool(DirectFunctionCall2(interval_gt,
											  IntervalPGetDatum(iv),
											  IntervalPGetDatum(&zero)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		ok = false;
	}
	PG_END_TRY();
	if (!ok)
		GUC_check_errdetail("The retention must be a positive interval, such as \"90 days\".");
	return ok;
}

static Size
usage_memsize(void)
{
	Size		size = MAXALIGN(sizeof(UsageShared));

	size = add_size(size, hash_estimate_size(usage_max_keys, sizeof(UsageEntry)));
	return add_size(size, hash_estimate_size(usage_max_buckets, sizeof(BucketEntry)));
}

/* The shmem_request_hook part of the usage pipeline (flowella_apikey.c). */
void
flwl_usage_shmem_request(void)
{
	RequestAddinShmemSpace(usage_memsize());
	RequestNamedLWLockTranche("flowella_apikey", 1);
}

/*
 * The shmem_startup_hook part of the usage pipeline (flowella_apikey.c):
 * build the shared state; in the postmaster, load what a clean shutdown
 * left pending and arrange for the next shutdown to save it.
 */
void
flwl_usage_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	usage = ShmemInitStruct("flowella_apikey usage", sizeof(UsageShared), &found);
	if (!found)
	{
		usage->lock = &(GetNamedLWLockTranche("flowella_apikey"))->lock;
		pg_atomic_init_u64(&usage->recorded, 0);
		pg_atomic_init_u64(&usage->dropped, 0);
		pg_atomic_init_u64(&usage->flushed, 0);
		pg_atomic_init_u64(&usage->flushes, 0);
		pg_atomic_init_u64(&usage->counted, 0);
		pg_atomic_init_u64(&usage->written, 0);
		pg_atomic_init_u64(&usage->folded, 0);
		pg_atomic_init_u64(&usage->overflowed, 0);
		pg_atomic_init_u64(&usage->discarded, 0);
		pg_atomic_init_u64(&usage->pruned, 0);
		pg_atomic_init_u32(&usage->wake_wanted, 0);
		usage->launcher_latch = NULL;
		usage->round_done = InvalidOid;
		if (!pg_strong_random(&usage->source, sizeof(usage->source)))
			elog(FATAL, "could not generate a random usage source id");
		/* a version 4 (random) UUID */
		usage->source.data[6] = (usage->source.data[6] & 0x0f) | 0x40;
		usage->source.data[8] = (usage->source.data[8] & 0x3f) | 0x80;
		usage->last_batch = 0;
		memset(usage->forward, 0, sizeof(usage->forward));
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(UsageKey);
	info.entrysize = sizeof(UsageEntry);
	usage_hash = ShmemInitHash("flowella_apikey usage hash",
							   usage_max_keys, usage_max_keys,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(BucketKey);
	info.entrysize = sizeof(BucketEntry);
	bucket_hash = ShmemInitHash("flowella_apikey usage buckets",
								usage_max_buckets, usage_max_buckets,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);

	if (!IsUnderPostmaster)
	{
		on_shmem_exit(usage_shmem_shutdown, (Datum) 0);
		/* no other process runs yet: the tables are ours without the lock */
		if (!found)
			usage_load();
	}
}

/*---- Keeping pending counts over a clean restart ----*/

typedef struct UsageDumpHeader
{
	uint32		magic;
	uint32		format;
	uint32		lastuse_size;	/* sizeof(UsageDumpLastUse) */
	uint32		bucket_size;	/* sizeof(UsageDumpBucket) */
	int64		n_lastuse;
	int64		n_buckets;
} UsageDumpHeader;

/* Format 3 follows the header with this, then the slots in flight. */
typedef struct UsageDumpHeader3
{
	uint32		forward_size;	/* sizeof(UsageDumpForward) */
	int64		n_forward;
} UsageDumpHeader3;

typedef struct UsageDumpLastUse
{
	UsageKey	key;
	TimestampTz last_used;
} UsageDumpLastUse;

typedef struct UsageDumpBucket
{
	BucketKey	key;
	uint64		requests;
	uint64		inflight;		/* not in format 2 */
} UsageDumpBucket;

/* A batch in flight (format 3): the next start sends it again as it was. */
typedef struct UsageDumpForward
{
	Oid			dbid;
	pg_uuid_t	source;
	int64		number;
} UsageDumpForward;

/* Format 2's bucket record: what UsageDumpBucket is up to inflight. */
#define USAGE_DUMP_BUCKET_SIZE_2	offsetof(UsageDumpBucket, inflight)

/*
 * on_shmem_exit in the postmaster: after a clean shutdown (every backend
 * and worker is gone, the shutdown checkpoint written), write the pending last uses and counts to
 * USAGE_DUMP_FILE.  After a crash (code != 0) nothing is written: shared
 * memory is not to be trusted then.
 */
static void
usage_shmem_shutdown(int code, Datum arg)
{
	const char *tmp = USAGE_DUMP_FILE ".tmp";
	FILE	   *file;
	UsageDumpHeader header;
	UsageDumpHeader3 header3;
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	BucketEntry *bucket;
	uint32		trailer = USAGE_DUMP_MAGIC;

	ControlFileData *control;
	bool		crc_ok;

	if (code != 0 || usage == NULL || usage_hash == NULL || bucket_hash == NULL)
		return;

	/*
	 * An immediate stop exits with code 0 too, but its workers were killed
	 * wherever they were (one between its commit and its subtraction would
	 * have its counts written twice): only a shutdown checkpoint says the
	 * stop was clean.
	 */
	control = get_controlfile(DataDir, &crc_ok);
	if (!crc_ok || (control->state != DB_SHUTDOWNED &&
					control->state != DB_SHUTDOWNED_IN_RECOVERY))
		return;

	file = AllocateFile(tmp, PG_BINARY_W);
	if (file == NULL)
		goto error;

	memset(&header, 0, sizeof(header));
	header.magic = USAGE_DUMP_MAGIC;
	header.format = USAGE_DUMP_FORMAT;
	header.lastuse_size = sizeof(UsageDumpLastUse);
	header.bucket_size = sizeof(UsageDumpBucket);
	header.n_lastuse = hash_get_num_entries(usage_hash);
	header.n_buckets = hash_get_num_entries(bucket_hash);
	memset(&header3, 0, sizeof(header3));
	header3.forward_size = sizeof(UsageDumpForward);
	for (int i = 0; i < USAGE_FORWARD_SLOTS; i++)
		if (usage->forward[i].dbid != InvalidOid && usage->forward[i].in_flight)
			header3.n_forward++;
	if (fwrite(&header, sizeof(header), 1, file) != 1 ||
		fwrite(&header3, sizeof(header3), 1, file) != 1)
		goto error;
	for (int i = 0; i < USAGE_FORWARD_SLOTS; i++)
	{
		UsageDumpForward rec;

		if (usage->forward[i].dbid == InvalidOid || !usage->forward[i].in_flight)
			continue;
		memset(&rec, 0, sizeof(rec));
		rec.dbid = usage->forward[i].dbid;
		rec.source = usage->forward[i].source;
		rec.number = usage->forward[i].number;
		if (fwrite(&rec, sizeof(rec), 1, file) != 1)
			goto error;
	}

	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		UsageDumpLastUse rec;

		memset(&rec, 0, sizeof(rec));
		rec.key = entry->key;
		rec.last_used = entry->last_used;
		if (fwrite(&rec, sizeof(rec), 1, file) != 1)
		{
			hash_seq_term(&seq);
			goto error;
		}
	}
	hash_seq_init(&seq, bucket_hash);
	while ((bucket = hash_seq_search(&seq)) != NULL)
	{
		UsageDumpBucket rec;

		memset(&rec, 0, sizeof(rec));
		rec.key = bucket->key;
		rec.requests = pg_atomic_read_u64(&bucket->requests);
		rec.inflight = bucket->inflight;
		if (fwrite(&rec, sizeof(rec), 1, file) != 1)
		{
			hash_seq_term(&seq);
			goto error;
		}
	}
	if (fwrite(&trailer, sizeof(trailer), 1, file) != 1)
		goto error;
	if (FreeFile(file))
	{
		file = NULL;
		goto error;
	}
	(void) durable_rename(tmp, USAGE_DUMP_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", tmp),
			 errdetail("Pending API key usage counts and last uses are lost.")));
	if (file)
		FreeFile(file);
	unlink(tmp);
}

/*
 * At start, in the postmaster: load what the last clean shutdown saved,
 * through the same bounds as verify (a smaller table folds or counts what
 * does not fit), then remove the file so that it is never loaded twice.
 * A file that does not read back (another format, truncated) is logged
 * and ignored.  Caller is alone: no lock is taken.
 */
static void
usage_load(void)
{
	FILE	   *file;
	UsageDumpHeader header;
	UsageDumpHeader3 header3 = {sizeof(UsageDumpForward), 0};
	size_t		bucket_size;
	uint32		trailer;
	int64		uses = 0;
	uint64		requests = 0;

	file = AllocateFile(USAGE_DUMP_FILE, PG_BINARY_R);
	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", USAGE_DUMP_FILE)));
		return;
	}

	/* format 2 (1.3's library) has no batches in flight */
	if (fread(&header, sizeof(header), 1, file) != 1 ||
		header.magic != USAGE_DUMP_MAGIC ||
		(header.format != 2 && header.format != USAGE_DUMP_FORMAT) ||
		(header.format == USAGE_DUMP_FORMAT &&
		 fread(&header3, sizeof(header3), 1, file) != 1))
		goto bad;
	bucket_size = (header.format == 2) ? USAGE_DUMP_BUCKET_SIZE_2 : sizeof(UsageDumpBucket);
	if (header.lastuse_size != sizeof(UsageDumpLastUse) ||
		header.bucket_size != bucket_size ||
		header3.forward_size != sizeof(UsageDumpForward) ||
		header.n_lastuse < 0 || header.n_buckets < 0 ||
		header3.n_forward < 0 || header3.n_forward > USAGE_FORWARD_SLOTS)
		goto bad;

	for (int64 i = 0; i < header3.n_forward; i++)
	{
		UsageDumpForward rec;
		ForwardState *slot;

		if (fread(&rec, sizeof(rec), 1, file) != 1)
			goto bad;
		slot = forward_slot_locked(rec.dbid, true);
		if (slot == NULL)
			goto bad;
		slot->in_flight = true;
		slot->source = rec.source;
		slot->number = rec.number;
	}

	for (int64 i = 0; i < header.n_lastuse; i++)
	{
		UsageDumpLastUse rec;

		if (fread(&rec, sizeof(rec), 1, file) != 1)
			goto bad;
		if (lastuse_put_locked(&rec.key, rec.last_used))
			uses++;
	}
	for (int64 i = 0; i < header.n_buckets; i++)
	{
		UsageDumpBucket rec;
		BucketEntry *entry;
		bool		folded;

		memset(&rec, 0, sizeof(rec));
		if (fread(&rec, bucket_size, 1, file) != 1)
			goto bad;
		if ((rec.requests == 0 && rec.inflight == 0) ||
			!USAGE_CODE_COUNTED(rec.key.code) || rec.key.scope_len > USAGE_SCOPE_MAX)
			continue;

		/*
		 * What was in flight stays in flight, to go again under its batch's
		 * number (the primary knows whether it has it); folded, it is the
		 * same batch with less detail.
		 */
		entry = bucket_add_locked(&rec.key, get_hash_value(bucket_hash, &rec.key),
								  rec.requests, &folded);
		if (entry != NULL)
			entry->inflight += rec.inflight;
		else
			pg_atomic_fetch_add_u64(&usage->overflowed, rec.inflight);
		pg_atomic_fetch_add_u64(&usage->counted, rec.requests + rec.inflight);
		requests += rec.requests + rec.inflight;
	}
	if (fread(&trailer, sizeof(trailer), 1, file) != 1 || trailer != USAGE_DUMP_MAGIC)
		goto bad;

	FreeFile(file);
	unlink(USAGE_DUMP_FILE);
	ereport(LOG,
			(errmsg("flowella usage: loaded %lld pending last uses and " UINT64_FORMAT " pending requests",
					(long long) uses, requests)));
	return;

bad:
	ereport(LOG,
			(errmsg("ignoring invalid file \"%s\"", USAGE_DUMP_FILE),
			 errdetail("%lld last uses and " UINT64_FORMAT " requests were loaded from it before the fault.",
					   (long long) uses, requests)));
	FreeFile(file);
	unlink(USAGE_DUMP_FILE);
}

/*---- Recording (verify path) ----*/

/*
 * Note a use of key at when; keep the latest.  A new key beyond
 * usage_max_keys is dropped and counted.  Returns whether it was kept.
 * Caller holds the lock exclusively (or is alone, loading the file).
 *
 * The bound is ours to keep: a shared hash table's max_size only sizes its
 * directory, and HASH_ENTER_NULL fails only once the whole shared memory
 * segment is used up.  So the table is HASH_FIXED_SIZE (it never takes
 * more than the entries it was given at start, which hash_estimate_size
 * reserved) and an entry is added only while fewer than usage_max_keys are
 * present.  The same holds for the bucket table below.
 */
static bool
lastuse_put_locked(const UsageKey *key, TimestampTz when)
{
	UsageEntry *entry;
	bool		found;

	entry = hash_search(usage_hash, key, HASH_FIND, &found);
	if (entry == NULL && hash_get_num_entries(usage_hash) < usage_max_keys)
		entry = hash_search(usage_hash, key, HASH_ENTER_NULL, &found);
	if (entry == NULL)
	{
		pg_atomic_fetch_add_u64(&usage->dropped, 1);
		return false;
	}
	if (!found)
	{
		SpinLockInit(&entry->mutex);
		entry->last_used = when;
		entry->retries = 0;
	}
	else if (when > entry->last_used)
		entry->last_used = when;	/* exclusive lock: no spinlock needed */
	return true;
}

/* Whether a bucket key carries no detail (no client IP, no scope). */
static inline bool
bucket_is_coarse(const BucketKey *key)
{
	return key->ip_family == 0 && key->scope_len == 0;
}

/*
 * Add n requests to the bucket key, creating it if need be.  Detailed
 * buckets may take three quarters of the table; past that the request is
 * folded into the key's coarse bucket (*folded set), which may take the
 * rest; if even that is full, the requests are counted as overflowed and
 * NULL is returned, else the entry that took them.  hash is the key's
 * (get_hash_value).  Caller holds the lock exclusively (or is alone,
 * loading the file).
 */
static BucketEntry *
bucket_add_locked(const BucketKey *key, uint32 hash, uint64 n, bool *folded)
{
	BucketEntry *entry = NULL;
	BucketKey	coarse;
	long		nentries = hash_get_num_entries(bucket_hash);
	long		detail_limit = usage_max_buckets - usage_max_buckets / 4;
	bool		found;

	*folded = false;
	if (!bucket_is_coarse(key) && nentries >= detail_limit)
	{
		entry = hash_search_with_hash_value(bucket_hash, key, hash, HASH_FIND, NULL);
		if (entry == NULL)
		{
			coarse = *key;
			coarse.ip_family = 0;
			coarse.ip_bits = 0;
			coarse.scope_len = 0;
			memset(coarse.ip, 0, sizeof(coarse.ip));
			memset(coarse.scope, 0, sizeof(coarse.scope));
			key = &coarse;
			hash = get_hash_value(bucket_hash, key);
			*folded = true;
			pg_atomic_fetch_add_u64(&usage->folded, n);
		}
	}
	/* a detailed key that gets here without an entry is below detail_limit */
	if (entry == NULL && nentries < usage_max_buckets)
	{
		entry = hash_search_with_hash_value(bucket_hash, key, hash, HASH_ENTER_NULL, &found);
		if (entry != NULL && !found)
		{
			pg_atomic_init_u64(&entry->requests, 0);
			entry->inflight = 0;
		}
	}
	else if (entry == NULL)
		entry = hash_search_with_hash_value(bucket_hash, key, hash, HASH_FIND, NULL);

	if (entry == NULL)
	{
		pg_atomic_fetch_add_u64(&usage->overflowed, n);
		return NULL;
	}
	pg_atomic_fetch_add_u64(&entry->requests, n);
	return entry;
}

/*
 * Ask the launcher for an early round (buckets only): the bucket table is
 * filling.  Only the first caller since the last round sets its latch.
 */
static void
wake_launcher(void)
{
	Latch	   *latch;

	if (pg_atomic_read_u32(&usage->wake_wanted) != 0 ||
		pg_atomic_exchange_u32(&usage->wake_wanted, 1) != 0)
		return;
	latch = usage->launcher_latch;
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Whether a required scope is kept in a bucket: a scope name, never
 * anything token-shaped.
 */
static bool
usage_scope_ok(const char *scope, size_t len)
{
	return len <= USAGE_SCOPE_MAX && flwl_scope_name_problem(scope, len) == NULL &&
		!(len >= 5 && memcmp(scope, "flwl_", 5) == 0);
}

/* The counted code named name, or -1. */
static int
usage_code_of(const char *name)
{
	for (int code = 0; code < FLWL_VC_COUNT; code++)
		if (USAGE_CODE_COUNTED(code) && strcmp(flwl_verify_code_names[code], name) == 0)
			return code;
	return -1;
}

/*
 * Count one request of key_id (in the current database) that verify
 * answered with code, at when, from client_ip and for scope (either may be
 * NULL); for VALID also note the use as the key's last.  MALFORMED and
 * NOT_FOUND identify no key: the caller does not count them.
 *
 * The common case (the bucket and the last-use entry exist) takes the lock
 * shared once and adds atomically; no palloc, no table, no wait on a row.
 * Does nothing when the library was not preloaded, or on a hot standby
 * with no primary to hand the counts to (they would only fill the table).
 */
void
flwl_usage_count(const pg_uuid_t *key_id, TimestampTz when, FlwlVerifyCode code,
				 const inet *client_ip, const text *scope)
{
	BucketKey	key;
	uint32		hash;
	UsageKey	ukey;
	BucketEntry *bucket;
	UsageEntry *entry = NULL;
	bool		valid;
	bool		use_settled = false;
	bool		folded = false;
	bool		overflowed = false;

	if (usage == NULL || bucket_hash == NULL)
		return;
	/* a standby counts only what it can hand to a primary */
	if (flwl_usage_primary_conninfo[0] == '\0' && RecoveryInProgress())
		return;

	if (!USAGE_CODE_COUNTED(code))
		return;
	valid = (code == FLWL_VC_VALID);

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.code = (uint8) code;
	memcpy(&key.key_id, key_id, sizeof(pg_uuid_t));
	key.minute = when - when % USECS_PER_MINUTE;
	if (when % USECS_PER_MINUTE < 0)
		key.minute -= USECS_PER_MINUTE;
	if (client_ip != NULL)
	{
		inet	   *ip = unconstify(inet *, client_ip);

		key.ip_family = ip_family(ip);
		key.ip_bits = ip_bits(ip);
		memcpy(key.ip, ip_addr(ip), Min(ip_addrsize(ip), sizeof(key.ip)));
	}
	if (scope != NULL)
	{
		const char *s = VARDATA_ANY(scope);
		size_t		len = VARSIZE_ANY_EXHDR(scope);

		if (usage_scope_ok(s, len))
		{
			key.scope_len = (uint8) len;
			memcpy(key.scope, s, len);
		}
	}
	flwl_db_key_set(&ukey, key_id);
	hash = get_hash_value(bucket_hash, &key);	/* once, for up to three lookups */

	LWLockAcquire(usage->lock, LW_SHARED);
	bucket = hash_search_with_hash_value(bucket_hash, &key, hash, HASH_FIND, NULL);
	if (bucket != NULL)
		pg_atomic_fetch_add_u64(&bucket->requests, 1);
	if (valid)
	{
		entry = hash_search(usage_hash, &ukey, HASH_FIND, NULL);
		if (entry != NULL)
		{
			SpinLockAcquire(&entry->mutex);
			if (when > entry->last_used)
				entry->last_used = when;
			SpinLockRelease(&entry->mutex);
		}
		else if (hash_get_num_entries(usage_hash) >= usage_max_keys)
		{
			/*
			 * Full: the use is dropped (and counted) here, as
			 * lastuse_put_locked would, without queueing for the exclusive
			 * lock: with more keys in use than the table holds, that would
			 * be most verifies.
			 */
			pg_atomic_fetch_add_u64(&usage->dropped, 1);
			use_settled = true;
		}
	}
	LWLockRelease(usage->lock);

	if (bucket == NULL || (valid && entry == NULL && !use_settled))
	{
		LWLockAcquire(usage->lock, LW_EXCLUSIVE);
		if (bucket == NULL)
			overflowed = (bucket_add_locked(&key, hash, 1, &folded) == NULL);
		if (valid && entry == NULL && !use_settled)
			(void) lastuse_put_locked(&ukey, when);
		LWLockRelease(usage->lock);
		if (folded || overflowed)
			wake_launcher();
	}

	pg_atomic_fetch_add_u64(&usage->counted, 1);
	if (valid)
		pg_atomic_fetch_add_u64(&usage->recorded, 1);
}

/*
 * usage_stats(): counters of the pipeline, for monitoring and tests.  All
 * zero and pending NULL when the library is not preloaded.  A schema before
 * 1.3 declares only the first five columns: the row is built to the
 * declared shape.
 */
Datum
flowella_usage_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13];
	int			natts;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	natts = tupdesc->natts;
	if (natts > (int) lengthof(values))
		elog(ERROR, "usage_stats has %d columns, at most %d expected",
			 natts, (int) lengthof(values));

	memset(nulls, 0, sizeof(nulls));
	for (int i = 0; i < (int) lengthof(values); i++)
		values[i] = Int64GetDatum(0);

	if (usage == NULL)
	{
		nulls[0] = true;
		nulls[5] = true;
	}
	else
	{
		HASH_SEQ_STATUS seq;
		BucketEntry *bucket;
		uint64		pending_requests = 0;
		int64		nbuckets;

		LWLockAcquire(usage->lock, LW_SHARED);
		values[0] = Int64GetDatum(hash_get_num_entries(usage_hash));
		nbuckets = hash_get_num_entries(bucket_hash);
		if (natts > 7)
		{
			hash_seq_init(&seq, bucket_hash);
			while ((bucket = hash_seq_search(&seq)) != NULL)
				pending_requests += pg_atomic_read_u64(&bucket->requests) +
					bucket->inflight;
		}
		LWLockRelease(usage->lock);
		values[1] = Int64GetDatum(pg_atomic_read_u64(&usage->recorded));
		values[2] = Int64GetDatum(pg_atomic_read_u64(&usage->dropped));
		values[3] = Int64GetDatum(pg_atomic_read_u64(&usage->flushes));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&usage->flushed));
		values[5] = Int64GetDatum(nbuckets);
		values[6] = Int64GetDatum(pg_atomic_read_u64(&usage->counted));
		values[7] = Int64GetDatum(pending_requests);
		values[8] = Int64GetDatum(pg_atomic_read_u64(&usage->written));
		values[9] = Int64GetDatum(pg_atomic_read_u64(&usage->folded));
		values[10] = Int64GetDatum(pg_atomic_read_u64(&usage->overflowed));
		values[11] = Int64GetDatum(pg_atomic_read_u64(&usage->discarded));
		values[12] = Int64GetDatum(pg_atomic_read_u64(&usage->pruned));
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*---- Launcher ----*/

/*
 * Start a flush worker for dbid and wait for it to finish, so that at most
 * one flush runs at a time and a database is flushed at most once a round.
 * A regular round writes buckets, last uses and prunes; an early one
 * (regular false) writes buckets only, and a failure there costs the last
 * uses nothing.
 */
static void
launch_flush(Oid dbid, bool regular)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	bool		done;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "flowella_apikey");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "flowella_usage_flush_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "flowella usage flush");
	snprintf(worker.bgw_type, BGW_MAXLEN, "flowella usage flush");
	worker.bgw_main_arg = ObjectIdGetDatum(dbid);
	worker.bgw_extra[0] = regular ? 'r' : 'e';
	worker.bgw_notify_pid = MyProcPid;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	usage->round_done = InvalidOid;
	LWLockRelease(usage->lock);

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("flowella usage launcher could not start a flush worker"),
				 errhint("Raise max_worker_processes.")));
		if (regular)
			database_round_failed(dbid);
		return;
	}
	(void) WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);

	/* only this launcher starts flush workers, one at a time */
	LWLockAcquire(usage->lock, LW_SHARED);
	done = usage->round_done == dbid;
	LWLockRelease(usage->lock);
	if (!done && regular)
	{
		ereport(LOG,
				(errmsg("flowella usage flush worker for database %u ended before writing its last uses",
						dbid),
				 errdetail("The uses stay pending for at most %d rounds; usage counts stay pending until written.",
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
 * Settle every last use of dbid at once: forget them (the database is
 * gone) or count a failed round against each.  Caller holds the lock
 * exclusively; removing the entry a scan just returned is safe.
 */
static void
lastuse_settle_database_locked(Oid dbid, bool forget)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;

	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid)
			continue;
		if (forget)
			hash_search(usage_hash, &entry->key, HASH_REMOVE, NULL);
		else
			entry_round_failed(entry);
	}
}

/*
 * A flush worker for dbid ended without settling its entries: it could not
 * start or connect (datallowconn = false, say), or died.  Count the round
 * against every last use of the database, as a failed flush would.  Its
 * buckets stay pending.
 */
static void
database_round_failed(Oid dbid)
{
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	lastuse_settle_database_locked(dbid, false);
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

/* Forget the last uses and counts of a dropped database (counted). */
static void
forget_database(Oid dbid)
{
	HASH_SEQ_STATUS seq;
	BucketEntry *bucket;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	lastuse_settle_database_locked(dbid, true);
	hash_seq_init(&seq, bucket_hash);
	while ((bucket = hash_seq_search(&seq)) != NULL)
		if (bucket->key.dbid == dbid)
		{
			pg_atomic_fetch_add_u64(&usage->discarded,
									pg_atomic_read_u64(&bucket->requests) +
									bucket->inflight);
			hash_search(bucket_hash, &bucket->key, HASH_REMOVE, NULL);
		}
	forward_release_locked(dbid);
	LWLockRelease(usage->lock);
}

/* Add dbid to the n distinct ones in dbids. */
static void
add_dbid(Oid *dbids, int *n, Oid dbid)
{
	int			i;

	for (i = 0; i < *n && dbids[i] != dbid; i++)
		;
	if (i == *n)
		dbids[(*n)++] = dbid;
}

/*
 * One round: a flush worker for each database with pending buckets (and,
 * in a regular round, pending last uses).  Logs the requests that found
 * the bucket table full since the last round.
 */
static void
run_round(bool regular, uint64 *overflow_seen)
{
	Oid		   *dbids;
	int			ndb = 0;
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	BucketEntry *bucket;
	uint64		overflowed;

	LWLockAcquire(usage->lock, LW_SHARED);
	dbids = palloc(sizeof(Oid) * (hash_get_num_entries(usage_hash) +
								  hash_get_num_entries(bucket_hash) + 1));
	if (regular)
	{
		hash_seq_init(&seq, usage_hash);
		while ((entry = hash_seq_search(&seq)) != NULL)
			add_dbid(dbids, &ndb, entry->key.dbid);
	}
	hash_seq_init(&seq, bucket_hash);
	while ((bucket = hash_seq_search(&seq)) != NULL)
		add_dbid(dbids, &ndb, bucket->key.dbid);
	LWLockRelease(usage->lock);

	overflowed = pg_atomic_read_u64(&usage->overflowed);
	if (overflowed > *overflow_seen)
		ereport(LOG,
				(errmsg("flowella usage: " UINT64_FORMAT " API key requests found the usage table full and are not in the usage history",
						overflowed - *overflow_seen),
				 errhint("Raise flowella.usage_max_buckets or lower flowella.usage_flush_interval.")));
	*overflow_seen = overflowed;

	for (int i = 0; i < ndb && !ShutdownRequestPending; i++)
	{
		if (!database_exists(dbids[i]))
			forget_database(dbids[i]);
		else if (!RecoveryInProgress() || forward_due(dbids[i], GetCurrentTimestamp()))
			launch_flush(dbids[i], regular);
	}
	pfree(dbids);
}

void
flowella_usage_launcher_main(Datum main_arg)
{
	TimestampTz last_round;
	TimestampTz last_early = 0;
	uint64		overflow_seen = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/* it runs no statement to cancel: pg_cancel_backend must not end it */
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	/* no database: shared catalogs only, to see which databases exist */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	usage->launcher_latch = MyLatch;
	overflow_seen = pg_atomic_read_u64(&usage->overflowed);

	last_round = GetCurrentTimestamp();
	while (!ShutdownRequestPending)
	{
		TimestampTz next_round;
		TimestampTz wake_at;
		TimestampTz now;

		/*
		 * A regular round once a whole interval has passed since the last
		 * one.  The latch is also set by a reload and by our own workers'
		 * exits: such a wake-up must not start a regular round early, or a
		 * key in constant use would be written more than once per interval.
		 * A full bucket table asks for an early round (buckets only, at
		 * most one per USAGE_EARLY_GAP_MS), which writes no last use.
		 */
		next_round = TimestampTzPlusMilliseconds(last_round,
												 usage_flush_interval * 1000L);
		now = GetCurrentTimestamp();
		if (now >= next_round)
		{
			last_round = now;
			pg_atomic_write_u32(&usage->wake_wanted, 0);
			run_round(true, &overflow_seen);
			continue;
		}
		wake_at = next_round;
		if (pg_atomic_read_u32(&usage->wake_wanted) != 0)
		{
			TimestampTz early_at = TimestampTzPlusMilliseconds(last_early,
															   USAGE_EARLY_GAP_MS);

			if (now >= early_at)
			{
				last_early = now;
				pg_atomic_write_u32(&usage->wake_wanted, 0);
				run_round(false, &overflow_seen);
				continue;
			}
			wake_at = Min(wake_at, early_at);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 TimestampDifferenceMilliseconds(now, wake_at),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	usage->launcher_latch = NULL;
	proc_exit(0);
}

/*---- Flush worker ----*/

/*
 * Where a database's schema keeps usage history: nowhere before 1.3 (or
 * when the extension was dropped: its schema outlives it), one row per
 * bucket in 1.3's table api_key_usage, one row per key, minute and flush
 * round in 1.4's api_key_usage_log (api_key_usage is then a view).
 */
typedef enum UsageSchema
{
	USAGE_SCHEMA_NONE,
	USAGE_SCHEMA_ROWS,			/* 1.3 */
	USAGE_SCHEMA_PACKED			/* 1.4 and later */
} UsageSchema;

static UsageSchema
usage_schema(void)
{
	Oid			nsp;
	Oid			relid;

	if (!OidIsValid(get_extension_oid("flowella_apikey", true)))
		return USAGE_SCHEMA_NONE;
	nsp = get_namespace_oid("flowella", true);
	if (!OidIsValid(nsp))
		return USAGE_SCHEMA_NONE;
	if (OidIsValid(get_relname_relid("api_key_usage_log", nsp)))
		return USAGE_SCHEMA_PACKED;
	relid = get_relname_relid("api_key_usage", nsp);
	if (OidIsValid(relid) && get_rel_relkind(relid) == RELKIND_RELATION)
		return USAGE_SCHEMA_ROWS;
	return USAGE_SCHEMA_NONE;
}

/*
 * Start a flush transaction with search_path pinned and SPI connected;
 * returns the pin for finish_flush_transaction.
 */
static int
start_flush_transaction(const char *activity)
{
	int			pinned;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pinned = flwl_pin_search_path();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	return pinned;
}

static void
finish_flush_transaction(int pinned)
{
	SPI_finish();
	PopActiveSnapshot();
	flwl_unpin_search_path(pinned);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Log the error being handled and abort its transaction. */
static void
flush_error(void)
{
	MemoryContextSwitchTo(TopMemoryContext);
	EmitErrorReport();
	AbortCurrentTransaction();
	FlushErrorState();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Order by key, then minute: the rows of the 1.4 table. */
static int
flush_bucket_cmp(const void *a, const void *b)
{
	const FlushBucket *x = *(FlushBucket *const *) a;
	const FlushBucket *y = *(FlushBucket *const *) b;
	int			c = memcmp(&x->key.key_id, &y->key.key_id, sizeof(pg_uuid_t));

	if (c != 0)
		return c;
	return (x->key.minute > y->key.minute) - (x->key.minute < y->key.minute);
}

static inline bool
same_key_minute(const FlushBucket *x, const FlushBucket *y)
{
	return x->key.minute == y->key.minute &&
		memcmp(&x->key.key_id, &y->key.key_id, sizeof(pg_uuid_t)) == 0;
}

/* A bucket's client IP as an inet datum; the bucket must have one. */
static Datum
bucket_ip_datum(const BucketKey *key)
{
	inet	   *ip = palloc0(sizeof(inet));

	ip_family(ip) = key->ip_family;
	ip_bits(ip) = key->ip_bits;
	memcpy(ip_addr(ip), key->ip, ip_addrsize(ip));
	SET_INET_VARSIZE(ip);
	return InetPGetDatum(ip);
}

/*
 * The four detail columns of buckets b[0..n-1] as arrays (client IPs and
 * scopes with NULLs for none, codes, requests) into cols[0..3].
 */
static void
bucket_detail_arrays(int n, FlushBucket **b, Datum *cols)
{
	Datum	   *ips = palloc(sizeof(Datum) * n);
	Datum	   *scopes = palloc(sizeof(Datum) * n);
	Datum	   *codes = palloc(sizeof(Datum) * n);
	Datum	   *requests = palloc(sizeof(Datum) * n);
	bool	   *ipnull = palloc0(sizeof(bool) * n);
	bool	   *scopenull = palloc0(sizeof(bool) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		const BucketKey *key = &b[i]->key;

		if (key->ip_family == 0)
			ipnull[i] = true;
		else
			ips[i] = bucket_ip_datum(key);
		if (key->scope_len == 0)
			scopenull[i] = true;
		else
			scopes[i] = PointerGetDatum(cstring_to_text_with_len(key->scope,
																 key->scope_len));
		codes[i] = PointerGetDatum(cstring_to_text(flwl_verify_code_names[key->code]));
		requests[i] = Int64GetDatum((int64) b[i]->requests);
	}
	cols[0] = PointerGetDatum(construct_md_array(ips, ipnull, 1, dims, lbs,
												 INETOID, -1, false, TYPALIGN_INT));
	cols[1] = PointerGetDatum(construct_md_array(scopes, scopenull, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	cols[2] = PointerGetDatum(construct_array(codes, n, TEXTOID, -1, false,
											  TYPALIGN_INT));
	cols[3] = PointerGetDatum(construct_array(requests, n, INT8OID, sizeof(int64),
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* Keys and times (datums) as a uuid[] and a timestamptz[], into cols[0..1]. */
static void
key_time_arrays(int n, Datum *ids, Datum *times, Datum *cols)
{
	cols[0] = PointerGetDatum(construct_array(ids, n, UUIDOID, UUID_LEN,
											  false, TYPALIGN_CHAR));
	cols[1] = PointerGetDatum(construct_array(times, n, TIMESTAMPTZOID,
											  sizeof(TimestampTz), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
}

/*
 * All six columns of buckets b[0..n-1] as arrays into cols[0..5]: keys,
 * minutes, then the detail arrays (the 1.3 upsert's and usage_submit's).
 */
static void
bucket_arrays(int n, FlushBucket **b, Datum *cols)
{
	Datum	   *ids = palloc(sizeof(Datum) * (n + 1));
	Datum	   *minutes = palloc(sizeof(Datum) * (n + 1));

	for (int i = 0; i < n; i++)
	{
		ids[i] = UUIDPGetDatum(&b[i]->key.key_id);
		minutes[i] = TimestampTzGetDatum(b[i]->key.minute);
	}
	key_time_arrays(n, ids, minutes, cols);
	bucket_detail_arrays(n, b, &cols[2]);
}

/*
 * 1.3: add the counts to one row per bucket.  The arbiter is the table's
 * unique index, whose expressions tell a missing IP or scope apart from any
 * value (NULLS NOT DISTINCT is PostgreSQL 15's only).  A key that is not in
 * api_keys (it cannot be deleted) would be skipped.
 */
#define BUCKET_UPSERT_SQL_1_3 \
	"INSERT INTO flowella.api_key_usage AS u" \
	" (org_id, key_id, minute, client_ip, scope, code, requests)" \
	" SELECT k.org_id, b.key_id, b.minute, b.client_ip, b.scope, b.code, b.requests" \
	"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)," \
	"                   pg_catalog.unnest($3), pg_catalog.unnest($4)," \
	"                   pg_catalog.unnest($5), pg_catalog.unnest($6))" \
	"        AS b(key_id, minute, client_ip, scope, code, requests)" \
	"   JOIN flowella.api_keys k ON k.key_id OPERATOR(pg_catalog.=) b.key_id" \
	" ON CONFLICT (key_id, minute, (client_ip IS NULL)," \
	"             (COALESCE(client_ip, '0.0.0.0'::pg_catalog.inet))," \
	"             (scope IS NULL), (COALESCE(scope, ''::pg_catalog.text)), code)" \
	" DO UPDATE SET requests = u.requests OPERATOR(pg_catalog.+) excluded.requests"

static void
write_buckets_1_3(int n, FlushBucket **b)
{
	Datum		args[6];

	bucket_arrays(n, b, args);
	if (SPI_execute_with_args(BUCKET_UPSERT_SQL_1_3, 6,
							  (Oid[]) {UUIDARRAYOID, TIMESTAMPTZARRAYOID,
									   INETARRAYOID, TEXTARRAYOID,
									   TEXTARRAYOID, INT8ARRAYOID},
							  args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "flowella usage flush query failed");
}

/*
 * 1.4: append one row per key and minute, its buckets in parallel arrays.
 * The rows are built here (b is sorted by key and minute) as values of the
 * table's row type, org_id left NULL, and go in as one array parameter:
 * one statement, one heap tuple and two index entries per key-minute.  A
 * key that is not in api_keys would be skipped.
 */
#define BUCKET_INSERT_SQL \
	"INSERT INTO flowella.api_key_usage_log" \
	" (org_id, key_id, minute, client_ips, scopes, codes, requests)" \
	" SELECT k.org_id, r.key_id, r.minute, r.client_ips, r.scopes, r.codes, r.requests" \
	"   FROM pg_catalog.unnest($1) r" \
	"   JOIN flowella.api_keys k ON k.key_id OPERATOR(pg_catalog.=) r.key_id"

/* The row type's columns, in the order of the 1.4 table. */
#define USAGE_LOG_NATTS		7

static void
write_buckets_packed(int n, FlushBucket **b)
{
	Oid			relid;
	Oid			rowtype;
	Oid			arraytype;
	TupleDesc	tupdesc;
	Datum	   *rows = palloc(sizeof(Datum) * n);
	int			nrows = 0;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum		arg;

	relid = get_relname_relid("api_key_usage_log", get_namespace_oid("flowella", false));
	rowtype = get_rel_type_id(relid);
	arraytype = get_array_type(rowtype);
	if (!OidIsValid(rowtype) || !OidIsValid(arraytype))
		elog(ERROR, "flowella usage table has no row type");
	tupdesc = lookup_rowtype_tupdesc_copy(rowtype, -1);
	if (tupdesc->natts != USAGE_LOG_NATTS)
		elog(ERROR, "flowella usage table has %d columns, %d expected",
			 tupdesc->natts, USAGE_LOG_NATTS);

	for (int lo = 0, hi; lo < n; lo = hi)
	{
		Datum		values[USAGE_LOG_NATTS];
		bool		nulls[USAGE_LOG_NATTS] = {true, false, false, false, false, false, false};

		for (hi = lo + 1; hi < n && same_key_minute(b[lo], b[hi]); hi++)
			;
		values[0] = (Datum) 0;
		values[1] = UUIDPGetDatum(&b[lo]->key.key_id);
		values[2] = TimestampTzGetDatum(b[lo]->key.minute);
		bucket_detail_arrays(hi - lo, &b[lo], &values[3]);
		rows[nrows++] = HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
	}
	get_typlenbyvalalign(rowtype, &typlen, &typbyval, &typalign);
	arg = PointerGetDatum(construct_array(rows, nrows, rowtype, typlen, typbyval,
										  typalign));
	if (SPI_execute_with_args(BUCKET_INSERT_SQL, 1, &arraytype, &arg, NULL, false, 0)
		!= SPI_OK_INSERT)
		elog(ERROR, "flowella usage flush query failed");
}

/*
 * Write the n buckets b in one transaction, to whichever table the schema
 * has.  Returns true when they are settled (written, or discarded for want
 * of a usage table: *discarded), false when the transaction failed
 * (logged): they stay pending.  What is built for the statement lives in
 * SPI's memory, freed at the end of the transaction.
 */
static bool
write_buckets(int n, FlushBucket **b, bool *discarded)
{
	volatile bool settled = false;

	*discarded = false;
	PG_TRY();
	{
		int			pinned = start_flush_transaction("flowella: flushing API key usage");

		switch (usage_schema())
		{
			case USAGE_SCHEMA_NONE:
				*discarded = true;
				break;
			case USAGE_SCHEMA_ROWS:
				write_buckets_1_3(n, b);
				break;
			case USAGE_SCHEMA_PACKED:
				write_buckets_packed(n, b);
				break;
		}
		finish_flush_transaction(pinned);
		settled = true;
	}
	PG_CATCH();
	{
		flush_error();
	}
	PG_END_TRY();
	return settled;
}

/*
 * Copy the buckets of dbid with something counted (inflight: with
 * something in flight), at most max of them (0: all), with that amount,
 * into a palloc'd array sorted by key and minute; returns how many.  The
 * amounts are read under the shared lock: requests counted meanwhile stay
 * in the entries, for a later round.
 */
static int
copy_buckets(Oid dbid, bool inflight, int max, FlushBucket ***sorted)
{
	HASH_SEQ_STATUS seq;
	BucketEntry *bucket;
	FlushBucket *copy;
	int			n = 0;

	LWLockAcquire(usage->lock, LW_SHARED);
	copy = palloc(sizeof(FlushBucket) * (hash_get_num_entries(bucket_hash) + 1));
	hash_seq_init(&seq, bucket_hash);
	while ((bucket = hash_seq_search(&seq)) != NULL)
	{
		uint64		amount;

		if (bucket->key.dbid != dbid)
			continue;
		amount = inflight ? bucket->inflight : pg_atomic_read_u64(&bucket->requests);
		if (amount == 0)
			continue;
		copy[n].key = bucket->key;
		copy[n].requests = amount;
		if (++n == max)
		{
			hash_seq_term(&seq);
			break;
		}
	}
	LWLockRelease(usage->lock);

	*sorted = palloc(sizeof(FlushBucket *) * (n + 1));
	for (int i = 0; i < n; i++)
		(*sorted)[i] = &copy[i];
	qsort(*sorted, n, sizeof(FlushBucket *), flush_bucket_cmp);
	return n;
}

/*
 * Take the amounts of b[0..n-1] away from their entries' counts (inflight:
 * from what is in flight) and drop the entries left with nothing; returns
 * the total taken.  Caller holds the lock exclusively; only the one flush
 * worker running takes away, so the entries are still there.
 */
static uint64
take_away_locked(int n, FlushBucket **b, bool inflight)
{
	uint64		total = 0;

	for (int i = 0; i < n; i++)
	{
		BucketEntry *bucket = hash_search(bucket_hash, &b[i]->key, HASH_FIND, NULL);
		uint64		left;

		total += b[i]->requests;
		if (bucket == NULL)
			continue;			/* cannot happen: only flushes remove */
		if (inflight)
		{
			bucket->inflight -= Min(bucket->inflight, b[i]->requests);
			left = pg_atomic_read_u64(&bucket->requests);
		}
		else
			left = pg_atomic_sub_fetch_u64(&bucket->requests, b[i]->requests);
		if (left == 0 && bucket->inflight == 0)
			hash_search(bucket_hash, &b[i]->key, HASH_REMOVE, NULL);
	}
	return total;
}

/*
 * Write this database's pending buckets.  The counts are read once, then
 * written in batches of at most USAGE_FLUSH_BATCH buckets (cut between two
 * key-minutes where one allows it), each in its own transaction and, only
 * once that has committed, subtracted from the entries: a request counted
 * meanwhile stays pending, and a batch that fails leaves itself and the
 * batches after it pending for the next round.  Between a commit and its
 * subtraction nothing raises or takes an interrupt.  Batches bound the
 * memory a statement takes and how long the exclusive lock is held while
 * subtracting.
 */
static void
flush_buckets(Oid dbid)
{
	FlushBucket **sorted;
	int			n = copy_buckets(dbid, false, 0, &sorted);

	for (int lo = 0, hi; lo < n; lo = hi)
	{
		uint64		total = 0;
		bool		discarded;

		CHECK_FOR_INTERRUPTS();
		hi = Min(n, lo + USAGE_FLUSH_BATCH);
		if (hi < n)
		{
			int			cut = hi;

			while (cut > lo && same_key_minute(sorted[cut - 1], sorted[cut]))
				cut--;
			if (cut > lo)
				hi = cut;
		}

		if (!write_buckets(hi - lo, &sorted[lo], &discarded))
			return;

		/* committed: take away what was written, drop the entries now empty */
		LWLockAcquire(usage->lock, LW_EXCLUSIVE);
		total = take_away_locked(hi - lo, &sorted[lo], false);
		LWLockRelease(usage->lock);
		pg_atomic_fetch_add_u64(discarded ? &usage->discarded : &usage->written, total);
	}
}

/* Run one of the last-use queries over $1 uuid[] keys, $2 timestamptz[] uses. */
static void
flush_query(const char *sql, Datum *args, int expected)
{
	if (SPI_execute_with_args(sql, 2, (Oid[]) {UUIDARRAYOID, TIMESTAMPTZARRAYOID},
							  args, NULL, false, 0) != expected)
		elog(ERROR, "flowella usage flush query failed");
}

/*
 * The UPDATE of last uses: each key's newest (never moved back, nor past
 * the present: a standby's clock may run ahead), its rows locked as lock
 * says.
 */
#define USES_UPDATE_SQL(lock) \
	"WITH u AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(key_id, used_at))," \
	" l AS (SELECT k.key_id, LEAST(u.used_at, pg_catalog.now()) AS used_at" \
	"         FROM flowella.api_keys k" \
	"        JOIN u ON u.key_id OPERATOR(pg_catalog.=) k.key_id " lock ")" \
	" UPDATE flowella.api_keys k" \
	"    SET last_used_at = GREATEST(k.last_used_at, l.used_at)" \
	"   FROM l WHERE k.key_id OPERATOR(pg_catalog.=) l.key_id" \
	"    AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) l.used_at)" \
	" RETURNING k.key_id"

/*
 * Write the newest use of each of the n keys (ids, whens) and set done[i]
 * for those now written, already newer or gone.  Returns the number of rows
 * updated.  Rows locked by others are skipped (their uses are not done),
 * unless wait: then they are waited for, in key order.
 */
static uint64
write_uses(int n, Datum *ids, Datum *whens, bool *done, bool wait)
{
	Datum		args[2];
	uint64		updated;

	key_time_arrays(n, ids, whens, args);
	flush_query(wait ? USES_UPDATE_SQL("ORDER BY k.key_id FOR UPDATE OF k") :
				USES_UPDATE_SQL("FOR UPDATE OF k SKIP LOCKED"),
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
 * One last-use flush transaction (see write_uses).  If the extension has
 * been dropped from this database meanwhile (its schema outlives it: CREATE
 * EXTENSION made the schema, not the script), every use is done with.
 */
static uint64
flush_database(int n, Datum *ids, Datum *whens, bool *done)
{
	uint64		updated = 0;
	int			pinned;

	pinned = start_flush_transaction("flowella: flushing last_used_at");
	if (OidIsValid(get_extension_oid("flowella_apikey", true)))
		updated = write_uses(n, ids, whens, done, false);
	else
		memset(done, true, sizeof(bool) * n);
	finish_flush_transaction(pinned);
	return updated;
}

/*
 * Write this database's pending last uses.  Rows locked by another
 * transaction are skipped, never waited for, and stay pending for the next
 * round.  Entries leave shared memory only once their write has committed
 * (and the counters are updated), so "pending = 0" means "written".
 */
static void
flush_last_uses(Oid dbid)
{
	UsageKey   *keys;
	Datum	   *ids;
	Datum	   *whens;
	bool	   *done;
	int			n = copy_last_uses(dbid, &keys, &ids, &whens);
	volatile uint64 updated = 0;

	if (n == 0)
		return;
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
		flush_error();
		memset(done, false, sizeof(bool) * n);
	}
	PG_END_TRY();

	pg_atomic_fetch_add_u64(&usage->flushed, updated);
	settle_last_uses(n, keys, whens, done);
}

/*
 * Copy dbid's last uses (keys, and as datums for a query ids and whens,
 * palloc'd); returns how many.
 */
static int
copy_last_uses(Oid dbid, UsageKey **keys, Datum **ids, Datum **whens)
{
	HASH_SEQ_STATUS seq;
	UsageEntry *entry;
	int			capacity;
	int			n = 0;

	LWLockAcquire(usage->lock, LW_SHARED);
	capacity = hash_get_num_entries(usage_hash) + 1;
	*keys = palloc(sizeof(UsageKey) * capacity);
	*ids = palloc(sizeof(Datum) * capacity);
	*whens = palloc(sizeof(Datum) * capacity);
	hash_seq_init(&seq, usage_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (entry->key.dbid != dbid)
			continue;
		(*keys)[n] = entry->key;
		(*ids)[n] = UUIDPGetDatum(&(*keys)[n].key_id);
		SpinLockAcquire(&entry->mutex);
		(*whens)[n] = TimestampTzGetDatum(entry->last_used);
		SpinLockRelease(&entry->mutex);
		n++;
	}
	LWLockRelease(usage->lock);
	return n;
}

/*
 * After a write of the n last uses keys/whens: forget those done, unless a
 * newer use arrived meanwhile; count a failed round against the others (a
 * locked row's use is kept for the next round, up to USAGE_MAX_RETRIES).
 */
static void
settle_last_uses(int n, UsageKey *keys, Datum *whens, const bool *done)
{
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		UsageEntry *entry = hash_search(usage_hash, &keys[i], HASH_FIND, NULL);

		if (entry == NULL || entry->last_used > DatumGetTimestampTz(whens[i]))
			continue;
		if (done[i])
			hash_search(usage_hash, &keys[i], HASH_REMOVE, NULL);
		else
			entry_round_failed(entry);
	}
	LWLockRelease(usage->lock);
}

/*
 * Retention: delete buckets older than flowella.usage_retention, at most
 * USAGE_PRUNE_BATCH rows per transaction (short transactions, no long lock
 * on a busy table), until none is left or USAGE_PRUNE_BUDGET_MS have
 * passed; the next round goes on.  A row is a bucket in a 1.3 schema, a
 * key-minute of one round in 1.4.  Errors are logged.
 */
#define USAGE_PRUNE_SQL(table) \
	"DELETE FROM " table \
	" WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	"   SELECT ctid FROM " table \
	"    WHERE minute OPERATOR(pg_catalog.<)" \
	"          (pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)" \
	"    LIMIT " CppAsString2(USAGE_PRUNE_BATCH) "))"

static void
prune_usage(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   USAGE_PRUNE_BUDGET_MS);
	Datum		arg = CStringGetTextDatum(usage_retention);

	for (;;)
	{
		volatile uint64 deleted = 0;
		volatile bool stop = false;

		PG_TRY();
		{
			int			pinned = start_flush_transaction("flowella: pruning API key usage");
			const char *sql = NULL;

			switch (usage_schema())
			{
				case USAGE_SCHEMA_NONE:
					stop = true;
					break;
				case USAGE_SCHEMA_ROWS:
					sql = USAGE_PRUNE_SQL("flowella.api_key_usage");
					break;
				case USAGE_SCHEMA_PACKED:
					sql = USAGE_PRUNE_SQL("flowella.api_key_usage_log");
					break;
			}
			if (sql != NULL)
			{
				if (SPI_execute_with_args(sql, 1, (Oid[]) {TEXTOID}, &arg, NULL,
										  false, 0) != SPI_OK_DELETE)
					elog(ERROR, "flowella usage prune query failed");
				deleted = SPI_processed;
			}
			finish_flush_transaction(pinned);
		}
		PG_CATCH();
		{
			flush_error();
			stop = true;
		}
		PG_END_TRY();

		pg_atomic_fetch_add_u64(&usage->pruned, deleted);
		if (stop || deleted < USAGE_PRUNE_BATCH || GetCurrentTimestamp() >= deadline)
			break;
		CHECK_FOR_INTERRUPTS();
	}
}

/*---- Hot standbys: counts for the primary ----*/

/*
 * The forwarding slot of dbid, made if create (NULL when every slot is
 * taken).  Caller holds the lock, exclusively to create or change one.
 */
static ForwardState *
forward_slot_locked(Oid dbid, bool create)
{
	ForwardState *free_slot = NULL;

	for (int i = 0; i < USAGE_FORWARD_SLOTS; i++)
	{
		if (usage->forward[i].dbid == dbid)
			return &usage->forward[i];
		if (free_slot == NULL && usage->forward[i].dbid == InvalidOid)
			free_slot = &usage->forward[i];
	}
	if (!create || free_slot == NULL)
		return NULL;
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->dbid = dbid;
	return free_slot;
}

/* Free dbid's slot (nothing in flight, no back-off). */
static void
forward_release_locked(Oid dbid)
{
	ForwardState *slot = forward_slot_locked(dbid, false);

	if (slot != NULL)
		memset(slot, 0, sizeof(*slot));
}

/*
 * Whether the launcher may start a round for dbid now: not while a standby
 * backs off after failed rounds.
 */
static bool
forward_due(Oid dbid, TimestampTz now)
{
	ForwardState *slot;
	bool		due;

	LWLockAcquire(usage->lock, LW_SHARED);
	slot = forward_slot_locked(dbid, false);
	due = (slot == NULL || slot->next_try <= now);
	LWLockRelease(usage->lock);
	return due;
}

/*
 * A standby's round for dbid ended: ok, or failed (the link broke, the
 * primary refused): then the next waits one interval more each time, up to
 * USAGE_BACKOFF_MAX_MS.  The slot is freed once nothing is in flight.
 */
static void
forward_round_done(Oid dbid, bool ok)
{
	ForwardState *slot;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	slot = forward_slot_locked(dbid, !ok);
	if (slot != NULL)
	{
		if (ok)
		{
			slot->failures = 0;
			slot->next_try = 0;
		}
		else
		{
			int64		wait_ms = (int64) usage_flush_interval * 1000;

			slot->failures++;
			for (int i = 1; i < slot->failures && wait_ms < USAGE_BACKOFF_MAX_MS; i++)
				wait_ms *= 2;
			slot->next_try = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 Min(wait_ms, USAGE_BACKOFF_MAX_MS));
		}
		if (!slot->in_flight && slot->failures == 0)
			memset(slot, 0, sizeof(*slot));
	}
	LWLockRelease(usage->lock);
}

/* What flwl_usage_batch_next took, for flwl_usage_batch_done. */
typedef struct BatchTaken
{
	int			nbuckets;
	FlushBucket **buckets;		/* amounts in flight */
	int			nuses;
	UsageKey   *use_keys;
	Datum	   *use_whens;
} BatchTaken;

/*
 * The next batch of dbid's counts for the primary, into *batch; false when
 * there is nothing to send.  The batch in flight (sent, its answer lost)
 * comes first, as it was; else up to USAGE_FLUSH_BATCH pending buckets are
 * moved into flight under a new number.  With with_uses, the database's
 * last uses ride along (resending those is harmless: the primary keeps the
 * newest).  The arrays are usage_submit's, in CurrentMemoryContext.
 * Called by the one flush worker running, on a standby.
 */
bool
flwl_usage_batch_next(Oid dbid, bool with_uses, FlwlUsageBatch *batch)
{
	BatchTaken *taken = palloc0(sizeof(BatchTaken));
	ForwardState *slot;
	bool		in_flight;
	Datum	   *use_ids = NULL;

	LWLockAcquire(usage->lock, LW_SHARED);
	slot = forward_slot_locked(dbid, false);
	in_flight = (slot != NULL && slot->in_flight);
	LWLockRelease(usage->lock);

	taken->nbuckets = copy_buckets(dbid, in_flight, in_flight ? 0 : USAGE_FLUSH_BATCH,
								   &taken->buckets);
	if (with_uses)
		taken->nuses = copy_last_uses(dbid, &taken->use_keys, &use_ids,
									  &taken->use_whens);
	if (!in_flight && taken->nbuckets == 0 && taken->nuses == 0)
		return false;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	slot = forward_slot_locked(dbid, true);
	if (slot == NULL)
	{
		LWLockRelease(usage->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("flowella usage: more than %d databases have counts in flight to the primary",
						USAGE_FORWARD_SLOTS),
				 errdetail("The counts of this database stay pending until a slot is free.")));
	}
	if (!in_flight)
	{
		int			kept = 0;

		/* move the amounts read into flight: verify adds only to requests */
		for (int i = 0; i < taken->nbuckets; i++)
		{
			BucketEntry *bucket = hash_search(bucket_hash, &taken->buckets[i]->key,
											  HASH_FIND, NULL);

			if (bucket == NULL)
				continue;		/* cannot happen: only this worker removes */
			pg_atomic_sub_fetch_u64(&bucket->requests, taken->buckets[i]->requests);
			bucket->inflight += taken->buckets[i]->requests;
			taken->buckets[kept++] = taken->buckets[i];
		}
		taken->nbuckets = kept;
		slot->in_flight = true;
		slot->source = usage->source;
		slot->number = ++usage->last_batch;
	}
	batch->source = slot->source;
	batch->number = slot->number;
	LWLockRelease(usage->lock);

	/*
	 * After a batch sent again, or a full one, there may be more; a round
	 * stops at the first other, so that one under constant load ends.
	 */
	batch->more = in_flight || taken->nbuckets == USAGE_FLUSH_BATCH;

	/* usage_submit's arrays */
	bucket_arrays(taken->nbuckets, taken->buckets, batch->arrays);
	key_time_arrays(taken->nuses, use_ids, taken->use_whens, &batch->arrays[6]);
	batch->taken = taken;
	return true;
}

/*
 * The primary has the batch (it applied it now or before): its buckets
 * leave flight and count as written, the slot is free for the next batch,
 * and its last uses are done with.
 */
void
flwl_usage_batch_done(FlwlUsageBatch *batch)
{
	BatchTaken *taken = batch->taken;
	ForwardState *slot;
	uint64		total;
	bool	   *done = palloc(sizeof(bool) * (taken->nuses + 1));

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	total = take_away_locked(taken->nbuckets, taken->buckets, true);
	slot = forward_slot_locked(MyDatabaseId, false);
	if (slot != NULL)
		slot->in_flight = false;
	LWLockRelease(usage->lock);
	pg_atomic_fetch_add_u64(&usage->written, total);

	memset(done, true, sizeof(bool) * (taken->nuses + 1));
	settle_last_uses(taken->nuses, taken->use_keys, taken->use_whens, done);
}

/*
 * On a server promoted with a batch of dbid still in flight (its standby
 * life sent it; the answer never came): this database's copy of
 * usage_submissions, replayed up to the promotion, says whether the old
 * primary applied it.  If it did, its buckets count as written; if not,
 * they are pending again and this server writes them itself.
 */
static void
settle_after_promotion(Oid dbid)
{
	ForwardState *slot;
	Datum		args[2];
	volatile bool applied = false;
	FlushBucket **b;
	int			n;
	uint64		total;

	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	slot = forward_slot_locked(dbid, false);
	if (slot == NULL || !slot->in_flight)
	{
		forward_release_locked(dbid);
		LWLockRelease(usage->lock);
		return;
	}
	args[0] = UUIDPGetDatum(palloc(sizeof(pg_uuid_t)));
	memcpy(DatumGetPointer(args[0]), &slot->source, sizeof(pg_uuid_t));
	args[1] = Int64GetDatum(slot->number);
	LWLockRelease(usage->lock);

	PG_TRY();
	{
		int			pinned = start_flush_transaction("flowella: settling API key usage in flight");

		if (usage_schema() == USAGE_SCHEMA_PACKED &&
			SPI_execute_with_args("SELECT 1 FROM flowella.usage_submissions s"
								  " WHERE s.source OPERATOR(pg_catalog.=) $1"
								  "   AND s.last_batch OPERATOR(pg_catalog.>=) $2",
								  2, (Oid[]) {UUIDOID, INT8OID}, args, NULL, true, 1)
			== SPI_OK_SELECT)
			applied = (SPI_processed == 1);
		finish_flush_transaction(pinned);
	}
	PG_CATCH();
	{
		/* unknown: keep it in flight, the next round asks again */
		flush_error();
		return;
	}
	PG_END_TRY();

	n = copy_buckets(dbid, true, 0, &b);
	LWLockAcquire(usage->lock, LW_EXCLUSIVE);
	total = take_away_locked(n, b, true);
	if (!applied)
	{
		for (int i = 0; i < n; i++)
		{
			bool		folded;

			(void) bucket_add_locked(&b[i]->key, get_hash_value(bucket_hash, &b[i]->key),
									 b[i]->requests, &folded);
		}
	}
	forward_release_locked(dbid);
	LWLockRelease(usage->lock);
	if (applied)
		pg_atomic_fetch_add_u64(&usage->written, total);
}

/*---- Primary side: usage_submit's checks and writes ----*/

/* A standby's batch as usage_submit checked it. */
typedef struct Submission
{
	int			nbuckets;
	FlushBucket **buckets;
	int			nuses;
	Datum	   *use_ids;
	Datum	   *use_whens;
} Submission;

static void
submission_error(const char *what, int index)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid usage submission"),
			 errdetail("Element %d of %s is not valid.", index + 1, what)));
}

/* The elements of a one-dimensional (or empty) array argument. */
static int
submission_elements(Datum array, Oid elemtype, const char *what,
					Datum **elems, bool **nulls)
{
	ArrayType  *arr = DatumGetArrayTypeP(array);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			n;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid usage submission"),
				 errdetail("The array %s must be one-dimensional.", what)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(arr, elemtype, typlen, typbyval, typalign, elems, nulls, &n);
	return n;
}

/*
 * Check a standby's batch (usage_submit's arrays after source and number)
 * whole, raising 22023 for the first fault, and return it ready to write.
 * Buckets: key, minute (on a minute), client IP or NULL, scope (a scope
 * name) or NULL, a counted code, requests > 0, at most USAGE_SUBMIT_MAX;
 * last uses: key and time, none NULL.
 */
void *
flwl_usage_read_submission(Datum *arrays)
{
	static const char *const names[FLWL_BATCH_ARRAYS] = {
		"key_ids", "minutes", "client_ips", "scopes", "codes", "requests",
		"used_keys", "used_at"
	};
	static const Oid types[FLWL_BATCH_ARRAYS] = {
		UUIDOID, TIMESTAMPTZOID, INETOID, TEXTOID, TEXTOID, INT8OID,
		UUIDOID, TIMESTAMPTZOID
	};
	Datum	   *e[FLWL_BATCH_ARRAYS];
	bool	   *nulls[FLWL_BATCH_ARRAYS];
	int			len[FLWL_BATCH_ARRAYS];
	Submission *sub = palloc0(sizeof(Submission));
	FlushBucket *copy;

	for (int a = 0; a < FLWL_BATCH_ARRAYS; a++)
		len[a] = submission_elements(arrays[a], types[a], names[a], &e[a], &nulls[a]);
	for (int a = 1; a < FLWL_BATCH_ARRAYS; a++)
		if (len[a] != len[a < 6 ? 0 : 6])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid usage submission"),
					 errdetail("The arrays %s and %s differ in length (%d and %d).",
							   names[a < 6 ? 0 : 6], names[a], len[a < 6 ? 0 : 6], len[a])));
	if (len[0] > USAGE_SUBMIT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid usage submission"),
				 errdetail("A batch holds at most %d buckets.", USAGE_SUBMIT_MAX)));

	sub->nbuckets = len[0];
	copy = palloc0(sizeof(FlushBucket) * (sub->nbuckets + 1));
	sub->buckets = palloc(sizeof(FlushBucket *) * (sub->nbuckets + 1));
	for (int i = 0; i < sub->nbuckets; i++)
	{
		BucketKey  *key = &copy[i].key;
		int			code;

		if (nulls[0][i])
			submission_error(names[0], i);
		memcpy(&key->key_id, DatumGetUUIDP(e[0][i]), sizeof(pg_uuid_t));
		key->dbid = MyDatabaseId;

		if (nulls[1][i] || DatumGetTimestampTz(e[1][i]) % USECS_PER_MINUTE != 0)
			submission_error(names[1], i);
		key->minute = DatumGetTimestampTz(e[1][i]);

		if (!nulls[2][i])
		{
			inet	   *ip = DatumGetInetPP(e[2][i]);

			key->ip_family = ip_family(ip);
			key->ip_bits = ip_bits(ip);
			memcpy(key->ip, ip_addr(ip), Min(ip_addrsize(ip), sizeof(key->ip)));
		}

		if (!nulls[3][i])
		{
			text	   *scope = DatumGetTextPP(e[3][i]);
			const char *str = VARDATA_ANY(scope);
			size_t		slen = VARSIZE_ANY_EXHDR(scope);

			if (!usage_scope_ok(str, slen))
				submission_error(names[3], i);
			key->scope_len = (uint8) slen;
			memcpy(key->scope, str, slen);
		}

		code = nulls[4][i] ? -1 : usage_code_of(TextDatumGetCString(e[4][i]));
		if (code < 0)
			submission_error(names[4], i);
		key->code = (uint8) code;

		if (nulls[5][i] || DatumGetInt64(e[5][i]) <= 0)
			submission_error(names[5], i);
		copy[i].requests = (uint64) DatumGetInt64(e[5][i]);
		sub->buckets[i] = &copy[i];
	}
	qsort(sub->buckets, sub->nbuckets, sizeof(FlushBucket *), flush_bucket_cmp);

	sub->nuses = len[6];
	for (int i = 0; i < sub->nuses; i++)
		if (nulls[6][i] || nulls[7][i])
			submission_error(nulls[6][i] ? names[6] : names[7], i);
	sub->use_ids = e[6];
	sub->use_whens = e[7];
	return sub;
}

/*
 * Write a checked batch in the current transaction (SPI connected): its
 * buckets to the usage table, its last uses to api_keys, waiting for rows
 * others hold locked (in key order, so two standbys cannot deadlock).
 */
void
flwl_usage_write_submission(void *submission)
{
	Submission *sub = submission;
	bool	   *done = palloc(sizeof(bool) * (sub->nuses + 1));

	if (usage_schema() != USAGE_SCHEMA_PACKED)
		elog(ERROR, "flowella usage table of 1.4 is missing");
	if (sub->nbuckets > 0)
		write_buckets_packed(sub->nbuckets, sub->buckets);
	if (sub->nuses > 0)
		(void) write_uses(sub->nuses, sub->use_ids, sub->use_whens, done, true);
}

/*
 * A flush worker: write one database's pending buckets; in a regular round
 * (bgw_extra "r") also its last uses, then prune old buckets.
 */
void
flowella_usage_flush_main(Datum main_arg)
{
	Oid			dbid = DatumGetObjectId(main_arg);
	bool		regular = MyBgworkerEntry->bgw_extra[0] == 'r';

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);

	if (RecoveryInProgress())
	{
		/* a standby: the primary writes them */
		if (flwl_usage_primary_conninfo[0] == '\0')
			forget_database(dbid);
		else
			forward_round_done(dbid,
							   flwl_forward_round(dbid, regular,
												  flwl_usage_primary_conninfo));
	}
	else
	{
		settle_after_promotion(dbid);
		flush_buckets(dbid);
		if (regular)
		{
			flush_last_uses(dbid);
			prune_usage();
		}
	}

	pg_atomic_fetch_add_u64(&usage->flushes, 1);
	report_round_done(dbid);
	proc_exit(0);
}
