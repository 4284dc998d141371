/* Unit tests for src/addr.c: address and CIDR parsing, peer matching,
 * formatting.  Each table row says what it checks. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <cmocka.h>

#include "addr.h"

static struct sockaddr_storage peer(const char *ip)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
	}
	return ss;
}

static void test_addr_parse_good(void **state)
{
	static const struct {
		const char *in;
		int family;
		const char *host;
		unsigned port;
	} rows[] = {
		{ "1.2.3.4:80", AF_INET, "1.2.3.4", 80 },
		{ "127.0.0.1:5000", AF_INET, "127.0.0.1", 5000 },
		{ "0.0.0.0:1", AF_INET, "0.0.0.0", 1 },
		{ "255.255.255.255:65535", AF_INET, "255.255.255.255", 65535 },
		{ "10.0.0.1:080", AF_INET, "10.0.0.1", 80 },
		{ "[2001:db8::1]:80", AF_INET6, "2001:db8::1", 80 },
		{ "[::1]:5000", AF_INET6, "::1", 5000 },
		{ "[::]:443", AF_INET6, "::", 443 },
	};
	(void)state;

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct sluice_sockaddr sa;
		const char *why = NULL;
		char host[64];

		if (sluice_addr_parse(rows[i].in, &sa, &why) != 0)
			fail_msg("\"%s\": expected to parse, got error \"%s\"", rows[i].in, why);
		assert_int_equal(sa.ss.ss_family, rows[i].family);
		assert_int_equal(sa.len, rows[i].family == AF_INET ? sizeof(struct sockaddr_in)
		                                                   : sizeof(struct sockaddr_in6));
		sluice_addr_host_str((struct sockaddr *)&sa.ss, host, sizeof(host));
		assert_string_equal(host, rows[i].host);
		if (rows[i].family == AF_INET)
			assert_int_equal(ntohs(((struct sockaddr_in *)&sa.ss)->sin_port), rows[i].port);
		else
			assert_int_equal(ntohs(((struct sockaddr_in6 *)&sa.ss)->sin6_port), rows[i].port);
	}
}

static void test_addr_parse_bad(void **state)
{
	static const char *const rows[] = {
		"",                    /* empty */
		"1.2.3.4",             /* no port */
		"1.2.3.4:",            /* empty port */
		"1.2.3.4:0",           /* port 0 */
		"1.2.3.4:65536",       /* port too big */
		"1.2.3.4:123456",      /* too many digits */
		"1.2.3.4:80x",         /* trailing garbage */
		"1.2.3.4:+80",         /* sign */
		"1.2.3.4: 80",         /* space */
		"1.2.3.4:-1",
		"localhost:80",        /* hostnames are not resolved */
		"1.2.3:80",            /* legacy short form */
		"0x7f.0.0.1:80",       /* legacy hex form */
		" 1.2.3.4:80",         /* leading space */
		"1.2.3.256:80",
		":80",                 /* no host */
		"::1:80",              /* IPv6 without brackets */
		"[::1]",               /* no port */
		"[::1]:",              /* empty port */
		"[::1]80",             /* no colon */
		"[::1]:80x",           /* trailing garbage */
		"[::1:80",             /* no closing bracket */
		"[]:80",               /* empty host */
		"[1.2.3.4]:80",        /* IPv4 in brackets */
		"[fe80::1%eth0]:80",   /* zone ids are not accepted */
		"[::1]]:80",
		"[::g]:80",
	};
	(void)state;

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct sluice_sockaddr sa;
		const char *why = NULL;

		if (sluice_addr_parse(rows[i], &sa, &why) == 0)
			fail_msg("\"%s\": expected an error, it parsed", rows[i]);
		assert_non_null(why);
	}
	assert_int_equal(sluice_addr_parse(NULL, &(struct sluice_sockaddr){ 0 }, NULL), -1);
}

static void test_addr_parse_port0(void **state)
{
	struct sluice_sockaddr sa;
	const char *why;
	(void)state;

	assert_int_equal(sluice_addr_parse("127.0.0.1:0", &sa, &why), -1);
	assert_int_equal(sluice_addr_parse_ex("127.0.0.1:0", &sa, true, &why), 0);
	assert_int_equal(ntohs(((struct sockaddr_in *)&sa.ss)->sin_port), 0);
	assert_int_equal(sluice_addr_parse_ex("[::1]:0", &sa, true, &why), 0);
	assert_int_equal(sluice_addr_parse_ex("[::1]:65536", &sa, true, &why), -1);
}

