/* Shared helpers for the test tools (tools/echo.c, tools/client.c): address
 * parsing, the deterministic byte stream both sides agree on, SHA-256 in hex,
 * a monotonic clock.  Header-only: each tool is a single translation unit. */
#ifndef SLUICE_TOOLKIT_H
#define SLUICE_TOOLKIT_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/evp.h>

/* "1.2.3.4:port" or "[v6]:port" -> sockaddr.  0 on success, -1 on bad input. */
static inline int tk_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *port;
	size_t hl;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':')
			return -1;
		hl = (size_t)(end - s - 1);
		if (hl == 0 || hl >= sizeof(host))
			return -1;
		memcpy(host, s + 1, hl);
		host[hl] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || strchr(s, ':') != colon)
			return -1;
		hl = (size_t)(colon - s);
		if (hl == 0 || hl >= sizeof(host))
			return -1;
		memcpy(host, s, hl);
		host[hl] = '\0';
		port = colon + 1;
	}
	char *ep;
	errno = 0;
	unsigned long p = strtoul(port, &ep, 10);
	if (errno || *port == '\0' || *ep != '\0' || p > 65535)
		return -1;

	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)p);
		*len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*in6);
		return 0;
	}
	return -1;
}

/* sockaddr -> "1.2.3.4:port" / "[v6]:port"; host only (no brackets) with port_too = 0. */
static inline void tk_format_addr(const struct sockaddr_storage *ss, char *out, size_t n, int port_too)
{
	char host[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		if (!inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)))
			snprintf(host, sizeof(host), "?");
		if (port_too)
			snprintf(out, n, "[%s]:%u", host, ntohs(a->sin6_port));
		else
			snprintf(out, n, "%s", host);
	} else {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		if (!inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)))
			snprintf(host, sizeof(host), "?");
		if (port_too)
			snprintf(out, n, "%s:%u", host, ntohs(a->sin_port));
		else
			snprintf(out, n, "%s", host);
	}
}

/* Strict unsigned parse ("123"; K/M/G suffixes = KiB/MiB/GiB).  -1 on bad input. */
static inline int tk_parse_u64(const char *s, uint64_t *out)
{
	char *ep;
	if (!s || *s == '\0' || *s == '-')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &ep, 10);
	if (errno || ep == s)
		return -1;
	uint64_t mul = 1;
	if (*ep == 'K' || *ep == 'k') mul = 1ULL << 10, ep++;
	else if (*ep == 'M' || *ep == 'm') mul = 1ULL << 20, ep++;
	else if (*ep == 'G' || *ep == 'g') mul = 1ULL << 30, ep++;
	if (*ep != '\0' || (mul > 1 && v > UINT64_MAX / mul))
		return -1;
	*out = (uint64_t)v * mul;
	return 0;
}

/* The deterministic byte stream: splitmix64 from the seed, each output word
 * emitted little-endian.  Position-exact: any chunking yields the same bytes,
 * so echo --source N --seed S and client --send N --seed S agree.
 * Seed 0 is a stream of zero bytes: every shift of it is itself, so a
 * test that forges TCP segments at other offsets of the stream (the
 * sockmap overlap test) stays consistent, and a byte delivered twice
 * shows as a stream too long. */
struct tk_prng {
	uint64_t state;
	uint8_t word[8];
	unsigned used;  /* bytes of word[] already handed out; 8 = empty */
	bool zero;
};

static inline void tk_prng_init(struct tk_prng *p, uint64_t seed)
{
	p->state = seed;
	p->used = 8;
	p->zero = seed == 0;
}

static inline uint64_t tk_splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline void tk_prng_fill(struct tk_prng *p, uint8_t *buf, size_t n)
{
	if (p->zero) {
		memset(buf, 0, n);
		return;
	}
	while (n > 0 && p->used < 8) {
		*buf++ = p->word[p->used++];
		n--;
	}
	while (n >= 8) {
		uint64_t v = tk_splitmix64(&p->state);
		for (int i = 0; i < 8; i++)
			buf[i] = (uint8_t)(v >> (8 * i));
		buf += 8;
		n -= 8;
	}
	if (n > 0) {
		uint64_t v = tk_splitmix64(&p->state);
		for (int i = 0; i < 8; i++)
			p->word[i] = (uint8_t)(v >> (8 * i));
		p->used = 0;
		while (n > 0) {
			*buf++ = p->word[p->used++];
			n--;
		}
	}
}

/* SHA-256 context helpers; abort on allocation failure (test tool). */
static inline EVP_MD_CTX *tk_sha_new(void)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
		fprintf(stderr, "sha256 init failed\n");
		abort();
	}
	return c;
}

static inline void tk_sha_update(EVP_MD_CTX *c, const void *b, size_t n)
{
	if (n > 0 && EVP_DigestUpdate(c, b, n) != 1) {
		fprintf(stderr, "sha256 update failed\n");
		abort();
	}
}

/* Finishes into hex (65 bytes) without consuming ctx (works on a copy). */
static inline void tk_sha_hex(EVP_MD_CTX *c, char hex[65])
{
	unsigned char md[32];
	unsigned int len = 0;
	EVP_MD_CTX *tmp = EVP_MD_CTX_new();
	if (!tmp || EVP_MD_CTX_copy_ex(tmp, c) != 1 || EVP_DigestFinal_ex(tmp, md, &len) != 1 || len != 32) {
		fprintf(stderr, "sha256 final failed\n");
		abort();
	}
	EVP_MD_CTX_free(tmp);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static inline uint64_t tk_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
