/* libFuzzer target: identity extraction from arbitrary certificates.
 *
 * The input is DER; whatever d2i_X509() accepts goes to
 * sluice_identity_from_cert() (no chain verification first: the identity
 * code must be safe on any certificate OpenSSL will decode), and the
 * identity is then matched against fixed clients[] entries and against
 * entries made from its own names, named with sluice_identity_name(), and
 * cleared.  Checked properties:
 *   - every kept name is 1..SLUICE_ID_NAME_MAX bytes with no NUL (by
 *     construction of C strings: strlen == the kept length), at most
 *     SLUICE_ID_MAX_NAMES of each kind;
 *   - an entry made from one of the identity's own names matches it, and
 *     sluice_identity_name() for that entry is "KIND=<a name the identity
 *     has>", never truncated in a SLUICE_ID_NAME_LEN buffer;
 *   - sluice_identity_find_client() returns the first matching entry;
 *   - with a peer address set, "IP=" entries match by CIDR and are named
 *     "IP=<host>". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "identity.h"

#define CHECK(cond)                                                                \
	do {                                                                       \
		if (!(cond)) {                                                     \
			fprintf(stderr, "fuzz_identity: invariant failed: %s (%s:%d)\n", \
			        #cond, __FILE__, __LINE__);                            \
			abort();                                                   \
		}                                                                  \
	} while (0)

#define MAX_ENTRIES 16

static void check_name_ok(const char *n)
{
	size_t len;

	CHECK(n != NULL);
	len = strlen(n);
	CHECK(len >= 1 && len <= SLUICE_ID_NAME_MAX);
}

static bool has_name(char *const *names, unsigned n, const char *v, bool icase)
{
	for (unsigned i = 0; i < n; i++)
		if (icase ? strcasecmp(names[i], v) == 0 : strcmp(names[i], v) == 0)
			return true;
	return false;
}

/* The name an entry gives this identity, checked against what it must be. */
static void check_named(const struct sluice_identity *id, const struct sluice_client_cfg *c)
{
	char buf[SLUICE_ID_NAME_LEN];
	char host[64];

	memset(buf, 'x', sizeof(buf));
	sluice_identity_name(id, c, buf, sizeof(buf));
	CHECK(memchr(buf, '\0', sizeof(buf)) != NULL);
	CHECK(strlen(buf) < sizeof(buf) - 1);   /* never filled: not truncated */

	switch (c->kind) {
	case SLUICE_ID_CN:
		CHECK(id->cn != NULL && strncmp(buf, "CN=", 3) == 0 && strcmp(buf + 3, id->cn) == 0);
		return;
	case SLUICE_ID_URI:
		CHECK(strncmp(buf, "URI=", 4) == 0 && has_name(id->uris, id->n_uris, buf + 4, false));
		return;
	case SLUICE_ID_DNS:
		CHECK(strncmp(buf, "DNS=", 4) == 0 && has_name(id->dns, id->n_dns, buf + 4, false));
		CHECK(strcasecmp(buf + 4, c->value) == 0);
		return;
	case SLUICE_ID_ANY:
		if (id->cn != NULL)
			CHECK(strncmp(buf, "CN=", 3) == 0 && strcmp(buf + 3, id->cn) == 0);
		else if (id->n_uris > 0)
			CHECK(strncmp(buf, "URI=", 4) == 0 && strcmp(buf + 4, id->uris[0]) == 0);
		else if (id->n_dns > 0)
			CHECK(strncmp(buf, "DNS=", 4) == 0 && strcmp(buf + 4, id->dns[0]) == 0);
		else if (id->has_peer)
			CHECK(strncmp(buf, "IP=", 3) == 0);
		else
			CHECK(strcmp(buf, "*") == 0);
		return;
	case SLUICE_ID_IP:
		CHECK(id->has_peer);
		sluice_addr_host_str((const struct sockaddr *)&id->peer.ss, host, sizeof(host));
		CHECK(strncmp(buf, "IP=", 3) == 0 && strcmp(buf + 3, host) == 0);
		return;
	}
}

