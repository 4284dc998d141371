/* TLS context and diagnostics.  Owns nothing per connection: the handshake
 * and record I/O are driven by the connection code (src/conn.c) and the
 * relay (src/relay.c). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"

#define READ_AHEAD_BYTES (64 * 1024)

static void openssl_reason(char *err, size_t errlen, const char *what, const char *path)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	snprintf(err, errlen, "%s %s: %s", what, path, r ? r : "unknown OpenSSL error");
	ERR_clear_error();
}

static int load_crl(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	X509_LOOKUP *lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());

	if (!lookup || X509_load_crl_file(lookup, path, X509_FILETYPE_PEM) <= 0) {
		openssl_reason(err, errlen, "tls.crl: cannot load", path);
		return -1;
	}
	/* CRL_CHECK checks the leaf only: client certs are leaves of our CA; an
	 * intermediate revocation would need CRL_CHECK_ALL and CRLs for every
	 * level, which operators rarely have. */
	X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
	return 0;
}

SSL_CTX *sluice_tls_server_ctx(const struct sluice_tls_cfg *cfg, SSL_verify_cb verify_cb,
                               sluice_session_admit_fn admit, char *err, size_t errlen)
{
	static const unsigned char sid_ctx[] = "sluice";
	STACK_OF(X509_NAME) *cas;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx) {
		openssl_reason(err, errlen, "tls:", "SSL_CTX_new");
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
		goto fail_ossl;
	/* AEADs the kernel can offload, and nothing weaker: AES-GCM and
	 * ChaCha20-Poly1305 with forward secrecy (CCM and CBC suites have no
	 * kTLS path here and no reason to be offered). */
	if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:"
	                                   "TLS_CHACHA20_POLY1305_SHA256") ||
	    !SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20"))
		goto fail_ossl;
	/* Renegotiation is a DoS lever and kTLS cannot follow it: refuse it.
	 * Server cipher preference so our AEAD order (AES-GCM first, which the
	 * kernel offloads) wins. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	                         SSL_OP_NO_COMPRESSION);
	/* Resumption through sluice's session cache (session.c: a stateless
	 * ticket would carry the certificate in DER, and decoding it again
	 * cost more than the rest of a resumed handshake).  SSL_OP_NO_TICKET
	 * makes TLS 1.3 tickets stateful (they name a cache entry) and TLS 1.2
	 * use session IDs.  The verify callback (which admits) does not run
	 * for a resumed session, so the cache's lookup admits those from the
	 * certificate the session holds; one ticket per handshake (TLS 1.3
	 * sends two by default) halves the entries.  A restart empties the
	 * cache. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	if (cfg->tickets) {
		SSL_CTX_set_num_tickets(ctx, 1);
		SSL_CTX_set_timeout(ctx, (long)(cfg->ticket_lifetime_ms / 1000));
		if (sluice_session_cache_attach(ctx, cfg->session_cache, admit, err, errlen) < 0)
			goto fail;
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_num_tickets(ctx, 0);
	}
	/* Partial writes let the relay hand SSL_write whatever it has; moving
	 * buffer because a retried write may come from a refilled buffer. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                      SSL_MODE_RELEASE_BUFFERS);
	/* With read-ahead (userspace datapath, after the handshake) one read()
	 * fills this buffer: 64 KiB takes four full records per syscall
	 * instead of one.  Held only while bytes are in flight
	 * (RELEASE_BUFFERS), so an idle connection does not pay for it. */
	SSL_CTX_set_default_read_buffer_len(ctx, READ_AHEAD_BYTES);

	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
		openssl_reason(err, errlen, "tls.cert: cannot load", cfg->cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
		openssl_reason(err, errlen, "tls.key: cannot load", cfg->key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		openssl_reason(err, errlen, "tls.key: does not match", cfg->cert);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca, NULL) != 1) {
		openssl_reason(err, errlen, "tls.ca: cannot load", cfg->ca);
		goto fail;
	}
	cas = SSL_load_client_CA_file(cfg->ca);
	if (!cas) {
		openssl_reason(err, errlen, "tls.ca: no CA names in", cfg->ca);
		goto fail;
	}
	SSL_CTX_set_client_CA_list(ctx, cas);
	if (cfg->crl && load_crl(ctx, cfg->crl, err, errlen) < 0)
		goto fail;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	SSL_CTX_set_verify_depth(ctx, (int)(cfg->verify_depth ? cfg->verify_depth : 4));
	return ctx;

fail_ossl:
	openssl_reason(err, errlen, "tls:", "context setup");
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

bool sluice_tls_revoked(SSL_CTX *ctx, X509 *cert)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	STACK_OF(X509_OBJECT) *objs;
	bool revoked = false;
	int i;

	/* The CRLs were loaded into the store at start; the store's lock
	 * because the stack belongs to every worker's verifications. */
	if (!X509_STORE_lock(store))
		return true;    /* cannot tell: fail closed (a full handshake decides) */
	objs = X509_STORE_get0_objects(store);
	for (i = 0; i < sk_X509_OBJECT_num(objs) && !revoked; i++) {
		X509_OBJECT *o = sk_X509_OBJECT_value(objs, i);
		X509_CRL *crl = X509_OBJECT_get0_X509_CRL(o);
		X509_REVOKED *r;

		if (X509_OBJECT_get_type(o) == X509_LU_CRL && crl &&
		    X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_issuer_name(cert)) == 0 &&
		    X509_CRL_get0_by_cert(crl, &r, cert) == 1)
			revoked = true;
	}
	X509_STORE_unlock(store);
	return revoked;
}

bool sluice_tls_cert_current(X509 *cert)
{
	return X509_cmp_current_time(X509_get0_notBefore(cert)) < 0 &&
	       X509_cmp_current_time(X509_get0_notAfter(cert)) > 0;
}

const char *sluice_tls_error_reason(SSL *ssl, int ret, char *buf, size_t len)
{
	int e = SSL_get_error(ssl, ret);
	unsigned long oe = ERR_peek_last_error();
	long vr = SSL_get_verify_result(ssl);

	if (vr != X509_V_OK) {
		snprintf(buf, len, "%s", X509_verify_cert_error_string(vr));
	} else if (oe) {
		const char *r = ERR_reason_error_string(oe);

		snprintf(buf, len, "%s", r ? r : "unknown error");
	} else if (e == SSL_ERROR_SYSCALL) {
		/* No OpenSSL error and no errno: the peer closed the TCP stream. */
		snprintf(buf, len, "%s", errno ? strerror(errno) : "unexpected eof");
	} else if (e == SSL_ERROR_ZERO_RETURN) {
		snprintf(buf, len, "close_notify during handshake");
	} else {
		snprintf(buf, len, "ssl error %d", e);
	}
	ERR_clear_error();
	return buf;
}
