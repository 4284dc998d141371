/* TLS: the server-side SSL_CTX for mtls listeners, and the helpers that turn
 * OpenSSL's error state into one short reason for logs. */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

#include "config.h"
#include "session.h"

/* Builds the server context: TLS 1.2 minimum, renegotiation refused, client
 * certificate required and verified against tls.ca (with tls.crl when
 * given), verify_cb installed as the verify callback, and with tls.tickets
 * a session cache whose lookups admit() decides on.  Returns NULL
 * with a reason in err. */
SSL_CTX *sluice_tls_server_ctx(const struct sluice_tls_cfg *cfg, SSL_verify_cb verify_cb,
                               sluice_session_admit_fn admit, char *err, size_t errlen);

/* For a certificate held by a cached session (its chain was verified
 * when the session was made): is it on a CRL loaded from tls.crl now?  Is
 * it inside its validity period now?  A lookup and two time compares, no
 * signature checks. */
bool sluice_tls_revoked(SSL_CTX *ctx, X509 *cert);
bool sluice_tls_cert_current(X509 *cert);

/* After a failed SSL_accept()/SSL_read()/SSL_write() that returned ret:
 * a short reason ("certificate has expired", "peer did not return a
 * certificate", "wrong version number", "unexpected eof while reading")
 * and clears the thread's OpenSSL error queue so it can't leak into the
 * next connection's diagnosis. */
const char *sluice_tls_error_reason(SSL *ssl, int ret, char *buf, size_t len);

#endif
