/*-------------------------------------------------------------------------
 *
 * flowella_ratelimit.c
 *		Per-key rate limits: one token bucket per (database, key) in this
 *		server's shared memory, spent by apikey_verify.
 *
 * The arithmetic of a bucket is in flowella_bucket.c (exact integers; see
 * there why the answers keep SPEC §11's bounds).  Here is where buckets
 * live and how concurrent sessions share them.
 *
 * Shared state: a fixed-size hash table of (database, key) -> bucket, sized
 * by flowella.ratelimit_max_keys, under one LWLock.  Spending from a key
 * already present takes the lock shared and the entry's spinlock: one hash
 * probe, no allocation, no system call, and each take is atomic per bucket,
 * so no two sessions spend the same request.  Adding a key takes the lock
 * exclusive.  Nothing is written to a table, so verify stays READ ONLY-safe
 * and works on a hot standby, which has its own buckets (each server limits
 * the requests it answers).
 *
 * Bounded memory.  A full bucket needs no entry (absent means full, and a
 * full bucket stays full under any limit), so only keys spent from within
 * the last minute need one.  The table never holds more than
 * ratelimit_max_keys entries nor takes more shared memory than it was given
 * at start (HASH_FIXED_SIZE, counted with hash_get_num_entries, as
 * flowella_usage.c does).  When a new key finds it full, one sweep under the
 * exclusive lock forgets every bucket that has been full for
 * RATELIMIT_EVICT_MARGIN (a margin so that a request whose "now" lags a
 * little behind the sweeper's sees the bucket it would have seen), and
 * notes when the next bucket will be full.  Sweeps are amortised: none
 * before that time, and at most one per RATELIMIT_SWEEP_INTERVAL, so a
 * table crowded with busy keys costs nothing but a counter.
 *
 * When nothing can be forgotten (more than ratelimit_max_keys keys spent
 * within the last minute on this server), a new key's request passes
 * untracked: flwl_ratelimit_take answers true with *remaining = -1
 * ("unknown", NULL to the caller), counts it in the untracked counter and
 * logs at most once a minute.  Refusing instead would answer 429 to valid
 * traffic because of a limit the operator sized, not the customer; the
 * limit is a guard against abuse, and an untracked key is limited again as
 * soon as a sweep makes room.  ratelimit_stats() shows the counters, and
 * the log names the setting to raise.
 *
 * Without shared_preload_libraries there is no shared memory and so no
 * bucket: every request passes with *remaining = -1.  A backend-local
 * bucket would look like enforcement and be N per minute per session
 * (pooled clients would get N times their pool size), which is not the
 * per-server limit SPEC §11 promises; no limit, said plainly, is the
 * honest answer.  Production preloads the library (SPEC §1).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "flowella_apikey.h"
#include "flowella_bucket.h"

/*---- GUC variables ----*/

static int	ratelimit_max_keys = 100000;

/*
 * A bucket is forgotten only once it has been full this long (us), and the
 * table is swept at most once per RATELIMIT_SWEEP_INTERVAL (us).  The
 * untracked LOG comes at most once per RATELIMIT_LOG_INTERVAL (us).
 */
#define RATELIMIT_EVICT_MARGIN		INT64CONST(1000000)
#define RATELIMIT_SWEEP_INTERVAL	INT64CONST(100000)
#define RATELIMIT_LOG_INTERVAL		INT64CONST(60000000)

/*---- Shared state ----*/

typedef struct RateLimitEntry
{
	FlwlDbKey	key;			/* hash key: must be first */
	slock_t		mutex;			/* protects bucket */
	FlwlBucket	bucket;
} RateLimitEntry;

typedef struct RateLimitShared
{
	LWLock	   *lock;			/* protects the hash table's membership */

	/*
	 * No bucket is full before this time: a lower bound, made exact by each
	 * sweep (exclusive lock) and lowered by any take that brings a bucket's
	 * full time forward (a new bucket, a raised limit, a clock stepped back:
	 * shared lock, hence atomic).
	 */
	pg_atomic_uint64 next_full;
	TimestampTz last_sweep;		/* exclusive lock to write, shared to read */
	pg_atomic_uint64 last_log;	/* time of the last untracked LOG */
	pg_atomic_uint64 evicted;	/* full buckets forgotten */
	pg_atomic_uint64 untracked; /* requests passed for want of an entry */
} RateLimitShared;

static RateLimitShared *ratelimit = NULL;
static HTAB *ratelimit_hash = NULL;

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_ratelimit_stats);

static Size ratelimit_memsize(void);
static bool entry_take(RateLimitEntry *entry, int32 limit_per_minute,
					   TimestampTz now, int32 *remaining,
					   int32 *retry_after_ms);
static bool sweep_due(TimestampTz now);
static void sweep(TimestampTz now);
static void lower_next_full(TimestampTz full_at);
static bool pass_untracked(int32 *remaining, int32 *retry_after_ms,
						   TimestampTz now);

