/*-------------------------------------------------------------------------
 *
 * bucket_test.c
 *		Deterministic property test of the rate limiter's bucket arithmetic
 *		(flowella_bucket.c), built with ASan and UBSan.
 *
 * It checks, over seeded random request sequences, what SPEC §11 and the
 * rate limiter rely on:
 *	- the requests passed in any window [t0, t1] never exceed
 *	  N + N * (t1 - t0) / 60 s (exactly, in integers), whatever the limit and
 *	  the gaps, and with "now" lagging a little behind (concurrent takes);
 *	- offered steadily above the limit, they get at least 95 % of it (and
 *	  in fact all of it but two requests);
 *	- a refused request has retry_after_ms > 0, a request that much later
 *	  passes and one a millisecond earlier does not;
 *	- remaining counts down N - 1, N - 2, ..., 0 for requests at one instant;
 *	- forgetting a bucket once it has been full for the eviction margin
 *	  changes no answer, across limit changes too;
 *	- a clock stepped back a little refills nothing, a big step back does
 *	  not freeze the bucket.
 * Exits non-zero with a message on the first failure.
 *
 *-------------------------------------------------------------------------
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "../flowella_bucket.h"

#define U			FLWL_BUCKET_UNIT
#define SECOND		INT64_C(1000000)
#define MARGIN		SECOND		/* RATELIMIT_EVICT_MARGIN */
#define START		INT64_C(849000000000000)	/* a 2026 TimestampTz */

static uint64_t rng_state = 0x5eed0f10e11aULL;

