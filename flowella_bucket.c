/*-------------------------------------------------------------------------
 *
 * flowella_bucket.c
 *		One token bucket of the rate limiter: refill, spend one request,
 *		say when it is full again.
 *
 * Exact by construction: a bucket of limit N gains N units per microsecond
 * and a request costs FLWL_BUCKET_UNIT (the microseconds of a minute), so
 * the units gained between two times t0 < t1 are N * (t1 - t0), the
 * requests they pay for N * (t1 - t0) / 60 s, with nothing rounded away.
 * A bucket starts full (N requests), so the requests that pass between t0
 * and t1 never exceed N + N * (t1 - t0) / 60 s; and since a bucket only
 * loses refill by being full, a steady demand above N per minute gets all
 * of it but the fraction of one request.
 *
 * Time only moves forward for a bucket: a request whose "now" is behind the
 * bucket's stamp (read before a concurrent request took the bucket, or a
 * clock stepped back a little) refills nothing and leaves the stamp where
 * it is, so no interval is ever refilled twice and the bound above holds
 * for the latest time the bucket has seen.  One exception: a step back of
 * more than FLWL_BUCKET_CLOCK_STEP is believed and the stamp moves back to
 * it, for a clock set back an hour must not freeze every key's refill for
 * an hour.  The bucket then refills by real time as before; only the
 * clock's readings repeat.
 *
 * A changed limit (N to M): the refill up to now is at N, the rate in force
 * until the request that brings M; then a lowered limit keeps the whole
 * requests left but at most M (clamped to the new capacity), and a raised
 * one keeps the requests spent, so its extra burst is there at once.
 * Either way a full bucket stays full, so the answers do not depend on
 * whether the rate limiter forgot a full bucket (see flwl_bucket_full_at),
 * and the bucket never holds more than the limit in force.
 *
 *-------------------------------------------------------------------------
 */
#include "flowella_bucket.h"

/*
 * Bring b's deficit up to now at the bucket's own rate.  Differences of
 * times are taken unsigned: well defined for any two int64 values.
 */
static void
bucket_refill(FlwlBucket *b, int64_t now)
{
	if (now >= b->stamp)
	{
		uint64_t	elapsed = (uint64_t) now - (uint64_t) b->stamp;

		/* a minute refills any bucket; below that, no overflow */
		if (elapsed >= (uint64_t) FLWL_BUCKET_UNIT)
			b->deficit = 0;
		else
		{
			int64_t		refill = (int64_t) elapsed * b->limit;

			b->deficit = refill >= b->deficit ? 0 : b->deficit - refill;
		}
		b->stamp = now;
	}
	else if ((uint64_t) b->stamp - (uint64_t) now > (uint64_t) FLWL_BUCKET_CLOCK_STEP)
		b->stamp = now;
}

void
flwl_bucket_init(FlwlBucket *b, int32_t limit, int64_t now)
{
	b->deficit = 0;
	b->stamp = now;
	b->limit = limit;
}

bool
flwl_bucket_take(FlwlBucket *b, int32_t limit, int64_t now,
				 int32_t *remaining, int32_t *retry_after_ms)
{
	int64_t		capacity = (int64_t) limit * FLWL_BUCKET_UNIT;
	int64_t		need;
	int64_t		wait_us;

	bucket_refill(b, now);
	if (limit < b->limit)
	{
		/* the left (capacity at the old limit - deficit), at most capacity */
		int64_t		cut = ((int64_t) b->limit - limit) * FLWL_BUCKET_UNIT;

		b->deficit = b->deficit > cut ? b->deficit - cut : 0;
	}
	b->limit = limit;

	if (b->deficit + FLWL_BUCKET_UNIT <= capacity)
	{
		b->deficit += FLWL_BUCKET_UNIT;
		*remaining = (int32_t) ((capacity - b->deficit) / FLWL_BUCKET_UNIT);
		*retry_after_ms = 0;
		return true;
	}

	/*
	 * Refused.  The units still missing for one request come in at limit a
	 * microsecond, from the stamp (later than now only for a "now" a little
	 * behind, see bucket_refill): round up twice, so that a request at
	 * now + *retry_after_ms passes.  At most two minutes.
	 */
	need = b->deficit + FLWL_BUCKET_UNIT - capacity;
	wait_us = (need + limit - 1) / limit;
	if (now < b->stamp)
		wait_us += b->stamp - now;
	*remaining = 0;
	*retry_after_ms = (int32_t) ((wait_us + 999) / 1000);
	return false;
}

int64_t
flwl_bucket_full_at(const FlwlBucket *b)
{
	return b->stamp + (b->deficit + b->limit - 1) / b->limit;
}
