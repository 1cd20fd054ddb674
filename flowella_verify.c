/*-------------------------------------------------------------------------
 *
 * flowella_verify.c
 *		The hot path: apikey_verify, its per-backend caches and the trigger
 *		that invalidates its plan cache.
 *
 * apikey_verify reads flowella.api_keys through its unique prefix index
 * directly, with no SPI and no SQL-level permission check: the verifier role
 * holds no table privilege at all, and the cost stays that of one index
 * probe plus the organisation's plan.  It takes the latest snapshot, so a
 * revoke committed before the call is seen even inside an older REPEATABLE
 * READ transaction.  It never raises for any text input: anything that does
 * not parse as a token answers MALFORMED before a table is touched.
 *
 * One C function serves every schema version: 1.0 to 1.2 declare it with
 * two arguments and a six-column result, 1.3 with the client's address and
 * eight columns (ratelimit_remaining, retry_after_ms).  It reads the third
 * argument only when called with one and fills the last two columns only
 * when the result has them; a keys table without the policy columns (a
 * schema not yet updated to 1.3) has no policy.
 *
 * The verify path keeps four per-backend caches: the OIDs and column
 * numbers of its relations (vrels), each key's row as verify reads it (the
 * key cache), each organisation's plan scopes (the plan cache) and the
 * descriptor of its result row.  Their invalidation
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
 *   pinned.  Verify pins the key and plan caches for its whole length: a
 *   reset while pinned only retires the cache's memory, which is freed when
 *   the last pin goes.  The result descriptor is looked up and used with no
 *   such call in between.
 *
 * The key and plan caches hold rows of tables that change while the
 * backend runs; they stay right the way the relcache does.  A committed
 * change sends a relcache invalidation of its table (the triggers below
 * register it; PostgreSQL sends it at commit, once the change is visible,
 * before COMMIT returns, to this backend at once, with a prepared
 * transaction at COMMIT PREPARED, and to hot standbys as the commit is
 * replayed), and verify accepts invalidations before it reads a cache.  So
 * a verify that starts after a revoke's COMMIT returned finds no cached
 * row from before it.
 *
 * With the library preloaded, the key cache has a second level in shared
 * memory (flowella.verify_shared_cache_keys), so that a new connection
 * does not start cold: what one backend read from the table, every other
 * one finds there.  No backend can reset another's memory, so shared
 * entries are dropped by epoch instead; see "Shared key cache" below.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sodium.h>

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_database_d.h"
#include "catalog/pg_extension_d.h"
#include "catalog/pg_namespace_d.h"
#include "catalog/pg_trigger_d.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lockdefs.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "flowella_apikey.h"
#include "flowella_token.h"

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
	AttrNumber	k_allowed_ips;	/* InvalidAttrNumber before 1.3 */
	AttrNumber	k_rate_limit;	/* likewise */
	AttrNumber	o_plan;
	AttrNumber	p_scopes;
} VerifyRels;

static VerifyRels vrels;
static uint64 vrels_generation = 0;	/* bumped when vrels is invalidated */

/*
 * Per-backend cache: organisation -> its plan's current scopes, so that a
 * verify costs at most the key's index probe.  A statement
 * trigger on orgs and plans sends a relcache invalidation at commit
 * (flowella_plan_cache_invalidate); every backend then drops the whole cache
 * before its next verify, which calls AcceptInvalidationMessages first.
 *
 * A verify pins the cache (cache_pins) while it uses an entry: a reset
 * that arrives meanwhile moves the cache's context under caches_retired
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

/*
 * Per-backend cache: a key's prefix -> what verify reads of its row, so that
 * a verify of a key seen before reads no table at all: no snapshot, no
 * relation lock, no index probe.  The row's secret hash is kept with it and
 * compared with the token's in constant time on every call, as the row's
 * would be; a prefix with no row is never cached (a new key needs no
 * invalidation).  It holds at most flowella.verify_cache_keys keys and
 * starts again empty when full.
 *
 * It is dropped whole when api_keys is invalidated: the audit trigger that
 * fires for every change of a column verify reads (revoked_at, scopes,
 * expires_at, allowed_ips, rate_limit_per_minute; the guard keeps the
 * others immutable) registers that invalidation (flwl_verify_key_changed).
 * Both triggers fire for every role and session_replication_role only when
 * enabled ALWAYS, as from 1.3 on: otherwise (an older schema, or a
 * superuser who disabled one, which itself invalidates the table) the cache
 * is not used (key_cache_sound).
 */
typedef struct KeyFacts
{
	char		prefix[FLWL_PREFIX_LEN];	/* hash key: the token's public part */
	bool		has_hash;
	unsigned char secret_hash[FLWL_HASH_LEN];
	pg_uuid_t	key_id;
	pg_uuid_t	org_id;
	bool		revoked;
	bool		has_expiry;
	TimestampTz expires_at;
	bool		scopes_null;
	Datum		scopes;			/* the key's text[], detoasted */
	bool		ips_null;		/* also before 1.3 */
	Datum		allowed_ips;	/* cidr[], detoasted */
	bool		has_limit;
	bool		in_cache;		/* this is a KeyCacheEntry's */
	int32		rate_limit;
} KeyFacts;

/*
 * An entry of the backend's key cache: the key's facts, then its effective
 * scopes (its own that its plan offers, or its plan's), kept while the plan
 * cache's generation is eff_generation (EFF_NONE: not worked out yet), so
 * that a verify of a key seen before neither looks its plan up nor builds
 * the set again.  Own scopes make a new array, in eff_memory (in the key
 * cache's context, freed when replaced); a key without them shares its
 * plan's set, which lives as long as that generation of the plan cache.
 */
typedef struct KeyCacheEntry
{
	KeyFacts	facts;			/* first: its prefix is the hash key */
	uint64		eff_generation;
	FlwlScopeSet effective;
	void	   *eff_memory;
} KeyCacheEntry;

#define EFF_NONE	PG_UINT64_MAX	/* a generation the plan cache never reaches */

static int	verify_cache_keys = 10000;
static MemoryContext key_cache_cxt = NULL;
static HTAB *key_cache = NULL;
static uint64 key_cache_generation = 0;	/* bumped at each reset */

