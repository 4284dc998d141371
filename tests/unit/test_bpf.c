/* The userspace side of the BPF counters, without a kernel: how server
 * addresses become map keys, how active counts are read from the monotonic
 * opened/closed pair, how the cgroup v2 directory is found, and which
 * reason sluice_bpf_open() gives when BPF cannot be used (the caller's
 * fallback to atomics).  tests/bpf/counters.sh runs the real thing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <cmocka.h>

#include "bpf.h"

static void test_key_ipv4(void **state)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(9001) };
	struct sluice_bpf_addr k;
	static const uint8_t want[16] = { 10, 1, 2, 3 };

	(void)state;
	inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
	assert_int_equal(sluice_bpf_addr_from_sockaddr((struct sockaddr *)&in, &k), 0);
	assert_int_equal(k.family, AF_INET);
	assert_int_equal(k.port, 9001);     /* host order: bpftool shows 9001 */
	assert_memory_equal(k.addr, want, 16);
}

static void test_key_ipv6(void **state)
{
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
	struct sluice_bpf_addr k;

	(void)state;
	inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
	assert_int_equal(sluice_bpf_addr_from_sockaddr((struct sockaddr *)&in6, &k), 0);
	assert_int_equal(k.family, AF_INET6);
	assert_int_equal(k.port, 443);
	assert_memory_equal(k.addr, in6.sin6_addr.s6_addr, 16);
}

/* The kernel program folds ::ffff:a.b.c.d into AF_INET; the key built here
 * must be the same one, or such a server would never be counted. */
static void test_key_v4_mapped_is_v4(void **state)
{
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(80) };
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(80) };
	struct sluice_bpf_addr a, b;

	(void)state;
	inet_pton(AF_INET6, "::ffff:192.0.2.7", &in6.sin6_addr);
	inet_pton(AF_INET, "192.0.2.7", &in.sin_addr);
	assert_int_equal(sluice_bpf_addr_from_sockaddr((struct sockaddr *)&in6, &a), 0);
	assert_int_equal(sluice_bpf_addr_from_sockaddr((struct sockaddr *)&in, &b), 0);
	assert_memory_equal(&a, &b, sizeof(a));
}

static void test_key_layout_has_no_holes(void **state)
{
	(void)state;
	/* Keys are hashed byte for byte: no padding that could hold garbage. */
	assert_int_equal(sizeof(struct sluice_bpf_addr), 20);
	assert_int_equal(offsetof(struct sluice_bpf_upstream, opened) % 8, 0);
	assert_int_equal(sizeof(struct sluice_bpf_upstream) % 8, 0);
	assert_int_equal(sizeof(struct sluice_bpf_client), 64);
}

static void test_key_refuses_unix(void **state)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct sluice_bpf_addr k;

	(void)state;
	errno = 0;
	assert_int_equal(sluice_bpf_addr_from_sockaddr((struct sockaddr *)&un, &k), -1);
	assert_int_equal(errno, EAFNOSUPPORT);
}

static void test_active_reads_difference(void **state)
{
	struct sluice_bpf_upstream u = { .opened = 12, .established = 11, .closed = 9 };

	(void)state;
	assert_int_equal(sluice_bpf_active(&u.opened, &u.closed), 3);
	u.closed = 12;
	assert_int_equal(sluice_bpf_active(&u.opened, &u.closed), 0);
}

/* Never negative, never a wrapped 2^64: a torn read cannot starve a server. */
static void test_active_never_negative(void **state)
{
	struct sluice_bpf_client c = { .opened = 4, .closed = 5 };

	(void)state;
	assert_int_equal(sluice_bpf_active(&c.opened, &c.closed), 0);
}

static void test_cgroup_dir_hybrid(void **state)
{
	const char *cg = "9:name=systemd:/\n4:memory:/x\n0::/\n";
	const char *mi =
		"25 1 0:23 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
		"26 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
		"36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
	char dir[256];

	(void)state;
	assert_int_equal(sluice_bpf_cgroup_dir(cg, mi, dir, sizeof(dir)), 0);
	assert_string_equal(dir, "/sys/fs/cgroup/unified");
}

static void test_cgroup_dir_unified(void **state)
{
	const char *cg = "0::/system.slice/sluice.service\n";
	const char *mi = "30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
	char dir[256];

	(void)state;
	assert_int_equal(sluice_bpf_cgroup_dir(cg, mi, dir, sizeof(dir)), 0);
	assert_string_equal(dir, "/sys/fs/cgroup/system.slice/sluice.service");
}

static void test_cgroup_dir_v1_only(void **state)
{
	const char *cg = "4:memory:/x\n1:cpu:/\n";
	const char *mi = "26 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
	char dir[256];

	(void)state;
	assert_int_equal(sluice_bpf_cgroup_dir(cg, mi, dir, sizeof(dir)), -1);
	/* a 0:: line without a cgroup2 mount is no better */
	assert_int_equal(sluice_bpf_cgroup_dir("0::/\n", mi, dir, sizeof(dir)), -1);
}

/* The fallback: open fails with a reason for the one start-up warning and
 * leaves nothing behind (the caller keeps its atomics). */
static void test_open_without_bpffs(void **state)
{
	struct sluice_config cfg = { 0 };
	struct sluice_bpf *b = (struct sluice_bpf *)&cfg;
	char err[256] = "";

	(void)state;
	assert_int_equal(sluice_bpf_open(&cfg, "/proc/sluice-test-no-bpffs/pins", NULL, &b, err, sizeof(err)), -1);
	assert_null(b);
	assert_non_null(strstr(err, "bpffs not mounted at /proc/sluice-test-no-bpffs"));
}

static void test_open_empty_pin_path(void **state)
{
	struct sluice_config cfg = { 0 };
	struct sluice_bpf *b;
	char err[256] = "";

	(void)state;
	assert_int_equal(sluice_bpf_open(&cfg, "", NULL, &b, err, sizeof(err)), -1);
	assert_null(b);
	assert_string_equal(err, "empty pin path");
}

static void test_close_null(void **state)
{
	(void)state;
	sluice_bpf_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_ipv4),
		cmocka_unit_test(test_key_ipv6),
		cmocka_unit_test(test_key_v4_mapped_is_v4),
		cmocka_unit_test(test_key_layout_has_no_holes),
		cmocka_unit_test(test_key_refuses_unix),
		cmocka_unit_test(test_active_reads_difference),
		cmocka_unit_test(test_active_never_negative),
		cmocka_unit_test(test_cgroup_dir_hybrid),
		cmocka_unit_test(test_cgroup_dir_unified),
		cmocka_unit_test(test_cgroup_dir_v1_only),
		cmocka_unit_test(test_open_without_bpffs),
		cmocka_unit_test(test_open_empty_pin_path),
		cmocka_unit_test(test_close_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
