/* Which kernels get the sockmap datapath (sluice_sockmap_kernel_ok): the
 * policy alone, from uname -r strings.  The datapath itself runs in
 * tests/net/sockmap.sh (6.18) and tests/vm/sockmap.sh (6.1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sockmap.h"

static int ok(const char *release, char *why, size_t len)
{
	why[0] = '\0';
	return sluice_sockmap_kernel_ok(release, why, len);
}

static void test_verified_kernels(void **state)
{
	char why[200];

	(void)state;
	assert_int_equal(ok("6.18.44-fc-v669", why, sizeof(why)), 1);
	assert_int_equal(ok("6.1.0-28-cloud-amd64", why, sizeof(why)), 1);
	assert_string_equal(why, "");
}

static void test_newer_kernels(void **state)
{
	char why[200];

	(void)state;
	assert_int_equal(ok("6.12.9", why, sizeof(why)), 1);
	assert_int_equal(ok("7.0.0-rc1", why, sizeof(why)), 1);
}

static void test_older_kernels_refused_with_reason(void **state)
{
	char why[200];

	(void)state;
	assert_int_equal(ok("6.0.19", why, sizeof(why)), 0);
	assert_non_null(strstr(why, "kernel 6.0"));
	assert_non_null(strstr(why, "6.1 and 6.18"));
	assert_int_equal(ok("5.15.0-91-generic", why, sizeof(why)), 0);
	assert_non_null(strstr(why, "kernel 5.15"));
}

static void test_unreadable_release_refused(void **state)
{
	char why[200];

	(void)state;
	assert_int_equal(ok("", why, sizeof(why)), 0);
	assert_non_null(strstr(why, "cannot read"));
	assert_int_equal(ok("linux", why, sizeof(why)), 0);
	assert_int_equal(ok(NULL, why, sizeof(why)), 0);
}

static void test_reason_truncates_safely(void **state)
{
	char why[8];

	(void)state;
	assert_int_equal(ok("5.4.0", why, sizeof(why)), 0);
	assert_int_equal(strlen(why), sizeof(why) - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verified_kernels),
		cmocka_unit_test(test_newer_kernels),
		cmocka_unit_test(test_older_kernels_refused_with_reason),
		cmocka_unit_test(test_unreadable_release_refused),
		cmocka_unit_test(test_reason_truncates_safely),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
