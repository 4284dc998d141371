/* Who a client is: names read from its verified certificate (or its source
 * address on tcp listeners), and matching them against clients[] entries. */
#ifndef SLUICE_IDENTITY_H
#define SLUICE_IDENTITY_H

#include <openssl/x509.h>
#include <sys/socket.h>

#include "config.h"

#define SLUICE_ID_MAX_NAMES 16
#define SLUICE_ID_NAME_MAX  1024    /* longest name kept, in bytes ("1 KiB") */
/* A buffer for sluice_identity_name() that never truncates ("URI=" + name). */
#define SLUICE_ID_NAME_LEN  (SLUICE_ID_NAME_MAX + 8)

struct sluice_identity {
	char *cn;                           /* NULL if the subject has none */
	char *uris[SLUICE_ID_MAX_NAMES];    /* SAN URIs, in certificate order */
	unsigned n_uris;
	char *dns[SLUICE_ID_MAX_NAMES];     /* SAN dNSNames */
	unsigned n_dns;
	struct sluice_sockaddr peer;        /* source address (tcp listeners) */
	bool has_peer;
};

/* Fills id from a certificate.  Names with embedded NULs or longer than 1 KiB
 * are skipped (never truncated: a truncated name could match another
 * entry).  Returns 0, or -1 on allocation failure. */
int sluice_identity_from_cert(struct sluice_identity *id, X509 *cert);
void sluice_identity_from_peer(struct sluice_identity *id, const struct sockaddr *sa);
void sluice_identity_clear(struct sluice_identity *id);

bool sluice_identity_match(const struct sluice_identity *id, const struct sluice_client_cfg *c);

/* First clients[] entry (config order) that matches, or -1. */
int sluice_identity_find_client(const struct sluice_config *cfg, const struct sluice_identity *id);

/* The name used in logs and as the per-client limit key, following the
 * entry that matched: the CN for CN= entries, the matched URI/DNS name for
 * URI=/DNS= entries, and for "*" the CN, else the first URI, else the first
 * DNS name; "IP=" and tcp "*" use the source address.  Written as
 * "CN=alice", "URI=spiffe://…", "DNS=…", "IP=198.18.0.2". */
void sluice_identity_name(const struct sluice_identity *id, const struct sluice_client_cfg *matched,
                          char *buf, size_t len);

#endif
