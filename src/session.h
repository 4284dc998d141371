/* TLS session cache: resumption state kept in memory, shared by the workers.
 *
 * Why not stateless tickets: a ticket carries the client's certificate in
 * DER, and on OpenSSL 3.0 decoding it again (d2i_X509 -> the public key
 * through OSSL_DECODER) cost ~40% of a resumed handshake here, more than
 * the ECDHE.  A cached SSL_SESSION keeps the parsed X509, so resuming is a
 * hash lookup.  Clients still see tickets in TLS 1.3 (OpenSSL's "stateful"
 * tickets, which name a cache entry) and session IDs in TLS 1.2.
 *
 * Every lookup goes through admit(): a cached session resumes only if the
 * connection would be admitted now, from the certificate it holds. */
#ifndef SLUICE_SESSION_H
#define SLUICE_SESSION_H

#include <stddef.h>
#include <openssl/ssl.h>

/* 0: this connection may resume sess; -1: ignore it (full handshake). */
typedef int (*sluice_session_admit_fn)(SSL *ssl, SSL_SESSION *sess);

/* Installs the cache on ctx: at most max_entries sessions (the oldest go
 * first), each until its SSL_SESSION timeout.  The cache is freed with
 * ctx.  Returns 0, or -1 with a reason in err. */
int sluice_session_cache_attach(SSL_CTX *ctx, size_t max_entries, sluice_session_admit_fn admit,
                                char *err, size_t errlen);

/* Drops the session with this ID from ctx's cache, if there: what OpenSSL's
 * SSL_free does for a connection that did not send close_notify, for a
 * connection whose SSL object went away before its end (kTLS both ways). */
void sluice_session_forget(SSL_CTX *ctx, const unsigned char *id, unsigned len);

/* Sessions now held by ctx's cache (0 without one): for tests. */
size_t sluice_session_cache_count(SSL_CTX *ctx);

#endif
