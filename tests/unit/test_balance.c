/* Weighted least-connection: weights share connections in proportion, ties
 * rotate, tried servers are skipped, counters never go negative, and
 * concurrent pick/release leaves every counter at zero. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <pthread.h>
#include <cmocka.h>

#include "balance.h"

#define MAX_TEST_SERVERS 8

struct pool_fixture {
	struct sluice_server_cfg servers[MAX_TEST_SERVERS];
	struct sluice_upstream_cfg up;
	struct sluice_pool pool;
};

static void pool_setup(struct pool_fixture *f, const unsigned *weights, unsigned n)
{
	unsigned i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < n; i++)
		f->servers[i].weight = weights[i];
	f->up.name = "test";
	f->up.servers = f->servers;
	f->up.n_servers = n;
	assert_int_equal(sluice_pool_init(&f->pool, &f->up), 0);
}

static void test_weights_share_one_to_two(void **state)
{
	static const unsigned w[] = { 1, 2 };
	struct pool_fixture f;
	unsigned picks[2] = { 0, 0 };
	int i, s;

	(void)state;
	pool_setup(&f, w, 2);
	for (i = 1; i <= 300; i++) {
		s = sluice_pool_pick(&f.pool, 0);
		assert_true(s == 0 || s == 1);
		picks[s]++;
		/* Least-conn keeps the ratio exact at every third pick. */
		if (i % 3 == 0 && (picks[0] * 2 != picks[1]))
			fail_msg("after %d picks expected %d:%d, got %u:%u", i, i / 3, 2 * i / 3,
			         picks[0], picks[1]);
	}
	assert_int_equal(sluice_pool_active(&f.pool, 0), 100);
	assert_int_equal(sluice_pool_active(&f.pool, 1), 200);

	/* Releasing from the heavy server sends the next picks back to it. */
	for (i = 0; i < 10; i++)
		sluice_pool_release(&f.pool, 1);
	for (i = 0; i < 10; i++)
		assert_int_equal(sluice_pool_pick(&f.pool, 0), 1);
	sluice_pool_destroy(&f.pool);
}

static void test_least_loaded_wins(void **state)
{
	static const unsigned w[] = { 1, 1, 1 };
	struct pool_fixture f;
	int i;

	(void)state;
	pool_setup(&f, w, 3);
	for (i = 0; i < 3; i++)
		sluice_pool_pick(&f.pool, 0);      /* one each */
	sluice_pool_release(&f.pool, 2);
	for (i = 0; i < 5; i++) {
		assert_int_equal(sluice_pool_pick(&f.pool, 0), 2);
		sluice_pool_release(&f.pool, 2);
	}
	sluice_pool_destroy(&f.pool);
}

static void test_ties_rotate(void **state)
{
	static const unsigned w[] = { 1, 1, 1, 1 };
	struct pool_fixture f;
	unsigned seen[4] = { 0 };
	int i, s;

	(void)state;
	pool_setup(&f, w, 4);
	/* Pick and release at once: all servers stay tied, and each gets an
	 * equal share rather than the first one getting everything. */
	for (i = 0; i < 400; i++) {
		s = sluice_pool_pick(&f.pool, 0);
		assert_true(s >= 0 && s < 4);
		seen[s]++;
		sluice_pool_release(&f.pool, (unsigned)s);
	}
	for (i = 0; i < 4; i++)
		if (seen[i] != 100)
			fail_msg("server %d got %u of 400 tied picks, expected 100", i, seen[i]);
	sluice_pool_destroy(&f.pool);
}

static void test_tried_mask(void **state)
{
	static const unsigned w[] = { 1, 1, 1 };
	struct pool_fixture f;
	int i;

	(void)state;
	pool_setup(&f, w, 3);
	/* Server 0 is the least loaded, but was tried already. */
	sluice_pool_pick(&f.pool, UINT64_C(1) << 0);
	sluice_pool_pick(&f.pool, UINT64_C(1) << 0);
	assert_int_equal(sluice_pool_active(&f.pool, 0), 0);
	for (i = 0; i < 10; i++) {
		int s = sluice_pool_pick(&f.pool, UINT64_C(1) << 0);

		assert_true(s == 1 || s == 2);
		sluice_pool_release(&f.pool, (unsigned)s);
	}
	assert_int_equal(sluice_pool_pick(&f.pool, (UINT64_C(1) << 0) | (UINT64_C(1) << 1)), 2);
	assert_int_equal(sluice_pool_pick(&f.pool, 0x7), -1);
	assert_int_equal(sluice_pool_pick(&f.pool, UINT64_MAX), -1);
	/* A refused pick counts nothing. */
	assert_int_equal(sluice_pool_active(&f.pool, 0) + sluice_pool_active(&f.pool, 1) +
	                 sluice_pool_active(&f.pool, 2), 3);
	sluice_pool_destroy(&f.pool);
}

