/* libFuzzer target: the operator-string parsers in src/addr.c and
 * sluice_duration_parse() in src/config.c.
 *
 * The input (up to its first NUL) is one string, fed to every parser; each
 * success is checked against a property rather than just "did not crash":
 *   - sluice_addr_parse(_ex): the address printed by sluice_addr_str() parses
 *     back to the identical sockaddr; the host printed by
 *     sluice_addr_host_str() parses as a CIDR that matches the address.
 *   - sluice_cidr_parse: prefix in range, host bits zero, the block printed
 *     as "addr/prefix" parses back to the identical struct, its own network
 *     address matches it (also as a v4-mapped IPv6 peer for IPv4 blocks),
 *     and sluice_cidr_match agrees with a bit-by-bit reference for a peer
 *     taken from the input bytes.
 *   - sluice_duration_parse: agrees with a 128-bit reference implementation
 *     on both acceptance and value. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "config.h"

#define CHECK(cond)                                                                  \
	do {                                                                         \
		if (!(cond)) {                                                       \
			fprintf(stderr, "fuzz_addr: invariant failed: %s (%s:%d) input \"%s\"\n", \
			        #cond, __FILE__, __LINE__, cur_input);               \
			abort();                                                     \
		}                                                                    \
	} while (0)

static const char *cur_input = "";

static void check_addr(const char *s, bool allow_port0)
{
	struct sluice_sockaddr a, b;
	const char *why = NULL;
	char buf[128], host[64];
	struct sluice_cidr c;
	int rc;

	memset(&a, 0xa5, sizeof(a));
	rc = sluice_addr_parse_ex(s, &a, allow_port0, &why);
	if (!allow_port0) {
		/* The plain entry point is the same parser, and why may be NULL. */
		CHECK(sluice_addr_parse(s, &b, NULL) == rc);
		if (rc == 0)
			CHECK(b.len == a.len && memcmp(&a.ss, &b.ss, sizeof(a.ss)) == 0);
	}
	if (rc != 0) {
		CHECK(rc == -1);
		CHECK(why != NULL && why[0] != '\0');
		return;
	}
	CHECK(a.ss.ss_family == AF_INET || a.ss.ss_family == AF_INET6);
	CHECK(a.len == (a.ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
	                                          : sizeof(struct sockaddr_in6)));
	if (!allow_port0)
		CHECK(((const struct sockaddr_in *)&a.ss)->sin_port != 0);

	/* Round trip through the printed form. */
	sluice_addr_str((const struct sockaddr *)&a.ss, buf, sizeof(buf));
	memset(&b, 0x5a, sizeof(b));
	rc = sluice_addr_parse_ex(buf, &b, allow_port0, &why);
	CHECK(rc == 0);
	CHECK(b.len == a.len && memcmp(&a.ss, &b.ss, sizeof(a.ss)) == 0);

	/* The host alone is a /32 or /128 that contains the address. */
	sluice_addr_host_str((const struct sockaddr *)&a.ss, host, sizeof(host));
	CHECK(sluice_cidr_parse(host, &c, &why) == 0);
	CHECK(c.prefix == (c.family == AF_INET ? 32u : 128u));
	CHECK(sluice_cidr_match(&c, (const struct sockaddr *)&a.ss));
	CHECK(sluice_cidr_list_match(&c, 1, (const struct sockaddr *)&a.ss));

	/* Truncating output buffers must still terminate. */
	for (size_t len = 1; len < 8; len++) {
		memset(buf, 'x', sizeof(buf));
		sluice_addr_str((const struct sockaddr *)&a.ss, buf, len);
		CHECK(memchr(buf, '\0', len) != NULL);
		memset(buf, 'x', sizeof(buf));
		sluice_addr_host_str((const struct sockaddr *)&a.ss, buf, len);
		CHECK(memchr(buf, '\0', len) != NULL);
	}
}

/* Reference: do the first `prefix` bits of a and b agree? */
static bool ref_match(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
	for (unsigned i = 0; i < prefix; i++) {
		unsigned byte = i / 8, bit = 7 - i % 8;

		if (((a[byte] >> bit) & 1) != ((b[byte] >> bit) & 1))
			return false;
	}
	return true;
}

static void make_peer(struct sockaddr_storage *ss, int family, const uint8_t *bytes, bool mapped)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET && !mapped) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

		s4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, bytes, 4);
	} else {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

		s6->sin6_family = AF_INET6;
		if (family == AF_INET) {
			s6->sin6_addr.s6_addr[10] = 0xff;
			s6->sin6_addr.s6_addr[11] = 0xff;
			memcpy(&s6->sin6_addr.s6_addr[12], bytes, 4);
		} else {
			memcpy(&s6->sin6_addr, bytes, 16);
		}
	}
}

