/* Addresses and CIDR blocks.
 *
 * Owns the parsing of operator-written addresses ("1.2.3.4:80",
 * "[2001:db8::1]:80", "10.0.0.0/8") and matching of peers against CIDR
 * lists.  Only numeric forms are accepted: a config must never depend on a
 * resolver at load time, and inet_pton (unlike inet_aton) refuses the
 * surprising legacy forms such as "10.1" or "0x7f.1". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"

/* Longest host text we accept between the brackets or before the colon;
 * anything longer cannot be a numeric address. */
#define HOST_MAX 64

static int parse_port(const char *p, bool allow_port0, uint16_t *port, const char **why)
{
	unsigned long v = 0;
	size_t n = 0;

	if (*p == '\0') {
		*why = "missing port";
		return -1;
	}
	/* Digits only: strtoul would accept signs and leading spaces. */
	for (; p[n] != '\0'; n++) {
		if (p[n] < '0' || p[n] > '9' || n >= 5) {
			*why = "bad port";
			return -1;
		}
		v = v * 10 + (unsigned long)(p[n] - '0');
	}
	if (v > 65535 || (v == 0 && !allow_port0)) {
		*why = "port out of range (1..65535)";
		return -1;
	}
	*port = (uint16_t)v;
	return 0;
}

int sluice_addr_parse_ex(const char *s, struct sluice_sockaddr *out, bool allow_port0,
                         const char **why)
{
	const char *dummy;
	char host[HOST_MAX];
	const char *port_s;
	size_t hlen;
	uint16_t port;

	if (why == NULL)
		why = &dummy;
	if (s == NULL || *s == '\0') {
		*why = "empty address";
		return -1;
	}
	memset(out, 0, sizeof(*out));

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;

		if (close == NULL) {
			*why = "missing ']' after IPv6 address";
			return -1;
		}
		hlen = (size_t)(close - s - 1);
		if (hlen == 0 || hlen >= sizeof(host)) {
			*why = "not a numeric IPv6 address";
			return -1;
		}
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (close[1] != ':') {
			*why = close[1] == '\0' ? "missing port" : "expected ':' after ']'";
			return -1;
		}
		port_s = close + 2;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
			*why = "not a numeric IPv6 address";
			return -1;
		}
		if (parse_port(port_s, allow_port0, &port, why) < 0)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		out->len = sizeof(*sin6);
		return 0;
	}

	const char *colon = strrchr(s, ':');
	struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;

	if (colon == NULL) {
		*why = "missing port";
		return -1;
	}
	if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
		/* Without brackets "::1:80" is ambiguous. */
		*why = "IPv6 addresses must be written as [addr]:port";
		return -1;
	}
	hlen = (size_t)(colon - s);
	if (hlen == 0 || hlen >= sizeof(host)) {
		*why = "not a numeric IPv4 address";
		return -1;
	}
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
		*why = "not a numeric IPv4 address";
		return -1;
	}
	if (parse_port(colon + 1, allow_port0, &port, why) < 0)
		return -1;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	out->len = sizeof(*sin);
	return 0;
}

int sluice_addr_parse(const char *s, struct sluice_sockaddr *out, const char **why)
{
	return sluice_addr_parse_ex(s, out, false, why);
}

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static void zero_host_bits(uint8_t *addr, unsigned prefix, unsigned nbytes)
{
	for (unsigned i = 0; i < nbytes; i++) {
		unsigned bit = i * 8;

		if (bit >= prefix)
			addr[i] = 0;
		else if (prefix - bit < 8)
			addr[i] &= (uint8_t)(0xff << (8 - (prefix - bit)));
	}
}