/*
 * Shared key cache: the key cache's second level, in shared memory, for
 * every backend of the server, consulted when a backend's own cache misses
 * and filled with what it reads from the table.
 *
 * A backend's own cache may rely on relcache invalidations because a new
 * backend starts with it empty; the shared cache outlives backends, and a
 * backend started after a change never receives that change's
 * invalidation.  So shared entries are dropped by epoch, bumped by the
 * committing backend itself: an entry counts only while the epoch it was
 * stored under is the current epoch of its keys table's slot (the table's
 * OID modulo SKC_EPOCH_SLOTS).  The epochs are bumped
 *
 * - for a change of a key: the audit trigger that registers the relcache
 *   invalidation (flwl_verify_key_changed) notes the table, and the
 *   transaction's commit callback bumps its slot.  That callback runs once
 *   the change is visible to new snapshots and before COMMIT returns;
 * - for any DDL on flowella's relations, on triggers, extensions, schemas
 *   or databases (the object access hook notes it, so a disabled trigger,
 *   a TRUNCATE or a dropped extension count too): all slots, at commit;
 * - by every backend's relcache callback for the keys table it knows, and
 *   for a reset of the whole relcache: all slots;
 * - at PREPARE of a transaction that did either of the first two, whose
 *   changes become visible later, at a COMMIT PREPARED that runs no
 *   callback: its XID is listed in shared memory, every verify bypasses the
 *   shared cache while a listed transaction is in progress, and the first
 *   verify that finds them all ended bumps all slots.
 *
 * A verify that starts after the change's COMMIT (or COMMIT PREPARED)
 * returned reads the bumped epoch, so every entry stored before is stale.
 * An entry stored after was read with a snapshot that sees the change: the
 * storing backend reads the epoch before it takes its snapshot and stores
 * under the partition lock only if the epoch has not moved (a bump between
 * that check and the write leaves the entry stale, never wrong).
 *
 * Only committed rows go in, and only they come out: a transaction that
 * has an XID (it may have changed a key, and its latest snapshot shows its
 * own uncommitted rows) neither reads nor fills the shared cache.  Nor does
 * a hot standby: its changes arrive by replay, which runs no commit
 * callback; its backends keep their own caches, which replayed
 * invalidations keep right.  Like the backend's cache, it is filled only
 * when key_cache_sound.
 *
 * Layout: sets of SKC_WAYS fixed-size entries, a key's set chosen by the
 * hash of its database and prefix, each set under one of SKC_PARTITIONS
 * LWLocks (shared to read, exclusive to store).  A key whose scopes and
 * allowlist take more than SKC_DATA_SIZE bytes is kept only by the
 * backends' caches.
 */
#define SKC_WAYS			4
#define SKC_PARTITIONS		128
#define SKC_EPOCH_SLOTS		64
#define SKC_DATA_SIZE		512

typedef struct SharedKeyEntry
{
	uint64		epoch;			/* 0: empty */
	Oid			dbid;
	Oid			keys_relid;		/* the api_keys it was read from */
	uint16		scopes_size;	/* 0: NULL; else at data[0] */
	uint16		ips_size;		/* 0: NULL; else at data[MAXALIGN(scopes_size)] */
	KeyFacts	facts;			/* scopes and allowed_ips are in data */
	union
	{
		char		bytes[SKC_DATA_SIZE];
		double		force_align;
	}			data;
} SharedKeyEntry;

#define SKC_PREPARED_MAX	64

typedef struct SharedKeyCache
{
	int			nsets;
	LWLockPadded *locks;		/* SKC_PARTITIONS of them */
	pg_atomic_uint64 epochs[SKC_EPOCH_SLOTS];
	slock_t		mutex;			/* protects the prepared list */
	bool		broken;			/* the list overflowed: not used again */
	int			nprepared;
	TransactionId prepared[SKC_PREPARED_MAX];
	SharedKeyEntry entries[FLEXIBLE_ARRAY_MEMBER];	/* nsets * SKC_WAYS */
} SharedKeyCache;

static int	verify_shared_cache_keys = 10000;
static SharedKeyCache *skc = NULL;
static int	skc_next_victim = 0;

/* What the current transaction did that its commit must bump. */
static Oid	skc_keys_changed = InvalidOid;
static bool skc_ddl = false;

static object_access_hook_type prev_object_access_hook = NULL;

/* Pins on the key and plan caches, and the memory resets retired. */
static int	cache_pins = 0;
static MemoryContext caches_retired = NULL;

const char *const flwl_verify_code_names[FLWL_VC_COUNT] = {
	"VALID", "MALFORMED", "NOT_FOUND", "REVOKED", "EXPIRED", "INSUFFICIENT_SCOPE",
	"IP_DENIED", "RATE_LIMITED"
};

/* The rate-limit columns of a result (1.3 on), NULL when not set. */
typedef struct RateAnswer
{
	bool		has_remaining;
	int32		remaining;
	bool		has_retry;
	int32		retry_after_ms;
} RateAnswer;

/* The columns of flowella.verification before and from 1.3. */
#define VERIFY_NATTS_1_0	6
#define VERIFY_NATTS_1_3	8

static text *verify_code_texts[FLWL_VC_COUNT];
static text *mode_texts[FLWL_MODE_TEST + 1];

/* Descriptor of flowella.verification, and the relation of that type. */
static TupleDesc verify_tupdesc = NULL;
static Oid	verify_type_relid = InvalidOid;
static uint64 verify_tupdesc_generation = 0;	/* bumped when it is dropped */

/*---- Function declarations ----*/

PG_FUNCTION_INFO_V1(flowella_apikey_verify);
PG_FUNCTION_INFO_V1(flowella_plan_cache_invalidate);

