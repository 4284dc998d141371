/* Per-client limits: the token bucket against an injected clock, and the
 * shared (client, name) table: max_conns, independence of names, reclaiming
 * idle entries, and concurrent acquire/release. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <pthread.h>
#include <stdatomic.h>
#include <cmocka.h>

#include "limit.h"

static struct sluice_client_cfg limits_cfg(uint32_t max_conns, uint32_t rate, uint32_t burst)
{
	struct sluice_client_cfg c;

	memset(&c, 0, sizeof(c));
	c.kind = SLUICE_ID_ANY;
	c.max_conns = max_conns;
	c.conn_rate = rate;
	c.conn_burst = burst;
	return c;
}

/* --- token bucket ------------------------------------------------------ */

static void test_bucket_burst_then_refusal(void **state)
{
	struct sluice_bucket b;
	int i;

	(void)state;
	sluice_bucket_init(&b, 10, 5, 1000);
	assert_true(sluice_bucket_full(&b, 1000));
	for (i = 0; i < 5; i++)
		if (!sluice_bucket_take(&b, 1000))
			fail_msg("take %d of a burst of 5 refused", i + 1);
	assert_false(sluice_bucket_take(&b, 1000));
	assert_false(sluice_bucket_take(&b, 1000));     /* refusals cost nothing */
	assert_false(sluice_bucket_full(&b, 1000));
	/* 10/s: one token per 100 ms exactly. */
	assert_false(sluice_bucket_take(&b, 1099));
	assert_true(sluice_bucket_take(&b, 1100));
	assert_false(sluice_bucket_take(&b, 1100));
	/* Refill stops at burst: after 10 s idle, still only 5. */
	for (i = 0; i < 5; i++)
		assert_true(sluice_bucket_take(&b, 11100));
	assert_false(sluice_bucket_take(&b, 11100));
}

static void test_bucket_refill_exact_at_boundaries(void **state)
{
	struct sluice_bucket b;

	(void)state;
	/* 1/s, burst 1: the next token at exactly +1000 ms, not a ms before. */
	sluice_bucket_init(&b, 1, 1, 0);
	assert_true(sluice_bucket_take(&b, 0));
	assert_false(sluice_bucket_take(&b, 999));
	assert_true(sluice_bucket_take(&b, 1000));
	assert_false(sluice_bucket_take(&b, 1999));
	assert_true(sluice_bucket_take(&b, 2000));

	/* 3/s: 333.3 ms per token; below the cap, fractions carry over. */
	sluice_bucket_init(&b, 3, 3, 0);
	assert_true(sluice_bucket_take(&b, 0));
	assert_true(sluice_bucket_take(&b, 0));
	assert_true(sluice_bucket_take(&b, 0));
	assert_false(sluice_bucket_take(&b, 333));      /* 999 milli-tokens */
	assert_true(sluice_bucket_take(&b, 334));       /* 1002 */
	assert_false(sluice_bucket_take(&b, 666));      /* 2 + 996 = 998 */
	assert_true(sluice_bucket_take(&b, 667));       /* 1001 */
	assert_true(sluice_bucket_take(&b, 1000));      /* 1 + 999 = 1000 */
	assert_false(sluice_bucket_take(&b, 1000));
	/* At the cap the excess is dropped: burst 1 full at 334 ms holds 1000,
	 * not 1002, so the next token needs another full 333.4 ms. */
	sluice_bucket_init(&b, 3, 1, 0);
	assert_true(sluice_bucket_take(&b, 0));
	assert_true(sluice_bucket_take(&b, 334));
	assert_false(sluice_bucket_take(&b, 667));      /* 999 */
	assert_true(sluice_bucket_take(&b, 668));

	/* burst 0 means burst = rate. */
	sluice_bucket_init(&b, 2, 0, 0);
	assert_int_equal(b.burst, 2);
	assert_true(sluice_bucket_take(&b, 0));
	assert_true(sluice_bucket_take(&b, 0));
	assert_false(sluice_bucket_take(&b, 0));
	assert_false(sluice_bucket_full(&b, 999));
	assert_true(sluice_bucket_full(&b, 1000));

	/* A very long idle period does not overflow the refill arithmetic. */
	sluice_bucket_init(&b, UINT32_MAX, UINT32_MAX, 0);
	assert_true(sluice_bucket_take(&b, 0));
	assert_true(sluice_bucket_full(&b, UINT64_MAX));
	assert_true(sluice_bucket_take(&b, UINT64_MAX));
	assert_int_equal(b.tokens_milli, (uint64_t)UINT32_MAX * 1000 - 1000);
}

static void test_bucket_rate_zero_unlimited(void **state)
{
	struct sluice_bucket b;
	int i;

	(void)state;
	sluice_bucket_init(&b, 0, 0, 5);
	for (i = 0; i < 100000; i++)
		assert_true(sluice_bucket_take(&b, 5));
	assert_true(sluice_bucket_full(&b, 0));
}