int sluice_cidr_parse(const char *s, struct sluice_cidr *out, const char **why)
{
	const char *dummy;
	char host[HOST_MAX];
	const char *slash;
	size_t hlen;
	unsigned max, prefix;

	if (why == NULL)
		why = &dummy;
	if (s == NULL || *s == '\0') {
		*why = "empty CIDR";
		return -1;
	}
	memset(out, 0, sizeof(*out));
	slash = strchr(s, '/');
	hlen = slash ? (size_t)(slash - s) : strlen(s);
	if (hlen == 0 || hlen >= sizeof(host)) {
		*why = "not a numeric address";
		return -1;
	}
	memcpy(host, s, hlen);
	host[hlen] = '\0';

	if (inet_pton(AF_INET, host, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		*why = "not a numeric address";
		return -1;
	}

	prefix = max;
	if (slash != NULL) {
		const char *p = slash + 1;
		size_t n = 0;

		prefix = 0;
		for (; p[n] != '\0'; n++) {
			if (p[n] < '0' || p[n] > '9' || n >= 3) {
				*why = "bad prefix length";
				return -1;
			}
			prefix = prefix * 10 + (unsigned)(p[n] - '0');
		}
		if (n == 0) {
			*why = "missing prefix length";
			return -1;
		}
		if (prefix > max) {
			*why = max == 32 ? "prefix length out of range (0..32)"
			                 : "prefix length out of range (0..128)";
			return -1;
		}
	}

	/* "::ffff:10.0.0.0/104" is an IPv4 block in disguise; storing it as one
	 * lets plain IPv4 peers match it too. */
	if (out->family == AF_INET6 && prefix >= 96 &&
	    memcmp(out->addr, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
		memmove(out->addr, out->addr + 12, 4);
		memset(out->addr + 4, 0, 12);
		out->family = AF_INET;
		prefix -= 96;
	}

	/* Host bits set ("10.1.2.3/8") are accepted: the operator's intent is
	 * clear and matching compares only the prefix anyway. */
	zero_host_bits(out->addr, prefix, out->family == AF_INET ? 4 : 16);
	out->prefix = prefix;
	return 0;
}

/* The peer's address as (family, bytes), with v4-mapped IPv6 unwrapped so a
 * dual-stack listener's IPv4 clients match IPv4 blocks. */
static int peer_bytes(const struct sockaddr *sa, const uint8_t **bytes)
{
	if (sa == NULL)
		return AF_UNSPEC;
	if (sa->sa_family == AF_INET) {
		*bytes = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
		return AF_INET;
	}
	if (sa->sa_family == AF_INET6) {
		const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;

		if (memcmp(b, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
			*bytes = b + 12;
			return AF_INET;
		}
		*bytes = b;
		return AF_INET6;
	}
	return AF_UNSPEC;
}

bool sluice_cidr_match(const struct sluice_cidr *c, const struct sockaddr *sa)
{
	const uint8_t *b = NULL;
	int fam = peer_bytes(sa, &b);
	unsigned full, rest;

	if (c == NULL || fam == AF_UNSPEC || fam != c->family)
		return false;
	full = c->prefix / 8;
	rest = c->prefix % 8;
	if (memcmp(b, c->addr, full) != 0)
		return false;
	if (rest != 0) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));

		if ((b[full] & mask) != c->addr[full])
			return false;
	}
	return true;
}

bool sluice_cidr_list_match(const struct sluice_cidr *list, unsigned n,
                            const struct sockaddr *sa)
{
	for (unsigned i = 0; i < n; i++)
		if (sluice_cidr_match(&list[i], sa))
			return true;
	return false;
}

void sluice_ipaddr_set(union sluice_ipaddr *out, const struct sockaddr *sa, socklen_t len)
{
	memset(out, 0, sizeof(*out));
	if (sa != NULL && sa->sa_family == AF_INET && len >= sizeof(out->in4))
		memcpy(&out->in4, sa, sizeof(out->in4));
	else if (sa != NULL && sa->sa_family == AF_INET6 && len >= sizeof(out->in6))
		memcpy(&out->in6, sa, sizeof(out->in6));
	else
		out->sa.sa_family = AF_UNSPEC;
}

char *sluice_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (len == 0)
		return buf;
	if (sa != NULL && sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (sa != NULL && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, len, "?");
	}
	return buf;
}

char *sluice_addr_host_str(const struct sockaddr *sa, char *buf, size_t len)
{
	const uint8_t *b = NULL;
	int fam = peer_bytes(sa, &b);

	if (len == 0)
		return buf;
	if (fam == AF_UNSPEC || inet_ntop(fam, b, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
	return buf;
}