/*---- Set-up ----*/

/*
 * Called from _PG_init while shared_preload_libraries is processed: define
 * the GUC (its shared memory is asked for by flwl_ratelimit_shmem_request).
 */
void
flwl_ratelimit_init(void)
{
	DefineCustomIntVariable("flowella.ratelimit_max_keys",
							"Number of keys whose rate-limit bucket shared memory can hold at once.",
							"Only keys spent from within the last minute need one; "
							"a key beyond it passes untracked.",
							&ratelimit_max_keys,
							100000, 100, 10000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
}

static Size
ratelimit_memsize(void)
{
	return add_size(MAXALIGN(sizeof(RateLimitShared)),
					hash_estimate_size(ratelimit_max_keys, sizeof(RateLimitEntry)));
}

/* The shmem_request_hook part of the rate limiter (flowella_apikey.c). */
void
flwl_ratelimit_shmem_request(void)
{
	RequestAddinShmemSpace(ratelimit_memsize());
	RequestNamedLWLockTranche("flowella_apikey ratelimit", 1);
}

/* The shmem_startup_hook part of the rate limiter (flowella_apikey.c). */
void
flwl_ratelimit_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ratelimit = ShmemInitStruct("flowella_apikey ratelimit",
								sizeof(RateLimitShared), &found);
	if (!found)
	{
		ratelimit->lock = &(GetNamedLWLockTranche("flowella_apikey ratelimit"))->lock;
		pg_atomic_init_u64(&ratelimit->next_full, 0);
		ratelimit->last_sweep = 0;
		pg_atomic_init_u64(&ratelimit->last_log, 0);
		pg_atomic_init_u64(&ratelimit->evicted, 0);
		pg_atomic_init_u64(&ratelimit->untracked, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(FlwlDbKey);
	info.entrysize = sizeof(RateLimitEntry);
	ratelimit_hash = ShmemInitHash("flowella_apikey ratelimit hash",
								   ratelimit_max_keys, ratelimit_max_keys,
								   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/*---- Spending (verify path) ----*/

/*
 * Spend one request of key_id's bucket in the current database at now (see
 * flowella_apikey.h for the answers).  limit_per_minute is the key's
 * rate_limit_per_minute, which the table keeps in 1 .. 1 000 000.
 */
bool
flwl_ratelimit_take(const pg_uuid_t *key_id, int32 limit_per_minute,
					TimestampTz now, int32 *remaining, int32 *retry_after_ms)
{
	FlwlDbKey	key;
	RateLimitEntry *entry;
	bool		allowed;

	if (limit_per_minute < 1)
		elog(ERROR, "rate limit %d out of range", limit_per_minute);

	/* not preloaded: no shared bucket, no limit (see the file header) */
	if (ratelimit == NULL || ratelimit_hash == NULL)
	{
		*remaining = -1;
		*retry_after_ms = 0;
		return true;
	}

	flwl_db_key_set(&key, key_id);
	LWLockAcquire(ratelimit->lock, LW_SHARED);
	entry = hash_search(ratelimit_hash, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		allowed = entry_take(entry, limit_per_minute, now, remaining,
							 retry_after_ms);
		LWLockRelease(ratelimit->lock);
		return allowed;
	}

	/* full, and no sweep could make room yet: do not queue for the lock */
	if (hash_get_num_entries(ratelimit_hash) >= ratelimit_max_keys &&
		!sweep_due(now))
	{
		LWLockRelease(ratelimit->lock);
		return pass_untracked(remaining, retry_after_ms, now);
	}
	LWLockRelease(ratelimit->lock);

	LWLockAcquire(ratelimit->lock, LW_EXCLUSIVE);
	entry = hash_search(ratelimit_hash, &key, HASH_FIND, NULL);
	if (entry == NULL)
	{
		if (hash_get_num_entries(ratelimit_hash) >= ratelimit_max_keys &&
			sweep_due(now))
			sweep(now);
		if (hash_get_num_entries(ratelimit_hash) >= ratelimit_max_keys)
		{
			LWLockRelease(ratelimit->lock);
			return pass_untracked(remaining, retry_after_ms, now);
		}
		entry = hash_search(ratelimit_hash, &key, HASH_ENTER_NULL, NULL);
		if (entry == NULL)		/* cannot happen: the memory was reserved */
		{
			LWLockRelease(ratelimit->lock);
			return pass_untracked(remaining, retry_after_ms, now);
		}
		SpinLockInit(&entry->mutex);
		flwl_bucket_init(&entry->bucket, limit_per_minute, now);
	}

	allowed = entry_take(entry, limit_per_minute, now, remaining,
						 retry_after_ms);
	LWLockRelease(ratelimit->lock);
	return allowed;
}

/*
 * Spend one request of an entry's bucket and keep next_full a lower bound.
 * Caller holds the lock (either mode; the spinlock makes the bucket's
 * update atomic under the shared one).
 */
static bool
entry_take(RateLimitEntry *entry, int32 limit_per_minute, TimestampTz now,
		   int32 *remaining, int32 *retry_after_ms)
{
	bool		allowed;
	TimestampTz full_at;

	SpinLockAcquire(&entry->mutex);
	allowed = flwl_bucket_take(&entry->bucket, limit_per_minute, now,
							   remaining, retry_after_ms);
	full_at = flwl_bucket_full_at(&entry->bucket);
	SpinLockRelease(&entry->mutex);
	lower_next_full(full_at);
	return allowed;
}

/*
 * Whether a sweep of a full table may be worth it at now: some bucket may
 * have been full for the margin, and the last sweep is not too recent (or
 * is in the future: a clock stepped back).  Caller holds the lock.
 */
static bool
sweep_due(TimestampTz now)
{
	TimestampTz next_full = (TimestampTz) pg_atomic_read_u64(&ratelimit->next_full);

	if (now - RATELIMIT_EVICT_MARGIN < next_full)
		return false;
	return now < ratelimit->last_sweep ||
		now - ratelimit->last_sweep >= RATELIMIT_SWEEP_INTERVAL;
}

/*
 * Forget every bucket that has been full for RATELIMIT_EVICT_MARGIN at now,
 * and note when the next of the others will be full.  Forgetting one
 * changes no answer: a request that finds no entry starts from a full
 * bucket, which is what it would have found.  Caller holds the lock
 * exclusively (so no spinlock is held either).
 */
static void
sweep(TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	RateLimitEntry *entry;
	TimestampTz next_full = PG_INT64_MAX;
	uint64		evicted = 0;

	hash_seq_init(&seq, ratelimit_hash);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		TimestampTz full_at = flwl_bucket_full_at(&entry->bucket);

		if (full_at <= now - RATELIMIT_EVICT_MARGIN)
		{
			/* removing the current entry is safe */
			hash_search(ratelimit_hash, &entry->key, HASH_REMOVE, NULL);
			evicted++;
		}
		else if (full_at < next_full)
			next_full = full_at;
	}
	ratelimit->last_sweep = now;
	pg_atomic_write_u64(&ratelimit->next_full, (uint64) next_full);
	pg_atomic_fetch_add_u64(&ratelimit->evicted, evicted);
}

/*
 * A bucket just taken will be full at full_at: keep next_full a lower bound.
 * A take almost always moves its bucket's full time later, so this is one
 * read of a line that is rarely written.  Caller holds the lock (either
 * mode): a sweep, which sets next_full outright, cannot run meanwhile.
 */
static void
lower_next_full(TimestampTz full_at)
{
	uint64		old = pg_atomic_read_u64(&ratelimit->next_full);

	while (full_at < (TimestampTz) old)
	{
		if (pg_atomic_compare_exchange_u64(&ratelimit->next_full, &old,
										   (uint64) full_at))
			break;
	}
}

/*
 * The answer for a key that finds no room: it passes, unknown remaining
 * (see the file header for why).  Logged at most once per
 * RATELIMIT_LOG_INTERVAL on this server, by whoever claims the slot.
 */
static bool
pass_untracked(int32 *remaining, int32 *retry_after_ms, TimestampTz now)
{
	uint64		last;

	*remaining = -1;
	*retry_after_ms = 0;
	pg_atomic_fetch_add_u64(&ratelimit->untracked, 1);

	last = pg_atomic_read_u64(&ratelimit->last_log);
	if ((now < (TimestampTz) last ||
		 now - (TimestampTz) last >= RATELIMIT_LOG_INTERVAL) &&
		pg_atomic_compare_exchange_u64(&ratelimit->last_log, &last, (uint64) now))
		ereport(LOG,
				(errmsg("flowella_apikey rate limiter is full: requests pass without a rate limit"),
				 errdetail("More than %d rate-limited keys were used within the last minute on this server.",
						   ratelimit_max_keys),
				 errhint("Raise \"flowella.ratelimit_max_keys\"; flowella.ratelimit_stats() counts the requests that passed untracked.")));
	return true;
}

/*---- Monitoring ----*/

/*
 * ratelimit_stats(): keys with a bucket now, buckets forgotten, requests
 * passed untracked.  tracked_keys is NULL and the counters zero when the
 * library is not preloaded (there is no bucket at all then).
 */
Datum
flowella_ratelimit_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	if (ratelimit == NULL)
	{
		for (int i = 0; i < 3; i++)
			values[i] = Int64GetDatum(0);
		nulls[0] = true;
	}
	else
	{
		LWLockAcquire(ratelimit->lock, LW_SHARED);
		values[0] = Int64GetDatum(hash_get_num_entries(ratelimit_hash));
		LWLockRelease(ratelimit->lock);
		values[1] = Int64GetDatum(pg_atomic_read_u64(&ratelimit->evicted));
		values[2] = Int64GetDatum(pg_atomic_read_u64(&ratelimit->untracked));
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