static void test_cidr_parse(void **state)
{
	static const struct {
		const char *in;
		int family;
		const char *net;   /* expected network address, host bits zeroed */
		unsigned prefix;
	} good[] = {
		{ "10.0.0.0/8", AF_INET, "10.0.0.0", 8 },
		{ "10.1.2.3/8", AF_INET, "10.0.0.0", 8 },      /* host bits set: zeroed */
		{ "10.255.255.255/9", AF_INET, "10.128.0.0", 9 },
		{ "192.168.1.1", AF_INET, "192.168.1.1", 32 }, /* bare = host */
		{ "192.168.1.1/32", AF_INET, "192.168.1.1", 32 },
		{ "1.2.3.4/0", AF_INET, "0.0.0.0", 0 },
		{ "2001:db8::/32", AF_INET6, "2001:db8::", 32 },
		{ "2001:db8:ffff::1/33", AF_INET6, "2001:db8:8000::", 33 },
		{ "::1", AF_INET6, "::1", 128 },
		{ "::1/128", AF_INET6, "::1", 128 },
		{ "::/0", AF_INET6, "::", 0 },
		{ "::ffff:10.1.0.0/104", AF_INET, "10.0.0.0", 8 }, /* v4-mapped block = v4 */
		{ "::ffff:10.1.2.3", AF_INET, "10.1.2.3", 32 },
	};
	static const char *const bad[] = {
		"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/ 8",
		"10.0.0.0/8/9", "10.0.0.0/1000", "10.0.0/8", "abc", "::/129",
		"2001:db8::/", "10.0.0.0/8x", "10.0.0.0 /8", "*",
	};
	(void)state;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct sluice_cidr c;
		const char *why = NULL;
		uint8_t want[16] = { 0 };

		if (sluice_cidr_parse(good[i].in, &c, &why) != 0)
			fail_msg("\"%s\": expected to parse, got error \"%s\"", good[i].in, why);
		assert_int_equal(c.family, good[i].family);
		assert_int_equal(c.prefix, good[i].prefix);
		assert_int_equal(inet_pton(good[i].family, good[i].net, want), 1);
		if (memcmp(c.addr, want, good[i].family == AF_INET ? 4 : 16) != 0)
			fail_msg("\"%s\": network is not %s", good[i].in, good[i].net);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sluice_cidr c;
		const char *why = NULL;

		if (sluice_cidr_parse(bad[i], &c, &why) == 0)
			fail_msg("\"%s\": expected an error, it parsed", bad[i]);
		assert_non_null(why);
	}
}

static void test_cidr_match(void **state)
{
	static const struct {
		const char *cidr;
		const char *peer;
		bool match;
	} rows[] = {
		{ "10.0.0.0/8", "10.1.2.3", true },
		{ "10.0.0.0/8", "11.0.0.0", false },
		{ "10.0.0.0/8", "9.255.255.255", false },
		{ "10.0.0.0/9", "10.127.255.255", true },    /* prefix inside a byte */
		{ "10.0.0.0/9", "10.128.0.0", false },
		{ "0.0.0.0/0", "203.0.113.9", true },        /* /0 matches every v4 peer */
		{ "0.0.0.0/0", "2001:db8::1", false },       /* ... but no v6 peer */
		{ "192.0.2.7/32", "192.0.2.7", true },       /* /32 is exact */
		{ "192.0.2.7/32", "192.0.2.6", false },
		{ "192.0.2.7/31", "192.0.2.6", true },
		{ "2001:db8::/32", "2001:db8:1::1", true },
		{ "2001:db8::/32", "2001:db9::1", false },
		{ "2001:db8::/32", "10.0.0.1", false },
		{ "::/0", "2001:db8::1", true },
		{ "::1/128", "::1", true },                  /* /128 is exact */
		{ "::1/128", "::2", false },
		{ "2001:db8::/127", "2001:db8::1", true },
		{ "2001:db8::/127", "2001:db8::2", false },
		{ "10.0.0.0/8", "::ffff:10.9.8.7", true },   /* mapped peer, v4 block */
		{ "10.0.0.0/8", "::ffff:11.9.8.7", false },
		{ "0.0.0.0/0", "::ffff:1.2.3.4", true },
		{ "::/0", "::ffff:1.2.3.4", false },         /* mapped peers are IPv4 peers */
		{ "::ffff:10.0.0.0/104", "10.3.3.3", true }, /* mapped block, plain v4 peer */
	};
	(void)state;

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct sluice_cidr c;
		struct sockaddr_storage p = peer(rows[i].peer);
		const char *why;

		assert_int_equal(sluice_cidr_parse(rows[i].cidr, &c, &why), 0);
		if (sluice_cidr_match(&c, (struct sockaddr *)&p) != rows[i].match)
			fail_msg("%s vs peer %s: expected %s", rows[i].cidr, rows[i].peer,
			         rows[i].match ? "match" : "no match");
	}
	{
		struct sluice_cidr c;
		const char *why;

		assert_int_equal(sluice_cidr_parse("0.0.0.0/0", &c, &why), 0);
		assert_false(sluice_cidr_match(&c, NULL));
	}
}

