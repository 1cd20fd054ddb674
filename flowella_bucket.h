/*-------------------------------------------------------------------------
 *
 * flowella_bucket.h
 *		The arithmetic of one rate-limit token bucket: capacity N requests,
 *		refilled continuously at N per minute.
 *
 * Nothing here depends on the PostgreSQL backend: the rate limiter
 * (flowella_ratelimit.c) keeps one FlwlBucket per key in shared memory under
 * its own locks, and the test harness (fuzz/bucket_test.c) drives the same
 * code.  Integers only, so that nothing drifts.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWELLA_BUCKET_H
#define FLOWELLA_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Units.  Time is in microseconds (as TimestampTz).  One request costs
 * FLWL_BUCKET_UNIT units and a bucket of limit N refills N units per
 * microsecond: N requests per minute, exactly, with no remainder to round.
 * A bucket holds at most N * FLWL_BUCKET_UNIT units (6e13 for N = 1e6; any
 * positive int32 N stays far inside int64).
 */
#define FLWL_BUCKET_UNIT		INT64_C(60000000)	/* microseconds a minute */

/*
 * A bucket is kept as its deficit: the units missing from a full bucket at
 * time stamp.  A full bucket is deficit 0, whatever the limit, so a bucket
 * that is full needs no state at all: "absent" and "full" answer alike.
 */
typedef struct FlwlBucket
{
	int64_t		deficit;		/* 0 .. limit * FLWL_BUCKET_UNIT */
	int64_t		stamp;			/* when deficit was computed (us) */
	int32_t		limit;			/* requests per minute it refills at */
} FlwlBucket;

/*
 * A clock that steps back by more than this (us) is believed: the bucket
 * goes on from the new time.  A smaller step back (a request whose "now"
 * was read before a concurrent one took the bucket) refills nothing.
 */
#define FLWL_BUCKET_CLOCK_STEP	FLWL_BUCKET_UNIT

/* A full bucket of limit, at now. */
extern void flwl_bucket_init(FlwlBucket *b, int32_t limit, int64_t now);

/*
 * Spend one request of b at now under limit (>= 1).  Returns true if it may
 * pass; *remaining is then the whole requests left after it (0 when it may
 * not).  When it may not, *retry_after_ms (> 0) is the wait from now after
 * which a request would pass if none other came; 0 when it may.
 */
extern bool flwl_bucket_take(FlwlBucket *b, int32_t limit, int64_t now,
							 int32_t *remaining, int32_t *retry_after_ms);

/*
 * The earliest time at which b is full again if no request comes (its
 * stamp when it is full already).  A bucket with full_at <= t is full at
 * any time from t on, under any limit.
 */
extern int64_t flwl_bucket_full_at(const FlwlBucket *b);

#endif							/* FLOWELLA_BUCKET_H */
