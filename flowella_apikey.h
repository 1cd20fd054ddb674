/*-------------------------------------------------------------------------
 *
 * flowella_apikey.h
 *		What the C files of flowella_apikey share, by the file that
 *		provides it: the request context set by set_actor, the marker of
 *		an API call in progress and the search_path pin (flowella_apikey.c);
 *		saved queries (flowella_manage.c); scope sets, the scope-list rule
 *		and names in messages (flowella_scopes.c); the stored-label check
 *		and the key policy rule (flowella_check.c); each subsystem's
 *		set-up, called by _PG_init.
 *
 * The token codec and the validators that need no backend are in
 * flowella_token.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWELLA_APIKEY_H
#define FLOWELLA_APIKEY_H

#include "fmgr.h"
#include "miscadmin.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/inet.h"
#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* The acting user of the current transaction, or NULL when none is set. */
extern const pg_uuid_t *flwl_actor_user(void);

/*
 * Run an SQL API function's body with the "inside the API" marker raised,
 * so that triggers can tell an API change from a restore.
 */
extern Datum flwl_run_api(FunctionCallInfo fcinfo, PGFunction body);

/* Report 42501 unless an actor is set; returns it. */
extern const pg_uuid_t *flwl_require_actor(void);

/* Report 22023, naming field, when argument argno is NULL (flowella_manage.c). */
extern void flwl_require_arg(FunctionCallInfo fcinfo, int argno, const char *field);

/* The client IP and traceparent given to set_actor, or NULL. */
extern const inet *flwl_actor_ip(void);
extern const text *flwl_actor_traceparent(void);

/*
 * Whether a row being written comes from a restore or a bulk load rather
 * than from the API (see flowella_apikey.c).
 */
extern bool flwl_change_is_restore(void);

/*
 * search_path for every query the extension runs: pg_catalog (and temporary
 * relations last), the value the SECURITY DEFINER API functions pin with SET.
 * flwl_pin_search_path sets it until flwl_unpin_search_path(its result); an
 * error in between is undone by the (sub)transaction abort.
 */
#define FLWL_SEARCH_PATH	"pg_catalog, pg_temp"

extern int	flwl_pin_search_path(void);
extern void flwl_unpin_search_path(int nestlevel);

/*
 * A query prepared on first use and kept for the life of the backend; the
 * plan cache re-plans it by itself if the tables change under it.  Every
 * name in sql is schema-qualified.  flwl_query_exec runs it inside an SPI
 * connection and returns the SPI result code (errors are raised);
 * flwl_query_plan gives the saved plan, for callers that run it otherwise
 * (a cursor, another snapshot) with search_path pinned themselves.
 */
typedef struct FlwlQuery
{
	const char *sql;
	int			nargs;
	Oid			argtypes[16];
	SPIPlanPtr	plan;
} FlwlQuery;

extern int	flwl_query_exec(FlwlQuery *q, Datum *values, const char *nulls,
							bool read_only, long count);
extern SPIPlanPtr flwl_query_plan(FlwlQuery *q);

#if PG_VERSION_NUM < 150000
/* PostgreSQL 15's, for 13 and 14 (flowella_apikey.c) */
extern void InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags);
#endif

/* Scope sets and names in messages (flowella_scopes.c) */

/* A copy of s fit to quote in a message: token-shaped runs redacted. */
extern char *flwl_quotable(const char *s, size_t len);

/* Lists of quoted names in messages: the first ten, then "and N more". */
#define FLWL_MESSAGE_MAX_NAMES	10

extern void flwl_append_name(StringInfo buf, int *listed, text *name);
extern void flwl_finish_name_list(StringInfo buf, int listed);

/* What is wrong with a scope list, or NULL (see flowella_scopes.c). */
#define FLWL_SCOPES_NOT_EMPTY	0x01	/* an empty list is wrong */
#define FLWL_SCOPES_NAMES		0x02	/* so is a malformed name */

extern const char *flwl_scope_array_problem(ArrayType *arr, int flags,
											Datum **elems, int *n);

/* A text[] of scope names with its elements sorted, see flwl_scope_set. */
typedef struct FlwlScopeSet
{
	Datum		array;			/* the text[] itself */
	Datum	   *elems;			/* its non-NULL elements, sorted */
	int			n;
} FlwlScopeSet;

extern int	flwl_text_datum_cmp(const void *a, const void *b);
extern FlwlScopeSet flwl_scope_set(Datum scopes);
extern bool flwl_scope_set_has(const FlwlScopeSet *set, Datum scope);

/*
 * The scopes a key may use now: its own (all of the plan's when NULL) that
 * the plan still offers; the array keeps the key's order.
 */
extern FlwlScopeSet flwl_effective_scopes(Datum key_scopes, bool key_scopes_null,
										  const FlwlScopeSet *plan);

/*
 * What is wrong with a label or organisation name as stored (in the
 * database encoding), or NULL (flowella_check.c).
 */
extern const char *flwl_label_text_problem(text *t);

/*
 * What is wrong with a key's IP allowlist or rate limit (both non-NULL:
 * NULL is no restriction), or NULL (flowella_check.c).
 */
#define FLWL_RATE_LIMIT_MAX		1000000

extern const char *flwl_allowed_ips_problem(ArrayType *arr);
extern const char *flwl_rate_limit_problem(int32 limit);

/*
 * The verify path (flowella_verify.c); flwl_verify_key_changed tells every
 * backend's key cache, at commit, that a key row verify reads has changed.
 */