static void test_cidr_list_match(void **state)
{
	struct sluice_cidr list[3];
	struct sockaddr_storage a = peer("172.16.5.5"), b = peer("2001:db8::5"),
	                        x = peer("8.8.8.8");
	const char *why;
	(void)state;

	assert_int_equal(sluice_cidr_parse("10.0.0.0/8", &list[0], &why), 0);
	assert_int_equal(sluice_cidr_parse("172.16.0.0/12", &list[1], &why), 0);
	assert_int_equal(sluice_cidr_parse("2001:db8::/64", &list[2], &why), 0);
	assert_true(sluice_cidr_list_match(list, 3, (struct sockaddr *)&a));
	assert_true(sluice_cidr_list_match(list, 3, (struct sockaddr *)&b));
	assert_false(sluice_cidr_list_match(list, 3, (struct sockaddr *)&x));
	assert_false(sluice_cidr_list_match(list, 0, (struct sockaddr *)&a));
	assert_false(sluice_cidr_list_match(NULL, 0, (struct sockaddr *)&a));
}

static void test_addr_str(void **state)
{
	struct sluice_sockaddr sa;
	struct sockaddr_storage m = peer("::ffff:1.2.3.4");
	char buf[64];
	const char *why;
	(void)state;

	assert_int_equal(sluice_addr_parse("1.2.3.4:5", &sa, &why), 0);
	assert_string_equal(sluice_addr_str((struct sockaddr *)&sa.ss, buf, sizeof(buf)), "1.2.3.4:5");
	assert_string_equal(sluice_addr_host_str((struct sockaddr *)&sa.ss, buf, sizeof(buf)), "1.2.3.4");
	assert_int_equal(sluice_addr_parse("[::1]:5", &sa, &why), 0);
	assert_string_equal(sluice_addr_str((struct sockaddr *)&sa.ss, buf, sizeof(buf)), "[::1]:5");
	assert_string_equal(sluice_addr_host_str((struct sockaddr *)&sa.ss, buf, sizeof(buf)), "::1");

	/* The host of a v4-mapped peer reads as IPv4. */
	((struct sockaddr_in6 *)&m)->sin6_port = htons(7);
	assert_string_equal(sluice_addr_host_str((struct sockaddr *)&m, buf, sizeof(buf)), "1.2.3.4");
	assert_string_equal(sluice_addr_str((struct sockaddr *)&m, buf, sizeof(buf)),
	                    "[::ffff:1.2.3.4]:7");

	/* Short buffers stay terminated and in bounds. */
	memset(buf, 'x', sizeof(buf));
	sluice_addr_str((struct sockaddr *)&sa.ss, buf, 4);
	assert_int_equal(strlen(buf), 3);
	sluice_addr_host_str((struct sockaddr *)&m, buf, 4);
	assert_true(strlen(buf) < 4);
	assert_string_equal(sluice_addr_str(NULL, buf, sizeof(buf)), "?");
}

/* The 28-byte copy a connection keeps prints like the full address, and
 * anything that is not IPv4/IPv6 (or is cut short) prints as "?". */
static void test_ipaddr_set(void **state)
{
	struct sluice_sockaddr sa;
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	union sluice_ipaddr ip;
	char buf[64];
	const char *why;
	(void)state;

	assert_int_equal(sizeof(ip), sizeof(struct sockaddr_in6));
	assert_int_equal(sluice_addr_parse("198.18.0.7:443", &sa, &why), 0);
	sluice_ipaddr_set(&ip, (struct sockaddr *)&sa.ss, sa.len);
	assert_string_equal(sluice_addr_str(&ip.sa, buf, sizeof(buf)), "198.18.0.7:443");
	assert_int_equal(sluice_addr_parse("[2001:db8::1:2]:65535", &sa, &why), 0);
	sluice_ipaddr_set(&ip, (struct sockaddr *)&sa.ss, sa.len);
	assert_string_equal(sluice_addr_str(&ip.sa, buf, sizeof(buf)), "[2001:db8::1:2]:65535");
	/* A v6 address whose length says v4-sized is not trusted. */
	sluice_ipaddr_set(&ip, (struct sockaddr *)&sa.ss, sizeof(struct sockaddr_in));
	assert_int_equal(ip.sa.sa_family, AF_UNSPEC);
	sluice_ipaddr_set(&ip, (struct sockaddr *)&un, sizeof(un));
	assert_string_equal(sluice_addr_str(&ip.sa, buf, sizeof(buf)), "?");
	sluice_ipaddr_set(&ip, NULL, 0);
	assert_string_equal(sluice_addr_str(&ip.sa, buf, sizeof(buf)), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addr_parse_good),
		cmocka_unit_test(test_addr_parse_bad),
		cmocka_unit_test(test_addr_parse_port0),
		cmocka_unit_test(test_cidr_parse),
		cmocka_unit_test(test_cidr_match),
		cmocka_unit_test(test_cidr_list_match),
		cmocka_unit_test(test_addr_str),
		cmocka_unit_test(test_ipaddr_set),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
