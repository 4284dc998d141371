/* Kernel TLS (see ktls.h).  Owns the kernel probe, the TLS 1.3 receive-key
 * installation (HKDF-Expand-Label from the client traffic secret,
 * RFC 8446 7.1/7.3) and the reading of non-data records.
 *
 * Facts this relies on, measured in the VM (design.md): with read-ahead off
 * (OpenSSL's default) OpenSSL stops reading exactly at the client's
 * Finished, so whatever follows is still in the socket and decrypts under
 * the key installed with record sequence 0; a TLS 1.3 KeyUpdate cannot be
 * followed on kernels without the rekey series (6.1 answers EBUSY; 6.14
 * and later take a new key through the same socket options, measured on
 * 7.3 in the VM). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/tls.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>

#include "ktls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define ULP_FILE "/proc/sys/net/ipv4/tcp_available_ulp"

static int secret_idx = -1;

bool sluice_ktls_available(char *why, size_t len)
{
	char buf[256];
	FILE *f = fopen(ULP_FILE, "r");
	bool found = false;

	if (!f) {
		if (errno == ENOENT)
			snprintf(why, len, "no %s: this kernel offers no TCP ULP (built without CONFIG_TLS)",
			         ULP_FILE);
		else
			snprintf(why, len, "cannot read %s: %s", ULP_FILE, strerror(errno));
		return false;
	}
	if (fgets(buf, sizeof(buf), f)) {
		char *save = NULL, *tok;

		for (tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save))
			if (strcmp(tok, "tls") == 0)
				found = true;
	}
	fclose(f);
	if (!found)
		snprintf(why, len, "tls ULP not in %s (kernel without CONFIG_TLS, or module tls not loaded)",
		         ULP_FILE);
	return found;
}

bool sluice_ktls_can_rekey(void)
{
	char line[128];
	FILE *f = fopen("/proc/net/tls_stat", "r");
	bool yes = false;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "TlsRxRekeyOk", 12) == 0)
			yes = true;
	fclose(f);
	return yes;
}

/* ---- capturing the client traffic secret ---- */

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Hex to bytes; returns the count, stopping at the first non-hex pair. */
static size_t unhex(const char *hex, unsigned char *out, size_t cap)
{
	size_t n = 0;

	for (; hex[0] && hex[1] && n < cap; hex += 2) {
		int hi = hexval(hex[0]), lo = hexval(hex[1]);

		if (hi < 0 || lo < 0)
			break;
		out[n++] = (unsigned char)(hi << 4 | lo);
	}
	return n;
}

/* OpenSSL calls this with "LABEL CLIENT_RANDOM SECRET" (NSS key log
 * format); only the first application traffic secrets are kept: the
 * client's for the receive key, the server's for rekeying the send key
 * that OpenSSL installed from it. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ", server[] = "SERVER_TRAFFIC_SECRET_0 ";
	struct sluice_ktls_secret *s = SSL_get_ex_data(ssl, secret_idx);
	bool is_client = strncmp(line, client, sizeof(client) - 1) == 0;
	const char *hex;

	if (!s || (!is_client && strncmp(line, server, sizeof(server) - 1) != 0))
		return;
	hex = strchr(line + sizeof(client) - 1, ' ');   /* both labels are as long */
	if (!hex)
		return;
	if (is_client) {
		s->len = unhex(hex + 1, s->client, sizeof(s->client));
	} else {
		size_t n = unhex(hex + 1, s->server, sizeof(s->server));

		s->have_server = n > 0;
	}
}

int sluice_ktls_init(void)
{
	if (secret_idx < 0)
		secret_idx = SSL_get_ex_new_index(0, "sluice ktls secret", NULL, NULL, NULL);
	return secret_idx < 0 ? -1 : 0;
}

void sluice_ktls_ctx_enable(SSL_CTX *ctx)
{
	SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
}

int sluice_ktls_attach(SSL *ssl, struct sluice_ktls_secret *secret)
{
	return SSL_set_ex_data(ssl, secret_idx, secret) == 1 ? 0 : -1;
}

/* ---- installing the TLS 1.3 receive key ---- */