static void caches_xact_callback(XactEvent event, void *arg);
static void caches_subxact_callback(SubXactEvent event,
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
static void cache_reset(MemoryContext *cxt, HTAB **table, uint64 *generation);
static void *cache_enter(MemoryContext *cxt, HTAB **table, uint64 *generation,
						 long max, const char *name, Size keysize,
						 Size entrysize, const void *key);
static void caches_unpin(void);
static bool key_cache_sound(Relation keys);
static KeyFacts *key_facts_of_row(TupleTableSlot *slot, const VerifyRels *r,
								  const char *prefix);
static const KeyFacts *key_cache_put(const KeyFacts *facts);
static FlwlScopeSet key_effective_scopes(const KeyFacts *facts, Datum org_id);
static Size skc_memsize(void);
static bool skc_usable(void);
static uint32 skc_hash(const char *prefix);
static uint64 skc_epoch(Oid keys_relid);
static bool skc_get(const char *prefix, uint32 hash, SharedKeyEntry *out);
static void skc_put(const KeyFacts *facts, uint32 hash, Oid keys_relid,
					uint64 epoch);
static void skc_invalidate(Oid relid);
static bool skc_prepared_settled(void);
static void skc_object_access(ObjectAccessType access, Oid classId,
							  Oid objectId, int subId, void *arg);
static const KeyFacts *key_facts_of_shared(const SharedKeyEntry *e);
static const KeyFacts *key_facts(const char *prefix);
static const FlwlScopeSet *plan_scopes_of_org(Datum org_id);
static TupleDesc verification_desc(FunctionCallInfo fcinfo);
static bool client_ip_allowed(Datum allowed_ips, const inet *client);
static Datum verify_body(FunctionCallInfo fcinfo);
static Datum verification_result(FunctionCallInfo fcinfo, FlwlVerifyCode code,
								 Datum key_id, Datum org_id, Datum scopes,
								 bool scopes_null, FlwlMode mode,
								 const RateAnswer *rate);


/*
 * Define the key cache's setting and register the callbacks that keep the
 * verify caches honest: the relcache invalidation of all four, and the
 * release of a failed verify's pin at (sub)transaction abort.  Called once,
 * from _PG_init.
 */
void
flwl_verify_init(void)
{
	DefineCustomIntVariable("flowella.verify_cache_keys",
							"Number of keys whose row each backend keeps for apikey_verify.",
							"A verify of a cached key reads no table. 0 turns the cache off.",
							&verify_cache_keys,
							10000, 0, 10000000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("flowella.verify_shared_cache_keys",
								"Number of keys whose row apikey_verify keeps in shared memory for every backend.",
								"A backend's first verify of a key another backend has read reads no table. "
								"0 turns the shared cache off.",
								&verify_shared_cache_keys,
								10000, 0, 10000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
		prev_object_access_hook = object_access_hook;
		object_access_hook = skc_object_access;
	}
	RegisterXactCallback(caches_xact_callback, NULL);
	RegisterSubXactCallback(caches_subxact_callback, NULL);
	CacheRegisterRelcacheCallback(vrels_invalidate, (Datum) 0);
}

/*---- Shared key cache ----*/

/* The sets the setting asks for, and the bytes of their entries. */
static int
skc_nsets(void)
{
	return Max(verify_shared_cache_keys / SKC_WAYS, 1);
}

static Size
skc_entries_size(int nsets)
{
	return mul_size(mul_size(nsets, SKC_WAYS), sizeof(SharedKeyEntry));
}

static Size
skc_memsize(void)
{
	return add_size(offsetof(SharedKeyCache, entries), skc_entries_size(skc_nsets()));
}

/* The shmem_request_hook part of the shared key cache (flowella_apikey.c). */
void
flwl_verify_shmem_request(void)
{
	if (verify_shared_cache_keys == 0)
		return;
	RequestAddinShmemSpace(skc_memsize());
	RequestNamedLWLockTranche("flowella_apikey key cache", SKC_PARTITIONS);
}

/* The shmem_startup_hook part of the shared key cache (flowella_apikey.c). */
void
flwl_verify_shmem_startup(void)
{
	bool		found;

	if (verify_shared_cache_keys == 0)
		return;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	skc = ShmemInitStruct("flowella_apikey key cache", skc_memsize(), &found);
	if (!found)
	{
		skc->nsets = skc_nsets();
		skc->locks = GetNamedLWLockTranche("flowella_apikey key cache");
		for (int i = 0; i < SKC_EPOCH_SLOTS; i++)
			pg_atomic_init_u64(&skc->epochs[i], 1);
		SpinLockInit(&skc->mutex);
		skc->broken = false;
		skc->nprepared = 0;
		memset(skc->entries, 0, skc_entries_size(skc->nsets));
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Whether this verify may read and fill the shared key cache: it exists,
 * the session's key cache is not off, the transaction has written nothing,
 * the server is not a standby and no prepared transaction's change is
 * pending (see the shared cache's header).
 */
static bool
skc_usable(void)
{
	return skc != NULL && verify_cache_keys > 0 &&
		!TransactionIdIsValid(GetTopTransactionIdIfAny()) &&
		!RecoveryInProgress() && skc_prepared_settled();
}

/*
 * Whether no listed prepared transaction is in progress any more; the
 * first caller to find one ended bumps all slots and unlists it.  Unlisted
 * only after the bump, so that no verify reads old entries in between.
 */
static bool
skc_prepared_settled(void)
{
	TransactionId listed[SKC_PREPARED_MAX];
	int			n;
	bool		settled = true;

	/*
	 * The common case reads without the lock: a transaction is listed
	 * before its PREPARE returns, so before any COMMIT PREPARED of it.
	 */
	pg_read_barrier();
	if (skc->nprepared == 0 && !skc->broken)
		return true;

	SpinLockAcquire(&skc->mutex);
	n = skc->broken ? -1 : skc->nprepared;
	if (n > 0)
		memcpy(listed, skc->prepared, n * sizeof(TransactionId));
	SpinLockRelease(&skc->mutex);
	if (n <= 0)
		return n == 0;

	for (int i = 0; i < n; i++)
	{
		if (TransactionIdIsInProgress(listed[i]))
		{
			settled = false;
			continue;
		}
		skc_invalidate(InvalidOid);
		SpinLockAcquire(&skc->mutex);
		for (int j = 0; j < skc->nprepared; j++)
			if (TransactionIdEquals(skc->prepared[j], listed[i]))
				skc->prepared[j] = skc->prepared[--skc->nprepared];
		SpinLockRelease(&skc->mutex);
	}
	return settled;
}

/*
 * Object access hook: note DDL that may change what verify reads of the
 * keys table or whether its cache is sound, for the commit to bump all
 * epochs.  Relations count only in schema flowella (an application's
 * temporary tables do not empty the cache).
 */
static void
skc_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (skc == NULL || skc_ddl)
		return;
	if (access != OAT_POST_CREATE && access != OAT_DROP &&
		access != OAT_POST_ALTER && access != OAT_TRUNCATE)
		return;
	if (classId == RelationRelationId)
	{
		Oid			nsp = get_rel_namespace(objectId);

		skc_ddl = OidIsValid(nsp) && nsp == get_namespace_oid("flowella", true);
	}
	else
		skc_ddl = (classId == TriggerRelationId || classId == ExtensionRelationId ||
				   classId == NamespaceRelationId || classId == DatabaseRelationId);
}

/* A key's hash: its set in the shared cache is this modulo nsets. */
static uint32
skc_hash(const char *prefix)
{
	return hash_combine(hash_bytes((const unsigned char *) prefix, FLWL_PREFIX_LEN),
						(uint32) MyDatabaseId);
}

/* The current epoch of the slot of keys_relid. */
static uint64
skc_epoch(Oid keys_relid)
{
	return pg_atomic_read_u64(&skc->epochs[keys_relid % SKC_EPOCH_SLOTS]);
}

/*
 * Bump the epoch of relid's slot, or of all slots for InvalidOid: called
 * by the relcache callback, so it must not allocate nor fail.
 */
static void
skc_invalidate(Oid relid)
{
	if (skc == NULL)
		return;
	if (relid != InvalidOid)
		pg_atomic_fetch_add_u64(&skc->epochs[relid % SKC_EPOCH_SLOTS], 1);
	else
		for (int i = 0; i < SKC_EPOCH_SLOTS; i++)
			pg_atomic_fetch_add_u64(&skc->epochs[i], 1);
}

/* The SKC_WAYS entries of the set of hash, and the lock they are under. */
static SharedKeyEntry *
skc_set(uint32 hash, LWLock **lock)
{
	int			set = hash % skc->nsets;

	*lock = &skc->locks[set % SKC_PARTITIONS].lock;
	return &skc->entries[set * SKC_WAYS];
}

/* Whether e holds the key of prefix in this database, stale or not. */
static inline bool
skc_entry_holds(const SharedKeyEntry *e, const char *prefix)
{
	return e->epoch != 0 && e->dbid == MyDatabaseId &&
		memcmp(e->facts.prefix, prefix, FLWL_PREFIX_LEN) == 0;
}

/* Whether e holds a key stored under its table's current epoch. */
static inline bool
skc_entry_current(const SharedKeyEntry *e)
{
	return e->epoch != 0 && e->epoch == skc_epoch(e->keys_relid);
}

/*
 * Copy the current entry of prefix in this database into out; false when
 * there is none.  Only its used part is copied.
 */
static bool
skc_get(const char *prefix, uint32 hash, SharedKeyEntry *out)
{
	LWLock	   *lock;
	SharedKeyEntry *set = skc_set(hash, &lock);
	bool		found = false;

	LWLockAcquire(lock, LW_SHARED);
	for (int w = 0; w < SKC_WAYS; w++)
	{
		SharedKeyEntry *e = &set[w];

		if (!skc_entry_holds(e, prefix))
			continue;
		if (skc_entry_current(e))
		{
			memcpy(out, e, offsetof(SharedKeyEntry, data) +
				   MAXALIGN(e->scopes_size) + e->ips_size);
			found = true;
		}
		break;
	}
	LWLockRelease(lock);
	return found;
}

/*
 * Store facts, read from keys_relid with a snapshot taken after epoch was
 * read as its slot's epoch, unless that epoch has moved since: an
 * invalidation came in between, and what was read may be older than it.
 * Takes the set's entry of the same key, else an empty or stale one, else
 * evicts one in turn.
 */
static void
skc_put(const KeyFacts *facts, uint32 hash, Oid keys_relid, uint64 epoch)
{
	LWLock	   *lock;
	SharedKeyEntry *set = skc_set(hash, &lock);
	Size		scopes_size = facts->scopes_null ? 0 : VARSIZE(DatumGetPointer(facts->scopes));
	Size		ips_size = facts->ips_null ? 0 : VARSIZE(DatumGetPointer(facts->allowed_ips));
	SharedKeyEntry *victim = NULL;

	if (MAXALIGN(scopes_size) + ips_size > SKC_DATA_SIZE)
		return;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (skc_epoch(keys_relid) == epoch)
	{
		for (int w = 0; w < SKC_WAYS; w++)
		{
			SharedKeyEntry *e = &set[w];

			if (skc_entry_holds(e, facts->prefix))
			{
				victim = e;
				break;
			}
			if (victim == NULL && !skc_entry_current(e))
				victim = e;
		}
		if (victim == NULL)
		{
			skc_next_victim = (skc_next_victim + 1) % SKC_WAYS;
			victim = &set[skc_next_victim];
		}
		victim->epoch = epoch;
		victim->dbid = MyDatabaseId;
		victim->keys_relid = keys_relid;
		victim->facts = *facts;
		victim->facts.scopes = victim->facts.allowed_ips = (Datum) 0;
		victim->facts.in_cache = false;
		victim->scopes_size = (uint16) scopes_size;
		victim->ips_size = (uint16) ips_size;
		if (scopes_size > 0)
			memcpy(victim->data.bytes, DatumGetPointer(facts->scopes), scopes_size);
		if (ips_size > 0)
			memcpy(victim->data.bytes + MAXALIGN(scopes_size),
				   DatumGetPointer(facts->allowed_ips), ips_size);
	}
	LWLockRelease(lock);
}

/*---- Verify path ----*/

/*
 * Drop every entry of the key or plan cache (its context, table and
 * generation).  While a verify holds a pin, the entries it reads must stay
 * where they are: the context is retired, not reset, and the next entry
 * starts a new one.  Runs inside invalidation callbacks, so it allocates
 * nothing.
 */
static void
cache_reset(MemoryContext *cxt, HTAB **table, uint64 *generation)
{
	(*generation)++;
	*table = NULL;
	if (*cxt == NULL)
		return;
	if (cache_pins == 0)
		MemoryContextReset(*cxt);
	else
	{
		MemoryContextSetParent(*cxt, caches_retired);
		*cxt = NULL;
	}
}

#define plan_cache_reset() \
	cache_reset(&plan_cache_cxt, &plan_cache, &plan_cache_generation)
#define key_cache_reset() \
	cache_reset(&key_cache_cxt, &key_cache, &key_cache_generation)

/*
 * The entry for key in the key or plan cache (its context, table and
 * generation), made if new: the table is made on first use (cache_reset
 * must not allocate), and emptied first when it holds max entries.
 */
static void *
cache_enter(MemoryContext *cxt, HTAB **table, uint64 *generation, long max,
			const char *name, Size keysize, Size entrysize, const void *key)
{
	if (*table != NULL && hash_get_num_entries(*table) >= max)
		cache_reset(cxt, table, generation);
	if (caches_retired == NULL)
		caches_retired = AllocSetContextCreate(TopMemoryContext,
											   "flowella retired verify caches",
											   ALLOCSET_SMALL_SIZES);
	if (*cxt == NULL)
	{
		*cxt = AllocSetContextCreate(TopMemoryContext, "flowella verify cache",
									 ALLOCSET_DEFAULT_SIZES);
		MemoryContextSetIdentifier(*cxt, name);
	}
	if (*table == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = keysize;
		info.entrysize = entrysize;
		info.hcxt = *cxt;
		*table = hash_create(name, 256, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	return hash_search(*table, key, HASH_ENTER, NULL);
}

/* Release a pin taken by verify; the last one frees retired caches. */
static void
caches_unpin(void)
{
	Assert(cache_pins > 0);
	if (--cache_pins == 0 && caches_retired != NULL)
		MemoryContextReset(caches_retired);
}

/*
 * A verify that fails leaves its pin behind.  No verify is running when a
 * transaction or subtransaction aborts (verify runs no user code and starts
 * no subtransaction), so the pins are released then; cheaper than a PG_TRY
 * block around every verify.  Until then resets only retire memory.
 */
static void
caches_xact_callback(XactEvent event, void *arg)
{
	/* the shared cache's epochs: see its header */
	if (skc != NULL && (skc_ddl || OidIsValid(skc_keys_changed)))
	{
		if (event == XACT_EVENT_COMMIT)
			skc_invalidate(skc_ddl ? InvalidOid : skc_keys_changed);
		else if (event == XACT_EVENT_PRE_PREPARE)
		{
			SpinLockAcquire(&skc->mutex);
			if (skc->nprepared < SKC_PREPARED_MAX)
				skc->prepared[skc->nprepared++] = GetTopTransactionIdIfAny();
			else
				skc->broken = true;
			SpinLockRelease(&skc->mutex);
			if (skc->broken)
				ereport(LOG,
						(errmsg("flowella_apikey shared key cache turned off"),
						 errdetail("More than %d prepared transactions changed API keys.",
								   SKC_PREPARED_MAX),
						 errhint("Restart the server to use the shared key cache again.")));
			skc_invalidate(InvalidOid);
		}
		if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
			event == XACT_EVENT_PREPARE)
		{
			skc_keys_changed = InvalidOid;
			skc_ddl = false;
		}
	}

	if ((event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) &&
		cache_pins > 0)
	{
		cache_pins = 1;
		caches_unpin();
	}
}

static void
caches_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && cache_pins > 0)
	{
		cache_pins = 1;
		caches_unpin();
	}
}

/*
 * Relcache invalidation callback of the four verify caches.  Until a cache
 * is filled, every invalidation counts: the relations it will hold are not
 * known yet, and the lookup in progress may already have read them.
 */
static void
vrels_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || (vrels.valid && relid == vrels.keys))
		skc_invalidate(relid);

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
	if (relid == InvalidOid || !vrels.valid || relid == vrels.keys)
		key_cache_reset();
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

/* A column of a later version: InvalidAttrNumber when not there yet. */
static AttrNumber
vrels_attnum_since(Oid relid, const char *name)
{
	return get_attnum(relid, name);
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
	r.k_allowed_ips = vrels_attnum_since(r.keys, "allowed_ips");
	r.k_rate_limit = vrels_attnum_since(r.keys, "rate_limit_per_minute");
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
 * cache if there, else read with the latest snapshot.  The result lives in
 * the cache or in CurrentMemoryContext; the caller must hold a pin on the
 * caches for as long as it uses it.
 */
static const FlwlScopeSet *
plan_scopes_of_org(Datum org_id)
{
	PlanCacheEntry *entry;
	uint64		generation = plan_cache_generation;
	Snapshot	snapshot;
	VerifyRels	r;
	Relation	rels[4];
	Datum		plan,
				scopes;
	MemoryContext oldcxt;
	FlwlScopeSet *fresh;

	Assert(cache_pins > 0);
	if (plan_cache != NULL)
	{
		entry = hash_search(plan_cache, DatumGetPointer(org_id), HASH_FIND, NULL);
		if (entry != NULL)
			return &entry->scopes;
	}

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	r = vrels_open(true, rels);
	plan = fetch_column(rels[0], rels[1], F_UUID_EQ, InvalidOid,
						org_id, r.o_plan, snapshot);
	scopes = fetch_column(rels[2], rels[3], F_TEXTEQ,
						  C_COLLATION_OID, plan, r.p_scopes, snapshot);
	for (int i = 3; i >= 0; i--)
		relation_close(rels[i], AccessShareLock);
	UnregisterSnapshot(snapshot);

	/* an invalidation arrived while reading: do not cache what was read */
	if (generation != plan_cache_generation)
	{
		fresh = palloc(sizeof(FlwlScopeSet));
		*fresh = flwl_scope_set(scopes);
		return fresh;
	}

	entry = cache_enter(&plan_cache_cxt, &plan_cache, &plan_cache_generation,
						PLAN_CACHE_MAX_ORGS, "plan cache", sizeof(pg_uuid_t),
						sizeof(PlanCacheEntry), DatumGetPointer(org_id));
	oldcxt = MemoryContextSwitchTo(plan_cache_cxt);
	entry->scopes = flwl_scope_set(datumCopy(scopes, false, -1));
	MemoryContextSwitchTo(oldcxt);
	return &entry->scopes;
}

/*
 * Whether the key cache may hold rows of the keys table, open and locked:
 * its guard and its audit trigger on updates fire for every change, as
 * they do when enabled ALWAYS (1.3 on).  See the key cache's header.
 */
static bool
key_cache_sound(Relation keys)
{
	TriggerDesc *td = keys->trigdesc;
	bool		guard = false;
	bool		audit = false;

	for (int i = 0; td != NULL && i < td->numtriggers; i++)
	{
		const Trigger *t = &td->triggers[i];

		if (t->tgenabled != TRIGGER_FIRES_ALWAYS)
			continue;
		if (strcmp(t->tgname, "api_keys_guard") == 0)
			guard = true;
		else if (strcmp(t->tgname, "api_keys_audit_update") == 0)
			audit = true;
	}
	return guard && audit;
}

/*
 * What verify reads of the key row in slot, as copies in
 * CurrentMemoryContext (detoasting may accept invalidations).
 */
static KeyFacts *
key_facts_of_row(TupleTableSlot *slot, const VerifyRels *r, const char *prefix)
{
	KeyFacts   *facts = palloc0(sizeof(KeyFacts));
	Datum		d;
	bool		isnull;

	memcpy(facts->prefix, prefix, FLWL_PREFIX_LEN);
	d = slot_getattr(slot, r->k_secret_hash, &isnull);
	if (!isnull)
	{
		bytea	   *stored = DatumGetByteaPP(d);

		facts->has_hash = (VARSIZE_ANY_EXHDR(stored) == FLWL_HASH_LEN);
		if (facts->has_hash)
			memcpy(facts->secret_hash, VARDATA_ANY(stored), FLWL_HASH_LEN);
	}
	memcpy(&facts->key_id, DatumGetUUIDP(slot_getattr(slot, r->k_key_id, &isnull)),
		   sizeof(pg_uuid_t));
	memcpy(&facts->org_id, DatumGetUUIDP(slot_getattr(slot, r->k_org_id, &isnull)),
		   sizeof(pg_uuid_t));
	slot_getattr(slot, r->k_revoked_at, &isnull);
	facts->revoked = !isnull;
	d = slot_getattr(slot, r->k_expires_at, &isnull);
	facts->has_expiry = !isnull;
	facts->expires_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = slot_getattr(slot, r->k_scopes, &facts->scopes_null);
	if (!facts->scopes_null)
		facts->scopes = PointerGetDatum(PG_DETOAST_DATUM_COPY(d));

	/* the key's policy: no columns (before 1.3) or NULL, none */
	facts->ips_null = true;
	if (r->k_allowed_ips != InvalidAttrNumber)
	{
		d = slot_getattr(slot, r->k_allowed_ips, &facts->ips_null);
		if (!facts->ips_null)
			facts->allowed_ips = PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
	}
	if (r->k_rate_limit != InvalidAttrNumber)
	{
		d = slot_getattr(slot, r->k_rate_limit, &isnull);
		facts->has_limit = !isnull;
		facts->rate_limit = isnull ? 0 : DatumGetInt32(d);
	}
	return facts;
}

/* Keep facts in the key cache; returns the cached copy. */
static const KeyFacts *
key_cache_put(const KeyFacts *facts)
{
	KeyCacheEntry *entry;
	MemoryContext oldcxt;

	entry = cache_enter(&key_cache_cxt, &key_cache, &key_cache_generation,
						verify_cache_keys, "key cache", FLWL_PREFIX_LEN,
						sizeof(KeyCacheEntry), facts->prefix);
	oldcxt = MemoryContextSwitchTo(key_cache_cxt);
	entry->facts = *facts;
	entry->facts.in_cache = true;
	if (!facts->scopes_null)
		entry->facts.scopes = datumCopy(facts->scopes, false, -1);
	if (!facts->ips_null)
		entry->facts.allowed_ips = datumCopy(facts->allowed_ips, false, -1);
	entry->eff_generation = EFF_NONE;
	entry->eff_memory = NULL;
	MemoryContextSwitchTo(oldcxt);
	return &entry->facts;
}

/*
 * The scopes the key of facts (of org org_id) may use now, from its key
 * cache entry while its plan's have not changed, else worked out from the
 * plan cache (and kept in the entry, if no cache was reset meanwhile:
 * looking the plan up may accept invalidations).  The set may point into
 * either cache, which the caller keeps pinned.
 */
static FlwlScopeSet
key_effective_scopes(const KeyFacts *facts, Datum org_id)
{
	KeyCacheEntry *entry = NULL;
	uint64		key_generation = key_cache_generation;
	uint64		plan_generation = plan_cache_generation;
	FlwlScopeSet effective;
	Size		array_size;
	char	   *memory;

	if (facts->in_cache)
	{
		entry = (KeyCacheEntry *) unconstify(KeyFacts *, facts);
		if (entry->eff_generation == plan_generation)
			return entry->effective;
	}

	effective = flwl_effective_scopes(facts->scopes, facts->scopes_null,
									  plan_scopes_of_org(org_id));
	if (entry == NULL || key_generation != key_cache_generation ||
		plan_generation != plan_cache_generation)
		return effective;

	if (entry->eff_memory != NULL)
		pfree(entry->eff_memory);
	entry->eff_memory = NULL;
	if (!facts->scopes_null)
	{
		/* one chunk: the new array, then its sorted elements */
		array_size = MAXALIGN(VARSIZE(DatumGetPointer(effective.array)));
		memory = MemoryContextAlloc(key_cache_cxt,
									array_size + Max(effective.n, 1) * sizeof(Datum));
		memcpy(memory, DatumGetPointer(effective.array),
			   VARSIZE(DatumGetPointer(effective.array)));
		/* the elements point into the key's scopes, which the entry holds */
		memcpy(memory + array_size, effective.elems, effective.n * sizeof(Datum));
		effective.array = PointerGetDatum(memory);
		effective.elems = (Datum *) (memory + array_size);
		entry->eff_memory = memory;
	}
	entry->effective = effective;
	entry->eff_generation = plan_generation;
	return effective;
}

/*
 * The facts of e, an entry copied out of the shared cache: kept in the
 * backend's key cache while it has room, else copied into
 * CurrentMemoryContext (a full cache is not emptied for a key the shared
 * cache holds anyway).
 */
static const KeyFacts *
key_facts_of_shared(const SharedKeyEntry *e)
{
	KeyFacts	facts = e->facts;
	const char *data = e->data.bytes;
	bool		keep = (key_cache == NULL ||
						hash_get_num_entries(key_cache) < verify_cache_keys);

	if (!keep)
	{
		Size		size = MAXALIGN(e->scopes_size) + e->ips_size;

		data = memcpy(palloc(Max(size, 1)), data, size);
	}
	if (e->scopes_size > 0)
		facts.scopes = PointerGetDatum(data);
	if (e->ips_size > 0)
		facts.allowed_ips = PointerGetDatum(data + MAXALIGN(e->scopes_size));
	if (keep)
		return key_cache_put(&facts);
	return memcpy(palloc(sizeof(KeyFacts)), &facts, sizeof(KeyFacts));
}

/*
 * What verify needs of the key whose prefix (the token's public part,
 * FLWL_PREFIX_LEN bytes) is given, or NULL when no key has it: from the
 * backend's key cache, else from the shared one, else read through the
 * unique prefix index with the latest snapshot and cached (in both) when
 * that is sound and no invalidation arrived while reading.  The caller
 * holds a pin on the caches.
 */
static const KeyFacts *
key_facts(const char *prefix)
{
	uint64		generation = key_cache_generation;
	Snapshot	snapshot;
	VerifyRels	r;
	Relation	rels[2];
	TupleTableSlot *slot;
	KeyFacts   *facts = NULL;
	bool		cacheable;
	bool		shared;
	uint32		hash = 0;
	uint64		epoch = 0;

	Assert(cache_pins > 0);
	if (key_cache != NULL && verify_cache_keys > 0)
	{
		KeyFacts   *entry = hash_search(key_cache, prefix, HASH_FIND, NULL);

		if (entry != NULL)
			return entry;
	}
	shared = skc_usable();
	if (shared)
	{
		SharedKeyEntry found;

		hash = skc_hash(prefix);
		if (skc_get(prefix, hash, &found))
			return key_facts_of_shared(&found);
	}

	r = vrels_open(false, rels);
	cacheable = verify_cache_keys > 0 && key_cache_sound(rels[0]);
	if (shared)
	{
		/* before the snapshot: see the shared cache's header */
		epoch = skc_epoch(r.keys);
		pg_memory_barrier();
	}
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	slot = table_slot_create(rels[0], NULL);
	if (probe_unique(rels[0], rels[1], F_TEXTEQ, C_COLLATION_OID,
					 PointerGetDatum(cstring_to_text_with_len(prefix, FLWL_PREFIX_LEN)),
					 snapshot, slot))
		facts = key_facts_of_row(slot, &r, prefix);
	ExecDropSingleTupleTableSlot(slot);
	relation_close(rels[1], AccessShareLock);
	relation_close(rels[0], AccessShareLock);
	UnregisterSnapshot(snapshot);

	if (facts == NULL || !cacheable)
		return facts;
	if (shared)
		skc_put(facts, hash, r.keys, epoch);
	if (generation != key_cache_generation)
		return facts;
	return key_cache_put(facts);
}

/*
 * A change of a column verify reads in the keys table rel (the audit
 * trigger on updates calls this): every backend's key cache must drop the
 * row.  A relcache invalidation is sent at commit (and dropped on
 * rollback), once the change is visible.
 */
void
flwl_verify_key_changed(Relation rel)
{
	CacheInvalidateRelcacheByRelid(RelationGetRelid(rel));
	if (skc != NULL)
	{
		/* two keys tables in one transaction: bump them all */
		if (OidIsValid(skc_keys_changed) && skc_keys_changed != RelationGetRelid(rel))
			skc_ddl = true;
		skc_keys_changed = RelationGetRelid(rel);
	}
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
			for (int i = 0; i < FLWL_VC_COUNT; i++)
				verify_code_texts[i] = cstring_to_text(flwl_verify_code_names[i]);
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
 * Build the flowella.verification row: six columns, or eight from 1.3 on
 * (rate may be NULL when both are NULL).  scopes may point into the plan
 * cache, which the caller keeps pinned; heap_form_tuple copies it.
 */
static Datum
verification_result(FunctionCallInfo fcinfo, FlwlVerifyCode code, Datum key_id,
					Datum org_id, Datum scopes, bool scopes_null, FlwlMode mode,
					const RateAnswer *rate)
{
	TupleDesc	tupdesc = verification_desc(fcinfo);
	Datum		values[VERIFY_NATTS_1_3];
	bool		nulls[VERIFY_NATTS_1_3];
	bool		known = (key_id != (Datum) 0);

	if (tupdesc->natts != VERIFY_NATTS_1_0 && tupdesc->natts != VERIFY_NATTS_1_3)
		elog(ERROR, "flowella.verification has %d columns, expected %d or %d",
			 tupdesc->natts, VERIFY_NATTS_1_0, VERIFY_NATTS_1_3);

	values[0] = BoolGetDatum(code == FLWL_VC_VALID);
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
	values[6] = Int32GetDatum(rate ? rate->remaining : 0);
	nulls[6] = !(rate && rate->has_remaining);
	values[7] = Int32GetDatum(rate ? rate->retry_after_ms : 0);
	nulls[7] = !(rate && rate->has_retry);

	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * Whether the client address (NULL when not given: denied)
 * lies in one of the networks of a key's allowlist (<<=, so IPv4 and IPv6
 * networks each match only their own family).  The allowlist is read while
 * the caller's slot pins its page; detoasting it may accept invalidations.
 */
static bool
client_ip_allowed(Datum allowed_ips, const inet *client)
{
	ArrayType  *arr;
	Datum	   *nets;
	bool	   *nulls;
	int			n;
	bool		allowed = false;

	if (client == NULL)
		return false;

	arr = DatumGetArrayTypeP(allowed_ips);
	if (ARR_ELEMTYPE(arr) != CIDROID)
		elog(ERROR, "allowed_ips is not a cidr array");
	deconstruct_array(arr, CIDROID, -1, false, TYPALIGN_INT, &nets, &nulls, &n);
	for (int i = 0; i < n && !allowed; i++)
		allowed = !nulls[i] &&
			DatumGetBool(DirectFunctionCall2(network_subeq,
											 InetPGetDatum(unconstify(inet *, client)),
											 nets[i]));
	return allowed;
}

/*
 * apikey_verify(token text, required_scope text [, client_ip inet])
 * returns flowella.verification
 *
 * Order of checks: shape and checksum (MALFORMED, no table access), key by
 * prefix and constant-time hash compare (NOT_FOUND either way, so a guess
 * learns nothing), revoked, expired, scope, the key's IP allowlist
 * (IP_DENIED), then its rate limit (RATE_LIMITED): only a request that
 * passes every other check spends from the key's bucket.  key_id, org_id
 * and mode are returned once the hash matched; scopes from the scope check
 * on.  ratelimit_remaining is set for VALID (when the limiter knows it) and
 * RATE_LIMITED (0) answers of a key with a limit, retry_after_ms for
 * RATE_LIMITED.
 *
 * The key and plan caches stay pinned for the whole call: the key's row
 * is read from one before the plan's scopes are read (which may lock
 * relations) and the result descriptor is looked up, and any of these may
 * reset them.  A pin costs less than copying thousands of scopes on every
 * call.  An error leaves the pin to caches_xact_callback.
 */
Datum
flowella_apikey_verify(PG_FUNCTION_ARGS)
{
	Datum		result;

	cache_pins++;
	result = verify_body(fcinfo);
	caches_unpin();
	return result;
}

/* The body of apikey_verify, run with the key and plan caches pinned. */
static Datum
verify_body(FunctionCallInfo fcinfo)
{
	text	   *token;
	const char *tok;
	size_t		len;
	FlwlMode	mode;
	unsigned char hash[FLWL_HASH_LEN];
	const KeyFacts *facts;
	FlwlVerifyCode code;
	Datum		key_id = (Datum) 0;
	Datum		org_id = (Datum) 0;
	Datum		scopes = (Datum) 0;
	bool		scopes_null = true;
	TimestampTz now = 0;
	RateAnswer	rate = {0};
	text	   *required;
	inet	   *client;

	if (PG_ARGISNULL(0))
		return verification_result(fcinfo, FLWL_VC_MALFORMED, 0, 0, 0, true, 0, NULL);

	/* Anything longer than a token is malformed: do not even detoast it. */
	if (toast_raw_datum_size(PG_GETARG_DATUM(0)) != VARHDRSZ + FLWL_TOKEN_LEN)
		return verification_result(fcinfo, FLWL_VC_MALFORMED, 0, 0, 0, true, 0, NULL);

	token = PG_GETARG_TEXT_PP(0);
	tok = VARDATA_ANY(token);
	len = VARSIZE_ANY_EXHDR(token);
	mode = flwl_token_parse(tok, len);
	if (mode == FLWL_MODE_INVALID)
		return verification_result(fcinfo, FLWL_VC_MALFORMED, 0, 0, 0, true, 0, NULL);

	flwl_token_hash(tok, len, hash);

	/*
	 * The other arguments, detoasted once and before any cache is read (see
	 * the header on invalidations); the third exists from 1.3 on.
	 */
	required = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	client = (PG_NARGS() >= 3 && !PG_ARGISNULL(2)) ? PG_GETARG_INET_PP(2) : NULL;

	/* see key and plan changes committed since the last call, even mid-transaction */
	AcceptInvalidationMessages();

	facts = key_facts(tok);
	if (facts == NULL || !facts->has_hash ||
		sodium_memcmp(facts->secret_hash, hash, FLWL_HASH_LEN) != 0)
		code = FLWL_VC_NOT_FOUND;
	else
	{
		key_id = UUIDPGetDatum(unconstify(pg_uuid_t *, &facts->key_id));
		org_id = UUIDPGetDatum(unconstify(pg_uuid_t *, &facts->org_id));

		now = GetCurrentTimestamp();
		if (facts->revoked)
			code = FLWL_VC_REVOKED;
		else if (facts->has_expiry && facts->expires_at <= now)
			code = FLWL_VC_EXPIRED;
		else
			code = FLWL_VC_VALID;

		if (code == FLWL_VC_VALID)
		{
			FlwlScopeSet effective = key_effective_scopes(facts, org_id);

			scopes = effective.array;
			scopes_null = false;

			if (required != NULL &&
				!flwl_scope_set_has(&effective, PointerGetDatum(required)))
				code = FLWL_VC_INSUFFICIENT_SCOPE;
		}

		if (code == FLWL_VC_VALID && !facts->ips_null &&
			!client_ip_allowed(facts->allowed_ips, client))
			code = FLWL_VC_IP_DENIED;
		if (code == FLWL_VC_VALID && facts->has_limit)
		{
			if (flwl_ratelimit_take(&facts->key_id, facts->rate_limit, now,
									&rate.remaining, &rate.retry_after_ms))
				rate.has_remaining = (rate.remaining >= 0);
			else
			{
				code = FLWL_VC_RATE_LIMITED;
				rate.has_remaining = true;
				rate.remaining = 0;
				rate.has_retry = true;
			}
		}
	}
	sodium_memzero(hash, sizeof(hash));

	/*
	 * Every request of an identified key is counted, whatever its answer
	 * (a VALID one is also the key's last use): shared memory only.
	 */
	if (key_id != (Datum) 0)
		flwl_usage_count(&facts->key_id, now, code, client, required);

	/* a detoasted copy of the token is ours to wipe */
	if ((Pointer) token != DatumGetPointer(PG_GETARG_DATUM(0)))
		sodium_memzero(token, VARSIZE_ANY(token));

	return verification_result(fcinfo, code, key_id, org_id, scopes,
							   scopes_null, mode, &rate);
}