static void test_bucket_clock_backwards(void **state)
{
	struct sluice_bucket b;

	(void)state;
	sluice_bucket_init(&b, 1, 1, 10000);
	assert_true(sluice_bucket_take(&b, 10000));
	/* Backwards: no time passed, and nothing credited twice later. */
	assert_false(sluice_bucket_take(&b, 5000));
	assert_false(sluice_bucket_full(&b, 5000));
	assert_false(sluice_bucket_take(&b, 10999));
	assert_true(sluice_bucket_take(&b, 11000));
	assert_false(sluice_bucket_take(&b, 0));
	assert_false(sluice_bucket_take(&b, 11999));
	assert_true(sluice_bucket_take(&b, 12000));
}

/* --- limits table ------------------------------------------------------ */

static void test_max_conns_across_refs(void **state)
{
	struct sluice_client_cfg c = limits_cfg(3, 0, 0);
	struct sluice_limits *l = sluice_limits_new();
	struct sluice_limit_ref *refs[4];
	int i;

	(void)state;
	assert_non_null(l);
	for (i = 0; i < 3; i++) {
		assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &refs[i]), SLUICE_LIMIT_OK);
		assert_non_null(refs[i]);
	}
	assert_int_equal(sluice_limits_active(l, 0, "CN=alice"), 3);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &refs[3]), SLUICE_LIMIT_MAX_CONNS);
	assert_null(refs[3]);
	assert_int_equal(sluice_limits_active(l, 0, "CN=alice"), 3);

	sluice_limits_release(l, refs[1]);
	assert_int_equal(sluice_limits_active(l, 0, "CN=alice"), 2);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &refs[1]), SLUICE_LIMIT_OK);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &refs[3]), SLUICE_LIMIT_MAX_CONNS);

	for (i = 0; i < 3; i++)
		sluice_limits_release(l, refs[i]);
	assert_int_equal(sluice_limits_active(l, 0, "CN=alice"), 0);
	assert_int_equal(sluice_limits_count(l), 0);
	sluice_limits_free(l);
}

static void test_rate_checked_before_max_conns(void **state)
{
	struct sluice_client_cfg c = limits_cfg(1, 1, 3);
	struct sluice_limits *l = sluice_limits_new();
	struct sluice_limit_ref *held, *r;

	(void)state;
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 0, &held), SLUICE_LIMIT_OK);
	/* Token spent, then refused by max_conns: the attempt still counts. */
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 0, &r), SLUICE_LIMIT_MAX_CONNS);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 0, &r), SLUICE_LIMIT_MAX_CONNS);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 0, &r), SLUICE_LIMIT_RATE);
	assert_null(r);
	sluice_limits_release(l, held);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 999, &r), SLUICE_LIMIT_RATE);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "n", -1, 1000, &r), SLUICE_LIMIT_OK);
	sluice_limits_release(l, r);
	sluice_limits_free(l);
}

static void test_names_and_clients_independent(void **state)
{
	struct sluice_client_cfg c = limits_cfg(1, 1, 1);
	struct sluice_limits *l = sluice_limits_new();
	struct sluice_limit_ref *a, *b, *a1, *r;

	(void)state;
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &a), SLUICE_LIMIT_OK);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=bob", -1, 0, &b), SLUICE_LIMIT_OK);
	/* Same name under another clients[] entry is another key. */
	assert_int_equal(sluice_limits_acquire(l, 1, &c, "CN=alice", -1, 0, &a1), SLUICE_LIMIT_OK);
	assert_int_equal(sluice_limits_acquire(l, 0, &c, "CN=alice", -1, 0, &r), SLUICE_LIMIT_RATE);
	assert_int_equal(sluice_limits_active(l, 0, "CN=alice"), 1);
	assert_int_equal(sluice_limits_active(l, 0, "CN=bob"), 1);
	assert_int_equal(sluice_limits_active(l, 1, "CN=alice"), 1);
	assert_int_equal(sluice_limits_active(l, 2, "CN=alice"), 0);
	assert_int_equal(sluice_limits_count(l), 3);
	sluice_limits_release(l, a);
	sluice_limits_release(l, b);
	sluice_limits_release(l, a1);
	sluice_limits_free(l);
}