/* HKDF-Expand-Label(secret, label, "", out_len) of RFC 8446 7.1. */
static int hkdf_expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen,
                             const char *label, unsigned char *out, size_t olen)
{
	unsigned char info[2 + 1 + 6 + 32 + 1];
	size_t ll = strlen(label), i = 0;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY, ok = 0;
	EVP_KDF *kdf;
	EVP_KDF_CTX *kctx = NULL;
	OSSL_PARAM params[5];

	if (ll > 32)
		return 0;
	info[i++] = (unsigned char)(olen >> 8);
	info[i++] = (unsigned char)olen;
	info[i++] = (unsigned char)(6 + ll);
	memcpy(info + i, "tls13 ", 6);
	i += 6;
	memcpy(info + i, label, ll);
	i += ll;
	info[i++] = 0;  /* empty context */

	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	if (kdf)
		kctx = EVP_KDF_CTX_new(kdf);
	if (kctx) {
		params[0] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
		params[1] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
		                                             (char *)EVP_MD_get0_name(md), 0);
		params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen);
		params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, i);
		params[4] = OSSL_PARAM_construct_end();
		ok = EVP_KDF_derive(kctx, out, olen, params) == 1;
	}
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return ok;
}

/* Installs a TLS 1.3 key derived from one traffic secret (RFC 8446 7.3)
 * with record sequence 0 as the socket's receive (TLS_RX) or send (TLS_TX)
 * key: the first receive key, and every key after a KeyUpdate. */
static int install13(const struct sluice_ktls_secret *s, int fd, const unsigned char *secret, int optname,
                     char *why, size_t whylen)
{
	const EVP_MD *md = s->md;
	uint16_t id = s->suite;
	size_t slen = s->len, klen = id == 0x1301 ? 16 : 32;
	unsigned char key[32], iv[12];
	union {
		struct tls12_crypto_info_aes_gcm_128 g128;
		struct tls12_crypto_info_aes_gcm_256 g256;
		struct tls12_crypto_info_chacha20_poly1305 cc;
	} ci;
	socklen_t cilen;
	int rc = -1;

	memset(&ci, 0, sizeof(ci));
	if (id != 0x1301 && id != 0x1302 && id != 0x1303) {
		snprintf(why, whylen, "cipher 0x%04x has no kernel offload", id);
		return -1;
	}
	if (!md || slen != (size_t)EVP_MD_get_size(md)) {
		snprintf(why, whylen, "%s traffic secret not captured", optname == TLS_RX ? "client" : "server");
		return -1;
	}
	if (!hkdf_expand_label(md, secret, slen, "key", key, klen) ||
	    !hkdf_expand_label(md, secret, slen, "iv", iv, sizeof(iv))) {
		snprintf(why, whylen, "HKDF-Expand-Label failed");
		goto out;
	}
	/* rec_seq stays 0: the first record under a new traffic key, after
	 * Finished or after a KeyUpdate, is number 0 (RFC 8446 5.3). */
	switch (id) {
	case 0x1301:  /* TLS_AES_128_GCM_SHA256: 4-byte salt + 8-byte explicit iv */
		ci.g128.info.version = TLS_1_3_VERSION;
		ci.g128.info.cipher_type = TLS_CIPHER_AES_GCM_128;
		memcpy(ci.g128.key, key, 16);
		memcpy(ci.g128.salt, iv, 4);
		memcpy(ci.g128.iv, iv + 4, 8);
		cilen = sizeof(ci.g128);
		break;
	case 0x1302:  /* TLS_AES_256_GCM_SHA384 */
		ci.g256.info.version = TLS_1_3_VERSION;
		ci.g256.info.cipher_type = TLS_CIPHER_AES_GCM_256;
		memcpy(ci.g256.key, key, 32);
		memcpy(ci.g256.salt, iv, 4);
		memcpy(ci.g256.iv, iv + 4, 8);
		cilen = sizeof(ci.g256);
		break;
	default:      /* TLS_CHACHA20_POLY1305_SHA256: the whole 12-byte iv, no salt */
		ci.cc.info.version = TLS_1_3_VERSION;
		ci.cc.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(ci.cc.key, key, 32);
		memcpy(ci.cc.iv, iv, 12);
		cilen = sizeof(ci.cc);
		break;
	}
	/* OpenSSL set the ULP when it offloaded sending; set it otherwise. */
	{
		char ulp[16] = "";
		socklen_t ul = sizeof(ulp);

		if ((getsockopt(fd, IPPROTO_TCP, TCP_ULP, ulp, &ul) < 0 || strcmp(ulp, "tls") != 0) &&
		    setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) < 0) {
			snprintf(why, whylen, "TCP_ULP tls: %s", strerror(errno));
			goto out;
		}
	}
	if (setsockopt(fd, SOL_TLS, optname, &ci, cilen) < 0) {
		/* ENOPROTOOPT: no tls ULP; EINVAL/ENOTSUPP: cipher not built into
		 * this kernel (e.g. chacha20poly1305 module absent); EBUSY: a key
		 * is set and this kernel cannot replace it (before 6.14). */
		snprintf(why, whylen, "setsockopt %s: %s", optname == TLS_RX ? "TLS_RX" : "TLS_TX",
		         strerror(errno));
		goto out;
	}
	rc = 0;
