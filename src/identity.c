/* Client identity.  Owns reading names out of a verified certificate (or
 * taking the source address on tcp listeners), matching them against
 * clients[] entries, and the one string that names a client in logs and as
 * its per-client limit key.
 *
 * Every name kept here is a heap copy owned by struct sluice_identity, so an
 * identity outlives the X509 it came from (the SSL object may be freed
 * first).  Names that are empty, hold an embedded NUL, or are longer than
 * SLUICE_ID_NAME_MAX are skipped, never truncated or cut at the NUL: a
 * shortened name could equal another client's name and match its entry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>
#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "identity.h"

static char *name_dup(const unsigned char *s, int len, bool *skipped);
static bool ascii_case_equal(const char *a, const char *b);
static bool uri_match(const char *uri, const char *pattern);
static int read_cn(struct sluice_identity *id, X509 *cert);
static int read_san(struct sluice_identity *id, X509 *cert);

/* A heap copy of a certificate name, or NULL.  *skipped tells "refused by
 * policy" apart from "out of memory" (both return NULL). */
static char *name_dup(const unsigned char *s, int len, bool *skipped)
{
	char *copy;

	*skipped = true;
	if (s == NULL || len <= 0 || len > SLUICE_ID_NAME_MAX)
		return NULL;
	if (memchr(s, '\0', (size_t)len) != NULL)
		return NULL;
	*skipped = false;
	copy = malloc((size_t)len + 1);
	if (copy == NULL)
		return NULL;
	memcpy(copy, s, (size_t)len);
	copy[len] = '\0';
	return copy;
}

/* dNSNames compare case-insensitively (RFC 4343) but only over ASCII:
 * strcasecmp() follows the locale, and a locale must not change who a
 * client is. */
static bool ascii_case_equal(const char *a, const char *b)
{
	for (;; a++, b++) {
		unsigned char x = (unsigned char)*a, y = (unsigned char)*b;

		if (x >= 'A' && x <= 'Z')
			x = (unsigned char)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (unsigned char)(y - 'A' + 'a');
		if (x != y)
			return false;
		if (x == '\0')
			return true;
	}
}

/* Exact, or a prefix when the pattern ends in '*' (only there: a '*'
 * elsewhere is an ordinary character, as SPIFFE IDs may not contain it). */
static bool uri_match(const char *uri, const char *pattern)
{
	size_t plen = strlen(pattern);

	if (plen > 0 && pattern[plen - 1] == '*')
		return strncmp(uri, pattern, plen - 1) == 0;
	return strcmp(uri, pattern) == 0;
}

/* The first subject CN.  Converted to UTF-8 first: a BMPString or
 * UniversalString CN is full of NUL bytes in its raw form. */
static int read_cn(struct sluice_identity *id, X509 *cert)
{
	X509_NAME *subject = X509_get_subject_name(cert);
	X509_NAME_ENTRY *entry;
	unsigned char *utf8 = NULL;
	bool skipped;
	int idx, len;

	if (subject == NULL)
		return 0;
	idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
	if (idx < 0)
		return 0;
	entry = X509_NAME_get_entry(subject, idx);
	if (entry == NULL)
		return 0;
	len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(entry));
	if (len < 0)
		return 0;   /* undecodable string type: no CN rather than a guess */
	id->cn = name_dup(utf8, len, &skipped);
	OPENSSL_free(utf8);
	return (id->cn == NULL && !skipped) ? -1 : 0;
}

static int read_san(struct sluice_identity *id, X509 *cert)
{
	GENERAL_NAMES *names;
	int i, n, rc = 0;

	/* NULL both when absent and when the extension is duplicated or does
	 * not decode; either way the certificate offers no SAN we can trust. */
	names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	if (names == NULL)
		return 0;

	n = sk_GENERAL_NAME_num(names);
	for (i = 0; i < n; i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
		const ASN1_STRING *s;
		char **slot;
		bool skipped;

		if (gn->type == GEN_URI && id->n_uris < SLUICE_ID_MAX_NAMES) {
			s = gn->d.uniformResourceIdentifier;
			slot = &id->uris[id->n_uris];
		} else if (gn->type == GEN_DNS && id->n_dns < SLUICE_ID_MAX_NAMES) {
			s = gn->d.dNSName;
			slot = &id->dns[id->n_dns];
		} else {
			continue;   /* other kinds, or past the cap: ignored */
		}
		*slot = name_dup(ASN1_STRING_get0_data(s), ASN1_STRING_length(s), &skipped);
		if (*slot == NULL) {
			if (skipped)
				continue;
			rc = -1;
			break;
		}
		if (gn->type == GEN_URI)
			id->n_uris++;
		else
			id->n_dns++;
	}
	GENERAL_NAMES_free(names);
	return rc;
}