static void test_release_never_negative(void **state)
{
	static const unsigned w[] = { 1, 1 };
	struct pool_fixture f;
	int s;

	(void)state;
	pool_setup(&f, w, 2);
	sluice_pool_release(&f.pool, 0);   /* a bug in the caller: refused, logged */
	assert_int_equal(sluice_pool_active(&f.pool, 0), 0);
	s = sluice_pool_pick(&f.pool, 0);
	sluice_pool_release(&f.pool, (unsigned)s);
	sluice_pool_release(&f.pool, (unsigned)s);
	assert_int_equal(sluice_pool_active(&f.pool, (unsigned)s), 0);
	sluice_pool_release(&f.pool, 7);   /* out of range: ignored */
	assert_int_equal(sluice_pool_active(&f.pool, 7), 0);
	sluice_pool_destroy(&f.pool);
}

static void test_init_refuses_bad_pools(void **state)
{
	struct sluice_upstream_cfg up;
	struct sluice_pool p;

	(void)state;
	memset(&up, 0, sizeof(up));
	up.n_servers = 0;
	assert_int_equal(sluice_pool_init(&p, &up), -1);
	assert_int_equal(sluice_pool_pick(&p, 0), -1);
	up.n_servers = SLUICE_MAX_SERVERS + 1;
	assert_int_equal(sluice_pool_init(&p, &up), -1);
	sluice_pool_destroy(&p);
}

#define STRESS_THREADS 4
#define STRESS_ITERS   50000

static void *stress_worker(void *arg)
{
	struct sluice_pool *p = arg;
	int held[4], n = 0, i;

	for (i = 0; i < STRESS_ITERS; i++) {
		int s = sluice_pool_pick(p, (i & 7) == 0 ? UINT64_C(1) : 0);

		if (s < 0)
			continue;
		held[n++] = s;
		if (n == 4 || (i & 1))
			while (n > 0)
				sluice_pool_release(p, (unsigned)held[--n]);
	}
	while (n > 0)
		sluice_pool_release(p, (unsigned)held[--n]);
	return NULL;
}

static void test_threads_end_at_zero(void **state)
{
	static const unsigned w[] = { 1, 2, 3, 1, 5 };
	struct pool_fixture f;
	pthread_t t[STRESS_THREADS];
	unsigned i;

	(void)state;
	pool_setup(&f, w, 5);
	for (i = 0; i < STRESS_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, stress_worker, &f.pool), 0);
	for (i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);
	for (i = 0; i < 5; i++)
		if (sluice_pool_active(&f.pool, i) != 0)
			fail_msg("server %u ended with %u active, expected 0", i,
			         sluice_pool_active(&f.pool, i));
	sluice_pool_destroy(&f.pool);
}

static _Atomic int pick_failed;

/* No cmocka asserts off the main thread: they longjmp. */
static void *pick_only(void *arg)
{
	int i;

	for (i = 0; i < 10000; i++)
		if (sluice_pool_pick(arg, 0) < 0)
			atomic_store(&pick_failed, 1);
	return NULL;
}

static void test_threads_counts_exact(void **state)
{
	static const unsigned w[] = { 1, 1, 1 };
	struct pool_fixture f;
	pthread_t t[STRESS_THREADS];
	unsigned i, total = 0;

	(void)state;
	pool_setup(&f, w, 3);
	for (i = 0; i < STRESS_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, pick_only, &f.pool), 0);
	for (i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(atomic_load(&pick_failed), 0);
	/* Racing picks may skew the choice, never the count. */
	for (i = 0; i < 3; i++)
		total += sluice_pool_active(&f.pool, i);
	assert_int_equal(total, STRESS_THREADS * 10000);
	sluice_pool_destroy(&f.pool);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_weights_share_one_to_two),
		cmocka_unit_test(test_least_loaded_wins),
		cmocka_unit_test(test_ties_rotate),
		cmocka_unit_test(test_tried_mask),
		cmocka_unit_test(test_release_never_negative),
		cmocka_unit_test(test_init_refuses_bad_pools),
		cmocka_unit_test(test_threads_end_at_zero),
		cmocka_unit_test(test_threads_counts_exact),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