static void test_idle_entries_reclaimed(void **state)
{
	struct sluice_client_cfg unlimited = limits_cfg(0, 0, 0);
	struct sluice_client_cfg rated = limits_cfg(0, 10, 1);
	struct sluice_limits *l = sluice_limits_new();
	struct sluice_limit_ref *r, *keep;
	char name[32];
	int i;

	(void)state;
	/* No rate: gone at release. */
	for (i = 0; i < 10000; i++) {
		snprintf(name, sizeof(name), "IP=10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(sluice_limits_acquire(l, 0, &unlimited, name, -1, 0, &r), SLUICE_LIMIT_OK);
		sluice_limits_release(l, r);
	}
	assert_int_equal(sluice_limits_count(l), 0);

	/* A held connection keeps its entry. */
	assert_int_equal(sluice_limits_acquire(l, 0, &unlimited, "held", -1, 0, &keep), SLUICE_LIMIT_OK);

	/* Rated: the bucket is short a token at release, so the entry stays
	 * until its bucket refills and a later sweep finds it. */
	for (i = 0; i < 10000; i++) {
		snprintf(name, sizeof(name), "IP=10.1.%d.%d", i / 256, i % 256);
		assert_int_equal(sluice_limits_acquire(l, 0, &rated, name, -1, 1000, &r), SLUICE_LIMIT_OK);
		sluice_limits_release(l, r);
	}
	assert_int_equal(sluice_limits_count(l), 10001);
	/* 100 ms later every bucket is full again; distinct new names drive the
	 * sweep, and the table shrinks back instead of growing. */
	for (i = 0; i < 20000; i++) {
		snprintf(name, sizeof(name), "IP=10.2.%d.%d", i / 256, i % 256);
		assert_int_equal(sluice_limits_acquire(l, 0, &unlimited, name, -1, 1100, &r), SLUICE_LIMIT_OK);
		sluice_limits_release(l, r);
	}
	assert_int_equal(sluice_limits_count(l), 1);
	assert_int_equal(sluice_limits_active(l, 0, "held"), 1);

	/* A release that leaves a full bucket frees at once, time permitting. */
	assert_int_equal(sluice_limits_acquire(l, 0, &rated, "late", -1, 1100, &r), SLUICE_LIMIT_OK);
	assert_int_equal(sluice_limits_acquire(l, 0, &unlimited, "tick", -1, 1200, &keep), SLUICE_LIMIT_OK);
	assert_int_equal(sluice_limits_count(l), 3);
	sluice_limits_release(l, r);        /* the table has seen t=1200: full */
	assert_int_equal(sluice_limits_count(l), 2);

	sluice_limits_free(l);  /* frees entries still held */
}

#define STRESS_THREADS 4
#define STRESS_ITERS   20000
#define STRESS_MAX     3

struct stress {
	struct sluice_limits *l;
	struct sluice_client_cfg shared, own;
	_Atomic uint64_t clock;
	_Atomic int over_limit;
	int id;
};

struct stress_arg {
	struct stress *s;
	int id;
};

static void *stress_worker(void *p)
{
	struct stress_arg *a = p;
	struct stress *s = a->s;
	struct sluice_limit_ref *held[8];
	char name[32];
	int i, n = 0;

	for (i = 0; i < STRESS_ITERS; i++) {
		uint64_t now = atomic_fetch_add(&s->clock, 1);
		struct sluice_limit_ref *r;

		/* A shared name contended by every thread... */
		if (sluice_limits_acquire(s->l, 0, &s->shared, "shared", -1, now, &r) == SLUICE_LIMIT_OK) {
			if (sluice_limits_active(s->l, 0, "shared") > STRESS_MAX)
				atomic_store(&s->over_limit, 1);
			held[n++] = r;
		}
		/* ...and names of its own, coming and going. */
		snprintf(name, sizeof(name), "t%d-%d", a->id, i % 50);
		if (sluice_limits_acquire(s->l, 1, &s->own, name, -1, now, &r) == SLUICE_LIMIT_OK)
			held[n++] = r;
		if (n >= 6 || (i & 3) == 0)
			while (n > 0)
				sluice_limits_release(s->l, held[--n]);
	}
	while (n > 0)
		sluice_limits_release(s->l, held[--n]);
	return NULL;
}

static void test_threads_end_at_zero(void **state)
{
	struct stress s;
	struct stress_arg args[STRESS_THREADS];
	pthread_t t[STRESS_THREADS];
	char name[32];
	int i, j;

	(void)state;
	memset(&s, 0, sizeof(s));
	s.l = sluice_limits_new();
	s.shared = limits_cfg(STRESS_MAX, 0, 0);
	s.own = limits_cfg(0, 1000, 0);
	for (i = 0; i < STRESS_THREADS; i++) {
		args[i] = (struct stress_arg){ &s, i };
		assert_int_equal(pthread_create(&t[i], NULL, stress_worker, &args[i]), 0);
	}
	for (i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);

	assert_int_equal(atomic_load(&s.over_limit), 0);
	assert_int_equal(sluice_limits_active(s.l, 0, "shared"), 0);
	for (i = 0; i < STRESS_THREADS; i++)
		for (j = 0; j < 50; j++) {
			snprintf(name, sizeof(name), "t%d-%d", i, j);
			assert_int_equal(sluice_limits_active(s.l, 1, name), 0);
		}
	/* Only idle entries whose buckets have not refilled may remain. */
	assert_true(sluice_limits_count(s.l) <= STRESS_THREADS * 50);
	sluice_limits_free(s.l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_burst_then_refusal),
		cmocka_unit_test(test_bucket_refill_exact_at_boundaries),
		cmocka_unit_test(test_bucket_rate_zero_unlimited),
		cmocka_unit_test(test_bucket_clock_backwards),
		cmocka_unit_test(test_max_conns_across_refs),
		cmocka_unit_test(test_rate_checked_before_max_conns),
		cmocka_unit_test(test_names_and_clients_independent),
		cmocka_unit_test(test_idle_entries_reclaimed),
		cmocka_unit_test(test_threads_end_at_zero),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