out:
	OPENSSL_cleanse(&ci, sizeof(ci));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(iv, sizeof(iv));
	return rc;
}

void sluice_ktls_engage(SSL *ssl, int fd, struct sluice_ktls_secret *secret, bool *tx, bool *rx,
                        char *why, size_t whylen)
{
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);

	/* What install13 and every rekey need, kept so that OpenSSL's state
	 * can go once the kernel has both directions.  The digest is
	 * libcrypto's process-wide EVP_MD for the suite, not owned by the SSL. */
	secret->md = cipher ? SSL_CIPHER_get_handshake_digest(cipher) : NULL;
	secret->suite = cipher ? SSL_CIPHER_get_protocol_id(cipher) : 0;
	*tx = BIO_get_ktls_send(SSL_get_wbio(ssl)) == 1;
	*rx = BIO_get_ktls_recv(SSL_get_rbio(ssl)) == 1;
	why[0] = 0;
	if (SSL_version(ssl) == TLS1_3_VERSION && !*rx) {
		if (!*tx)
			snprintf(why, whylen, "OpenSSL did not offload sending (cipher or kernel)");
		else if (SSL_has_pending(ssl))
			/* Bytes already in OpenSSL's buffer would be skipped. */
			snprintf(why, whylen, "OpenSSL holds unread data");
		else if (install13(secret, fd, secret->client, TLS_RX, why, whylen) == 0)
			*rx = true;
	} else if (!*tx || !*rx) {
		snprintf(why, whylen, "OpenSSL offloaded %s", *tx ? "sending only" : *rx ? "receiving only" : "nothing");
	}
}

/* ---- TLS 1.3 KeyUpdate ---- */

int sluice_ktls_rekey(int fd, struct sluice_ktls_secret *secret, bool tx, char *why, size_t whylen)
{
	const EVP_MD *md = secret->md;
	unsigned char *cur = tx ? secret->server : secret->client;
	unsigned char next[EVP_MAX_MD_SIZE];
	int rc = -1;

	if (!md || secret->len == 0 || secret->len > sizeof(next) || (tx && !secret->have_server)) {
		snprintf(why, whylen, "%s traffic secret not held", tx ? "server" : "client");
		return -1;
	}
	/* application_traffic_secret_N+1 (RFC 8446 7.2) */
	if (!hkdf_expand_label(md, cur, secret->len, "traffic upd", next, secret->len)) {
		snprintf(why, whylen, "HKDF-Expand-Label failed");
		goto out;
	}
	if (install13(secret, fd, next, tx ? TLS_TX : TLS_RX, why, whylen) < 0)
		goto out;
	memcpy(cur, next, secret->len);
	rc = 0;
out:
	OPENSSL_cleanse(next, sizeof(next));
	return rc;
}

/* One record of the given type through the kernel's send path. */
static int send_record(int fd, unsigned char type, const void *buf, size_t len)
{
	union {
		char b[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b, .msg_controllen = sizeof(cbuf.b),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	ssize_t n;

	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*CMSG_DATA(cm) = type;
	/* A record type in the cmsg first closes any data record the kernel
	 * holds open (splice with more to come), so this one cannot land in
	 * the middle of it.  EAGAIN comes before anything is taken: a few
	 * bytes fit in one record and are copied whole or not at all. */
	do
		n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n >= 0 && (size_t)n != len) {
		errno = EIO;   /* never seen: a short control record cannot be finished */
		return -1;
	}
	return n < 0 ? -1 : 0;
}

int sluice_ktls_send_keyupdate(int fd)
{
	/* HandshakeType key_update (24), length 1, update_not_requested (0) */
	static const unsigned char msg[5] = { SLUICE_TLS_KEY_UPDATE, 0, 0, 1, 0 };

	return send_record(fd, SLUICE_TLS_HANDSHAKE, msg, sizeof(msg));
}

/* ---- non-data records ---- */

ssize_t sluice_ktls_recv_record(int fd, unsigned char *buf, size_t len, int *type)
{
	union {
		char b[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b, .msg_controllen = sizeof(cbuf.b),
	};
	struct cmsghdr *cm;
	ssize_t n;

	*type = -1;
	do
		n = recvmsg(fd, &msg, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE)
			*type = *(unsigned char *)CMSG_DATA(cm);
	return n;
}

int sluice_ktls_send_alert(int fd, unsigned char level, unsigned char desc)
{
	unsigned char alert[2] = { level, desc };

	return send_record(fd, SLUICE_TLS_ALERT, alert, sizeof(alert));
}

const char *sluice_ktls_alert_name(int desc)
{
	return SSL_alert_desc_string_long(desc);
}