static void run_entries(const struct sluice_identity *id, struct sluice_client_cfg *entries,
                        unsigned n)
{
	struct sluice_config cfg;
	int first = -1;

	for (unsigned i = 0; i < n; i++) {
		bool m = sluice_identity_match(id, &entries[i]);
		char buf[16];

		if (m) {
			if (first < 0)
				first = (int)i;
			check_named(id, &entries[i]);
		} else {
			/* Any entry, even a non-matching one (a caller bug),
			 * must produce a terminated name in any buffer. */
			memset(buf, 'x', sizeof(buf));
			sluice_identity_name(id, &entries[i], buf, sizeof(buf));
			CHECK(memchr(buf, '\0', sizeof(buf)) != NULL);
		}
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.clients = entries;
	cfg.n_clients = n;
	CHECK(sluice_identity_find_client(&cfg, id) == first);
}

static void one_identity(struct sluice_identity *id)
{
	struct sluice_client_cfg e[MAX_ENTRIES];
	char upper[SLUICE_ID_NAME_MAX + 1];
	unsigned n = 0;

	memset(e, 0, sizeof(e));
	/* Fixed entries, in the order an operator might write them. */
	e[n].kind = SLUICE_ID_CN, e[n++].value = "alice";
	e[n].kind = SLUICE_ID_URI, e[n++].value = "spiffe://sluice.test/*";
	e[n].kind = SLUICE_ID_URI, e[n++].value = "spiffe://sluice.test/alice";
	e[n].kind = SLUICE_ID_DNS, e[n++].value = "ALICE.sluice.test";
	e[n].kind = SLUICE_ID_CN, e[n++].value = NULL;      /* defensive: never matches */
	e[n].kind = SLUICE_ID_URI, e[n++].value = NULL;
	e[n].kind = SLUICE_ID_DNS, e[n++].value = NULL;
	e[n].kind = SLUICE_ID_IP;
	CHECK(sluice_cidr_parse("10.0.0.0/8", &e[n++].cidr, NULL) == 0);
	e[n].kind = SLUICE_ID_IP;
	CHECK(sluice_cidr_parse("2001:db8::/32", &e[n++].cidr, NULL) == 0);
	e[n].kind = (enum sluice_id_kind)99, e[n++].value = "x";  /* unknown kind: matches nobody */
	CHECK(!sluice_identity_match(id, &e[n - 1]));

	/* Entries made from the identity's own names must match it. */
	if (id->cn != NULL) {
		e[n].kind = SLUICE_ID_CN, e[n].value = id->cn;
		CHECK(sluice_identity_match(id, &e[n++]));
	}
	if (id->n_uris > 0) {
		e[n].kind = SLUICE_ID_URI, e[n].value = id->uris[id->n_uris - 1];
		CHECK(sluice_identity_match(id, &e[n++]));
	}
	if (id->n_dns > 0) {
		const char *d = id->dns[id->n_dns - 1];
		size_t i;

		for (i = 0; d[i] != '\0'; i++)
			upper[i] = d[i] >= 'a' && d[i] <= 'z' ? (char)(d[i] - 'a' + 'A') : d[i];
		upper[i] = '\0';
		e[n].kind = SLUICE_ID_DNS, e[n].value = upper;
		CHECK(sluice_identity_match(id, &e[n++]));
	}
	e[n++].kind = SLUICE_ID_ANY;
	CHECK(n <= MAX_ENTRIES);
	run_entries(id, e, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const unsigned char *p = data;
	struct sluice_identity id;
	struct sockaddr_in peer;
	X509 *cert;

	cert = d2i_X509(NULL, &p, (long)size);
	if (cert == NULL)
		return 0;

	if (sluice_identity_from_cert(&id, cert) == 0) {
		if (id.cn != NULL)
			check_name_ok(id.cn);
		CHECK(id.n_uris <= SLUICE_ID_MAX_NAMES && id.n_dns <= SLUICE_ID_MAX_NAMES);
		for (unsigned i = 0; i < id.n_uris; i++)
			check_name_ok(id.uris[i]);
		for (unsigned i = 0; i < id.n_dns; i++)
			check_name_ok(id.dns[i]);
		CHECK(!id.has_peer);

		one_identity(&id);

		/* The same names with a source address, as a tcp listener's
		 * "*" or an IP= entry would see it. */
		memset(&peer, 0, sizeof(peer));
		peer.sin_family = AF_INET;
		peer.sin_addr.s_addr = htonl(0x0a010203);  /* 10.1.2.3 */
		memcpy(&id.peer.ss, &peer, sizeof(peer));
		id.peer.len = sizeof(peer);
		id.has_peer = true;
		one_identity(&id);

		sluice_identity_clear(&id);
		CHECK(id.cn == NULL && id.n_uris == 0 && id.n_dns == 0);

		/* A tcp listener's identity: the source address only. */
		sluice_identity_from_peer(&id, (const struct sockaddr *)&peer);
		CHECK(id.has_peer && id.cn == NULL && id.n_uris == 0 && id.n_dns == 0);
		one_identity(&id);
		sluice_identity_clear(&id);
	}
	X509_free(cert);
	return 0;
}