/* Initialises all of *id (any previous contents are overwritten, not freed:
 * clear it first).  On -1 *id is left cleared. */
int sluice_identity_from_cert(struct sluice_identity *id, X509 *cert)
{
	memset(id, 0, sizeof(*id));
	if (cert == NULL)
		return 0;
	if (read_cn(id, cert) < 0 || read_san(id, cert) < 0) {
		sluice_identity_clear(id);
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

/* Initialises all of *id, like sluice_identity_from_cert(). */
void sluice_identity_from_peer(struct sluice_identity *id, const struct sockaddr *sa)
{
	socklen_t len;

	memset(id, 0, sizeof(*id));
	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET)
		len = sizeof(struct sockaddr_in);
	else if (sa->sa_family == AF_INET6)
		len = sizeof(struct sockaddr_in6);
	else
		return;     /* no IP= entry could match it anyway */
	memcpy(&id->peer.ss, sa, len);
	id->peer.len = len;
	id->has_peer = true;
}

void sluice_identity_clear(struct sluice_identity *id)
{
	unsigned i;

	free(id->cn);
	for (i = 0; i < id->n_uris; i++)
		free(id->uris[i]);
	for (i = 0; i < id->n_dns; i++)
		free(id->dns[i]);
	memset(id, 0, sizeof(*id));
}

bool sluice_identity_match(const struct sluice_identity *id, const struct sluice_client_cfg *c)
{
	unsigned i;

	switch (c->kind) {
	case SLUICE_ID_ANY:
		return true;
	case SLUICE_ID_CN:
		return id->cn != NULL && c->value != NULL && strcmp(id->cn, c->value) == 0;
	case SLUICE_ID_URI:
		if (c->value == NULL)
			return false;
		for (i = 0; i < id->n_uris; i++)
			if (uri_match(id->uris[i], c->value))
				return true;
		return false;
	case SLUICE_ID_DNS:
		if (c->value == NULL)
			return false;
		for (i = 0; i < id->n_dns; i++)
			if (ascii_case_equal(id->dns[i], c->value))
				return true;
		return false;
	case SLUICE_ID_IP:
		return id->has_peer &&
		       sluice_cidr_match(&c->cidr, (const struct sockaddr *)&id->peer.ss);
	}
	return false;   /* an unknown kind matches nobody */
}

int sluice_identity_find_client(const struct sluice_config *cfg, const struct sluice_identity *id)
{
	unsigned i;

	for (i = 0; i < cfg->n_clients; i++)
		if (sluice_identity_match(id, &cfg->clients[i]))
			return (int)i;
	return -1;
}

/* With a buffer of SLUICE_ID_NAME_LEN the name is never truncated, so two
 * clients never share a limit key by accident.  A "*" match on a certificate
 * with no usable name and no peer address is written "*": such clients
 * share the entry's limits. */
void sluice_identity_name(const struct sluice_identity *id, const struct sluice_client_cfg *matched,
                          char *buf, size_t len)
{
	enum sluice_id_kind kind = matched != NULL ? matched->kind : SLUICE_ID_ANY;
	char host[64];
	unsigned i;

	if (len == 0)
		return;

	switch (kind) {
	case SLUICE_ID_CN:
		if (id->cn != NULL) {
			snprintf(buf, len, "CN=%s", id->cn);
			return;
		}
		break;
	case SLUICE_ID_URI:
		for (i = 0; i < id->n_uris; i++)
			if (matched->value != NULL && uri_match(id->uris[i], matched->value)) {
				snprintf(buf, len, "URI=%s", id->uris[i]);
				return;
			}
		break;
	case SLUICE_ID_DNS:
		for (i = 0; i < id->n_dns; i++)
			if (matched->value != NULL && ascii_case_equal(id->dns[i], matched->value)) {
				snprintf(buf, len, "DNS=%s", id->dns[i]);
				return;
			}
		break;
	case SLUICE_ID_ANY:
		if (id->cn != NULL) {
			snprintf(buf, len, "CN=%s", id->cn);
			return;
		}
		if (id->n_uris > 0) {
			snprintf(buf, len, "URI=%s", id->uris[0]);
			return;
		}
		if (id->n_dns > 0) {
			snprintf(buf, len, "DNS=%s", id->dns[0]);
			return;
		}
		break;
	case SLUICE_ID_IP:
		break;
	}

	if (id->has_peer) {
		sluice_addr_host_str((const struct sockaddr *)&id->peer.ss, host, sizeof(host));
		snprintf(buf, len, "IP=%s", host);
		return;
	}
	/* Reached only for "*" on a nameless certificate, or when called with
	 * an entry the identity does not match (a caller bug). */
	snprintf(buf, len, "*");
}