static void check_cidr(const char *s, const uint8_t *raw, size_t rawlen)
{
	struct sluice_cidr c, d;
	struct sockaddr_storage ss;
	const char *why = NULL;
	char host[INET6_ADDRSTRLEN], buf[INET6_ADDRSTRLEN + 8];
	unsigned max;
	uint8_t peer[16] = { 0 };
	int rc;

	memset(&c, 0xa5, sizeof(c));
	rc = sluice_cidr_parse(s, &c, &why);
	CHECK(sluice_cidr_parse(s, &d, NULL) == rc);
	if (rc != 0) {
		CHECK(rc == -1);
		CHECK(why != NULL && why[0] != '\0');
		return;
	}
	CHECK(memcmp(&c, &d, sizeof(c)) == 0);
	CHECK(c.family == AF_INET || c.family == AF_INET6);
	max = c.family == AF_INET ? 32 : 128;
	CHECK(c.prefix <= max);
	for (unsigned i = c.prefix; i < 128; i++)
		CHECK(((c.addr[i / 8] >> (7 - i % 8)) & 1) == 0);  /* host bits and the unused tail */

	/* Printed and parsed again: the same block. */
	CHECK(inet_ntop(c.family, c.addr, host, sizeof(host)) != NULL);
	snprintf(buf, sizeof(buf), "%s/%u", host, c.prefix);
	memset(&d, 0x5a, sizeof(d));
	CHECK(sluice_cidr_parse(buf, &d, &why) == 0);
	CHECK(memcmp(&c, &d, sizeof(c)) == 0);

	/* Its own network address is inside it, as is its v4-mapped form. */
	make_peer(&ss, c.family, c.addr, false);
	CHECK(sluice_cidr_match(&c, (const struct sockaddr *)&ss));
	if (c.family == AF_INET) {
		make_peer(&ss, AF_INET, c.addr, true);
		CHECK(sluice_cidr_match(&c, (const struct sockaddr *)&ss));
	}

	/* A peer from the input's last bytes: the matcher agrees with the
	 * reference, as an IPv4 peer, as the same IPv4 address v4-mapped, and
	 * as an IPv6 peer (which, if it is itself v4-mapped, behaves as the
	 * IPv4 address in its last four bytes). */
	memcpy(peer, raw + (rawlen > 16 ? rawlen - 16 : 0), rawlen < 16 ? rawlen : 16);
	for (int mapped = 0; mapped < 2; mapped++) {
		bool expect = c.family == AF_INET && ref_match(peer, c.addr, c.prefix);

		make_peer(&ss, AF_INET, peer, mapped);
		CHECK(sluice_cidr_match(&c, (const struct sockaddr *)&ss) == expect);
	}
	make_peer(&ss, AF_INET6, peer, false);
	{
		static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		bool is_mapped = memcmp(peer, v4mapped, 12) == 0;
		bool expect = is_mapped ? c.family == AF_INET && ref_match(peer + 12, c.addr, c.prefix)
		                        : c.family == AF_INET6 && ref_match(peer, c.addr, c.prefix);

		CHECK(sluice_cidr_match(&c, (const struct sockaddr *)&ss) == expect);
	}
	/* Neither IPv4 nor IPv6, or no peer at all: never a match. */
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	CHECK(!sluice_cidr_match(&c, (const struct sockaddr *)&ss));
	CHECK(!sluice_cidr_match(&c, NULL));
	CHECK(!sluice_cidr_match(NULL, (const struct sockaddr *)&ss));
	CHECK(!sluice_cidr_list_match(&c, 0, (const struct sockaddr *)&ss));
	sluice_addr_str((const struct sockaddr *)&ss, host, sizeof(host));
	CHECK(strcmp(host, "?") == 0);
	sluice_addr_host_str((const struct sockaddr *)&ss, host, sizeof(host));
	CHECK(strcmp(host, "?") == 0);
	CHECK(sluice_addr_str((const struct sockaddr *)&ss, host, 0) == host);
	CHECK(sluice_addr_host_str((const struct sockaddr *)&ss, host, 0) == host);
}

/* Reference duration parser, with 128-bit arithmetic and its own overflow
 * tracking.  Returns 0 and *ms, or -1. */
static int ref_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char *suffix;
		unsigned long long mult;
	} units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	unsigned __int128 v = 0;
	bool big = false;
	size_t n = 0;

	while (s[n] >= '0' && s[n] <= '9') {
		v = v * 10 + (unsigned)(s[n] - '0');
		if (v > UINT64_MAX)
			big = true, v = (unsigned __int128)UINT64_MAX + 1;  /* saturate */
		n++;
	}
	if (n == 0)
		return -1;
	if (s[n] == '\0') {
		if (big || v != 0)
			return -1;
		*ms = 0;
		return 0;
	}
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(s + n, units[i].suffix) == 0) {
			unsigned __int128 r = v * units[i].mult;

			if (big || r > UINT64_MAX)
				return -1;
			*ms = (uint64_t)r;
			return 0;
		}
	}
	return -1;
}

static void check_duration(const char *s)
{
	uint64_t got = 0xdeadbeef, want = 0x12345678;
	int rc = sluice_duration_parse(s, &got);
	int ref = ref_duration(s, &want);

	CHECK(rc == ref);
	if (rc == 0)
		CHECK(got == want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	if (size > 4096)
		return 0;
	s = malloc(size + 1);
	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	cur_input = s;

	check_addr(s, false);
	check_addr(s, true);
	check_cidr(s, data, size);
	check_duration(s);

	cur_input = "";
	free(s);
	return 0;
}