/* splitmix64: deterministic, good enough for test inputs */
static uint64_t
rng(void)
{
	uint64_t	z = (rng_state += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* uniform in [lo, hi] */
static int64_t
between(int64_t lo, int64_t hi)
{
	return lo + (int64_t) (rng() % (uint64_t) (hi - lo + 1));
}

static int32_t
random_limit(void)
{
	switch (rng() % 6)
	{
		case 0:
			return 1;
		case 1:
			return 1000000;
		case 2:
			return (int32_t) between(1, 10);
		case 3:
			return (int32_t) between(10, 1000);
		default:
			return (int32_t) between(1, 1000000);
	}
}

static void
fail(const char *what, int64_t a, int64_t b)
{
	fprintf(stderr, "bucket_test: %s (%" PRId64 ", %" PRId64 ")\n", what, a, b);
	exit(1);
}

/*
 * The window bound, for requests passed at times t_k (k = 0, 1, ...): for
 * i <= j, (j - i + 1) * U <= N * U + N * (t_j - t_i) + slack.  With
 * g(k) = k * U - N * t_k that is g(j) - g(i) <= (N - 1) * U + slack, so one
 * pass keeping the minimum of g checks every window.  slack (units) allows
 * for "now" lagging behind the bucket's time.
 */
typedef struct WindowCheck
{
	int64_t		n;				/* requests passed so far */
	int64_t		min_g;
	int32_t		limit;
	int64_t		slack;
} WindowCheck;

static void
window_start(WindowCheck *w, int32_t limit, int64_t slack)
{
	w->n = 0;
	w->min_g = INT64_MAX;
	w->limit = limit;
	w->slack = slack;
}

static void
window_pass(WindowCheck *w, int64_t t)
{
	/* t - START keeps N * t inside int64 */
	int64_t		g = w->n * U - (int64_t) w->limit * (t - START);

	if (g < w->min_g)
		w->min_g = g;
	if (g - w->min_g > (int64_t) (w->limit - 1) * U + w->slack)
		fail("more requests passed in a window than N + N*t/60", w->n, w->limit);
	w->n++;
}

/* Upper bound: random gaps and bursts, limit changes, lagging "now"s. */
static void
test_upper_bound(int rounds)
{
	for (int r = 0; r < rounds; r++)
	{
		FlwlBucket	b;
		WindowCheck w;
		int32_t		limit = random_limit();
		int64_t		now = START + between(0, SECOND);
		int64_t		latest = now;
		int64_t		lag_max = rng() % 2 ? 0 : between(1, 2000);
		int			steps = (int) between(100, 3000);

		flwl_bucket_init(&b, limit, now);
		/* a lag of L us lets up to N * L units through early */
		window_start(&w, limit, (int64_t) limit * lag_max);
		for (int i = 0; i < steps; i++)
		{
			int32_t		remaining;
			int32_t		retry;
			int64_t		t;

			switch (rng() % 8)
			{
				case 0:
					now += between(0, 90 * SECOND); /* idle, maybe long */
					break;
				case 1:
					if (rng() % 8 == 0)
					{
						/* a new limit: the bound starts over, from a full bucket */
						limit = random_limit();
						window_start(&w, limit, (int64_t) limit * lag_max);
					}
					break;
				default:
					now += between(0, 3 * U / limit);	/* busy */
					break;
			}
			if (now > latest)
				latest = now;
			t = lag_max ? latest - between(0, lag_max) : latest;
			if (flwl_bucket_take(&b, limit, t, &remaining, &retry))
			{
				if (remaining < 0 || remaining > limit - 1 || retry != 0)
					fail("bad answer when passed", remaining, retry);
				window_pass(&w, latest);
			}
			else if (remaining != 0 || retry <= 0 || retry > 120000)
				fail("bad answer when refused", remaining, retry);
		}
	}
}

/*
 * Lower bound: offered steadily at or above the limit (gaps below 60 s / N)
 * for a random span.  Before a request the bucket holds less than one
 * request more than after the previous one, so for N >= 2 it is never full
 * again after the first request and loses no refill: every request passes
 * until one is refused, and from then on less than one request is left
 * after each.  So all offered pass, or all of the bound but less than one,
 * and when more than the bound is offered at least 95 % of it passes (for
 * a bound of 20 requests or more: below that, a fraction of a request is
 * more than 5 %).  A bucket of capacity 1 (N = 1) can be full before a
 * request and lose up to one gap's refill each time it passes: for it the
 * 95 % needs requests at least every 3 s (offered 20 times the limit).
 */
static void
test_lower_bound(int rounds)
{
	static const int64_t powers_of_ten[] = {1, 10, 100, 1000, 10000, 100000};
	int			saturated = 0;

	for (int r = 0; r < rounds; r++)
	{
		FlwlBucket	b;
		int32_t		limit = (int32_t) between(1, powers_of_ten[between(0, 5)]);
		int64_t		gap_limit = U / limit > 1 ? U / limit - 1 : 1;
		int64_t		span = between(SECOND, 600 * SECOND);
		int64_t		gap_min;
		int64_t		gap_max;
		int64_t		first = START;
		int64_t		now = first;
		int64_t		passed = 0;
		int64_t		offered = 0;
		int64_t		bound_units;

		/* at most about 100 000 requests a run */
		if (span / 50000 > gap_limit)
			span = gap_limit * 50000;
		gap_min = span / 50000 > 1 ? span / 50000 : 1;
		/* half the runs offer at least 8 N a minute */
		if (rng() % 2 && gap_limit / 8 > gap_min)
			gap_limit /= 8;
		gap_max = between(gap_min, gap_limit);
		flwl_bucket_init(&b, limit, now);
		for (;;)
		{
			int32_t		remaining;
			int32_t		retry;

			offered++;
			if (flwl_bucket_take(&b, limit, now, &remaining, &retry))
				passed++;
			if (now - first >= span)
				break;
			now += between(1, gap_max);
		}
		bound_units = (int64_t) limit * U + (int64_t) limit * (now - first);
		if (passed * U > bound_units)
			fail("steady run passed more than the bound", passed, limit);
		if (passed != offered &&
			passed * U <= bound_units - U - (limit == 1 ? passed * gap_max : 0))
			fail("steady demand got less than the bound but one", passed, limit);
		if (offered * U >= 2 * bound_units)
			saturated++;
		if (offered * U >= bound_units && bound_units >= 20 * U &&
			passed * U * 100 < bound_units * 95)
			fail("steady demand got less than 95% of the bound", passed, limit);
	}
	if (saturated < rounds / 10)
		fail("too few runs offered twice the bound", saturated, rounds);
}

/* retry_after_ms is exact to the millisecond; remaining counts down. */
static void
test_retry_and_remaining(int rounds)
{
	for (int r = 0; r < rounds; r++)
	{
		FlwlBucket	b;
		int32_t		limit = rng() % 2 ? (int32_t) between(1, 20) : random_limit();
		int64_t		now = START + between(0, 1000 * SECOND);
		int32_t		remaining;
		int32_t		retry;
		int32_t		n = limit < 5000 ? limit : 5000;

		flwl_bucket_init(&b, limit, now);
		for (int32_t k = 1; k <= n; k++)
		{
			if (!flwl_bucket_take(&b, limit, now, &remaining, &retry))
				fail("refused inside the burst", k, limit);
			if (remaining != limit - k)
				fail("remaining does not count down", remaining, limit - k);
		}
		if (n < limit)
			continue;

		for (int i = 0; i < 50; i++)
		{
			FlwlBucket	later;
			FlwlBucket	earlier;
			int32_t		r2;
			int32_t		t2;

			now += between(0, 2 * U / limit);
			if (flwl_bucket_take(&b, limit, now, &remaining, &retry))
				continue;
			later = b;
			if (!flwl_bucket_take(&later, limit, now + retry * INT64_C(1000), &r2, &t2))
				fail("refused after waiting retry_after_ms", retry, limit);
			earlier = b;
			if (retry > 1 &&
				flwl_bucket_take(&earlier, limit, now + (retry - 1) * INT64_C(1000), &r2, &t2))
				fail("retry_after_ms is not the first millisecond that passes", retry, limit);
		}
	}
}

/*
 * Both roundings up of retry_after_ms matter: a bucket of 7 a minute,
 * drained, 8 570 428 us later lacks 7 004 units, 1 000.57 us of refill:
 * 2 ms, not 1.
 */
static void
test_retry_rounding(void)
{
	FlwlBucket	b;
	int32_t		remaining;
	int32_t		retry;

	flwl_bucket_init(&b, 7, START);
	for (int i = 0; i < 7; i++)
		(void) flwl_bucket_take(&b, 7, START, &remaining, &retry);
	if (flwl_bucket_take(&b, 7, START + 8570428, &remaining, &retry) || retry != 2)
		fail("retry_after_ms rounds the missing microseconds up", retry, 2);
}

/*
 * Forgetting a bucket full for MARGIN (the rate limiter's sweep) changes no
 * answer: a shadow bucket that is forgotten whenever it may be answers
 * exactly like one that never is, across limit changes, with "now"s that lag
 * behind the sweeper's by less than MARGIN.
 */
static void
test_eviction_invisible(int rounds)
{
	for (int r = 0; r < rounds; r++)
	{
		FlwlBucket	kept;
		FlwlBucket	shadow;
		bool		kept_present = false;
		bool		shadow_present = false;
		int32_t		limit = random_limit();
		int64_t		latest = START;
		int			steps = (int) between(100, 2000);
		int			evictions = 0;

		for (int i = 0; i < steps; i++)
		{
			int32_t		rk, tk, rs, ts;
			bool		ak, as;
			int64_t		t;

			if (rng() % 10 == 0)
				latest += between(0, 70 * SECOND);
			else
				latest += between(0, 2 * U / limit);
			if (rng() % 20 == 0)
				limit = random_limit();

			/* the sweeper, at the latest time, forgets a bucket full for MARGIN */
			if (shadow_present && rng() % 2 &&
				flwl_bucket_full_at(&shadow) <= latest - MARGIN)
			{
				shadow_present = false;
				evictions++;
			}

			t = latest - between(0, MARGIN - 1);
			if (!kept_present)
			{
				flwl_bucket_init(&kept, limit, t);
				kept_present = true;
			}
			if (!shadow_present)
			{
				flwl_bucket_init(&shadow, limit, t);
				shadow_present = true;
			}
			ak = flwl_bucket_take(&kept, limit, t, &rk, &tk);
			as = flwl_bucket_take(&shadow, limit, t, &rs, &ts);
			if (ak != as || rk != rs || tk != ts)
				fail("a forgotten bucket answers differently", i, evictions);
		}
	}
}

/* Clock steps back: a small one refills nothing, a big one does not freeze. */
static void
test_clock_steps(void)
{
	FlwlBucket	b;
	int32_t		limit = 60;		/* one a second */
	int32_t		remaining;
	int32_t		retry;
	int64_t		now = START;
	int			passed = 0;

	flwl_bucket_init(&b, limit, now);
	while (flwl_bucket_take(&b, limit, now, &remaining, &retry))
		passed++;
	if (passed != limit)
		fail("burst is not the limit", passed, limit);

	/* back 30 s, then forward to the original time: nothing refilled */
	if (flwl_bucket_take(&b, limit, now - 30 * SECOND, &remaining, &retry))
		fail("a small step back refilled", 0, 0);
	if (retry < 30 * 1000 || retry > 31 * 1000)
		fail("retry after a small step back counts from the bucket's time", retry, 0);
	if (flwl_bucket_take(&b, limit, now, &remaining, &retry))
		fail("time repeated after a small step back refilled", 0, 0);

	/* back an hour: believed; a minute later the bucket is full again */
	now -= 3600 * SECOND;
	if (flwl_bucket_take(&b, limit, now, &remaining, &retry))
		fail("a big step back refilled", 0, 0);
	if (retry <= 0 || retry > 1000)
		fail("retry after a big step back is from the new time", retry, 0);
	now += U;
	passed = 0;
	while (flwl_bucket_take(&b, limit, now, &remaining, &retry))
		passed++;
	if (passed != limit)
		fail("a minute after a big step back the bucket is not full", passed, limit);
}

/* A lowered limit clamps to its capacity; a raised one adds its burst. */
static void
test_limit_change(void)
{
	FlwlBucket	b;
	int32_t		remaining;
	int32_t		retry;
	int64_t		now = START;

	flwl_bucket_init(&b, 100, now);
	for (int i = 0; i < 10; i++)
		(void) flwl_bucket_take(&b, 100, now, &remaining, &retry);
	if (remaining != 90)
		fail("remaining after 10 of 100", remaining, 90);
	if (!flwl_bucket_take(&b, 5, now, &remaining, &retry) || remaining != 4)
		fail("lowered to 5: at most 5 left", remaining, 4);
	if (!flwl_bucket_take(&b, 50, now, &remaining, &retry) || remaining != 48)
		fail("raised to 50 with 2 spent: 48 left", remaining, 48);
	if (flwl_bucket_full_at(&b) != now + 2 * U / 50)
		fail("full again when the 2 spent refill at the new rate",
			 flwl_bucket_full_at(&b) - now, 2 * U / 50);
}

int
main(void)
{
	test_clock_steps();
	test_limit_change();
	test_retry_rounding();
	test_retry_and_remaining(2000);
	test_lower_bound(2000);
	test_upper_bound(2000);
	test_eviction_invisible(2000);
	printf("bucket_test: all properties hold\n");
	return 0;
}