extern void flwl_verify_init(void);
extern void flwl_verify_shmem_request(void);
extern void flwl_verify_shmem_startup(void);
extern void flwl_verify_key_changed(Relation rel);

/*
 * Outcome codes of apikey_verify (flowella_verify.c), in the order its
 * checks run; flwl_verify_code_names holds their names.  The usage pipeline
 * counts by the same codes.
 */
typedef enum FlwlVerifyCode
{
	FLWL_VC_VALID,
	FLWL_VC_MALFORMED,
	FLWL_VC_NOT_FOUND,
	FLWL_VC_REVOKED,
	FLWL_VC_EXPIRED,
	FLWL_VC_INSUFFICIENT_SCOPE,
	FLWL_VC_IP_DENIED,
	FLWL_VC_RATE_LIMITED
} FlwlVerifyCode;

#define FLWL_VC_COUNT	(FLWL_VC_RATE_LIMITED + 1)

extern const char *const flwl_verify_code_names[FLWL_VC_COUNT];

/*
 * A key in one database: the hash key of the shared per-key tables (last
 * uses, rate-limit buckets), whose memory every database shares.  Zeroed
 * before it is filled (HASH_BLOBS compares the padding too).
 */
typedef struct FlwlDbKey
{
	Oid			dbid;
	pg_uuid_t	key_id;
} FlwlDbKey;

static inline void
flwl_db_key_set(FlwlDbKey *key, const pg_uuid_t *key_id)
{
	memset(key, 0, sizeof(*key));
	key->dbid = MyDatabaseId;
	memcpy(&key->key_id, key_id, sizeof(pg_uuid_t));
}

/*
 * The usage pipeline (flowella_usage.c): flwl_usage_count counts one
 * request of a key that verify identified, answered with code,
 * in its per-minute bucket by client IP and required scope (NULL when not
 * given), and notes a VALID one as the key's last use.  No table write, no
 * lock wait, no palloc.
 */
extern void flwl_usage_init(void);
extern void flwl_usage_shmem_request(void);
extern void flwl_usage_shmem_startup(void);
extern void flwl_usage_count(const pg_uuid_t *key_id, TimestampTz when,
							 FlwlVerifyCode code, const inet *client_ip,
							 const text *scope);

/*
 * Usage counted on a hot standby goes to the primary in batches
 * (flowella_usage.c keeps them, flowella_forward.c carries them): a batch
 * is known by the source (one run of the standby's server) and its number,
 * and its arrays are usage_submit's arguments after those two.
 */
#define FLWL_BATCH_ARRAYS	8

typedef struct FlwlUsageBatch
{
	pg_uuid_t	source;
	int64		number;
	Datum		arrays[FLWL_BATCH_ARRAYS];
	bool		more;			/* what was pending may not all be in it */
	void	   *taken;			/* flowella_usage.c's record of what it sent */
} FlwlUsageBatch;

extern char *flwl_usage_primary_conninfo;
extern bool flwl_usage_batch_next(Oid dbid, bool with_uses, FlwlUsageBatch *batch);
extern void flwl_usage_batch_done(FlwlUsageBatch *batch);
extern void *flwl_usage_read_submission(Datum *arrays);
extern void flwl_usage_write_submission(void *submission);
extern bool flwl_forward_round(Oid dbid, bool regular, const char *conninfo);

/*
 * Per-key rate limits (flowella_ratelimit.c): a token bucket per key in
 * this server's shared memory, of capacity limit_per_minute, refilled at
 * limit_per_minute per minute.  flwl_ratelimit_take spends one request of
 * the key's bucket in the current database (limit_per_minute in
 * 1 .. 1 000 000, as the table keeps it; now from GetCurrentTimestamp):
 *	- true when it may pass, with *remaining the whole requests left after
 *	  it (>= 0) and *retry_after_ms 0;
 *	- false when it may not (RATE_LIMITED), with *remaining 0 and
 *	  *retry_after_ms (> 0) the wait until one would pass;
 *	- true with *remaining = -1 ("unknown": the caller answers NULL) when no
 *	  bucket limits it: without shared_preload_libraries (no shared memory,
 *	  so no limit is enforced at all), or when more keys than
 *	  flowella.ratelimit_max_keys are being spent at once on this server.
 * It never writes a table; a key with a bucket costs one hash probe under
 * a shared lock and a spinlock, with no allocation and no system call.
 * apikey_verify calls it once every other check has passed; a request
 * refused, for any reason, spends nothing.
 */
extern void flwl_ratelimit_init(void);
extern void flwl_ratelimit_shmem_request(void);
extern void flwl_ratelimit_shmem_startup(void);
extern bool flwl_ratelimit_take(const pg_uuid_t *key_id, int32 limit_per_minute,
								TimestampTz now, int32 *remaining,
								int32 *retry_after_ms);

/*
 * The link from a hot standby to its primary (flowella_forward.c): each
 * call waits on the latch, honours interrupts and gives up with an ERROR
 * after a bounded time.  The connection is closed by flwl_link_close, also
 * when a call raised.
 */
struct pg_conn;					/* libpq's PGconn */
extern struct pg_conn *flwl_link_open(const char *conninfo, const char *dbname);
extern char *flwl_link_query(struct pg_conn *conn, const char *sql, int nparams,
							 const char *const *values);
extern void flwl_link_close(struct pg_conn *conn);

/* Log redaction (flowella_redact.c) */
extern void flwl_redact_init(void);

#endif							/* FLOWELLA_APIKEY_H */
