/* TLS: the server-side SSL_CTX for mtls listeners, and the helpers that turn
 * OpenSSL's error state into one short reason for logs. */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

#include "config.h"

/* Builds the server context: TLS 1.2 minimum, renegotiation refused, client
 * certificate required and verified against tls.ca (with tls.crl when
 * given), verify_cb installed as the verify callback.  Returns NULL with a
 * reason in err. */
SSL_CTX *sluice_tls_server_ctx(const struct sluice_tls_cfg *cfg, SSL_verify_cb verify_cb,
                               char *err, size_t errlen);

/* After a failed SSL_accept()/SSL_read()/SSL_write() that returned ret:
 * a short reason ("certificate has expired", "peer did not return a
 * certificate", "wrong version number", "unexpected eof while reading")
 * and clears the thread's OpenSSL error queue so it can't leak into the
 * next connection's diagnosis. */
const char *sluice_tls_error_reason(SSL *ssl, int ret, char *buf, size_t len);

#endif
