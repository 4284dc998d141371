/* Kernel TLS (see ktls.h).  Owns the kernel probe, the TLS 1.3 receive-key
 * installation (HKDF-Expand-Label from the client traffic secret,
 * RFC 8446 7.1/7.3) and the reading of non-data records.
 *
 * Facts this relies on, measured in the VM (design.md): with read-ahead off
 * (OpenSSL's default) OpenSSL stops reading exactly at the client's
 * Finished, so whatever follows is still in the socket and decrypts under
 * the key installed with record sequence 0; a TLS 1.3 KeyUpdate cannot be
 * followed on kernels without the rekey series (6.1 answers EBUSY). */
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

/* OpenSSL calls this with "LABEL CLIENT_RANDOM SECRET" (NSS key log
 * format); only the client's first application traffic secret is kept. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	static const char label[] = "CLIENT_TRAFFIC_SECRET_0 ";
	struct sluice_ktls_secret *s = SSL_get_ex_data(ssl, secret_idx);
	const char *hex;
	size_t n = 0;

	if (!s || strncmp(line, label, sizeof(label) - 1) != 0)
		return;
	hex = strchr(line + sizeof(label) - 1, ' ');
	if (!hex)
		return;
	for (hex++; hex[0] && hex[1] && n < sizeof(s->client); hex += 2) {
		int hi = hexval(hex[0]), lo = hexval(hex[1]);

		if (hi < 0 || lo < 0)
			break;
		s->client[n++] = (unsigned char)(hi << 4 | lo);
	}
	s->len = n;
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

static int install_rx13(SSL *ssl, int fd, const struct sluice_ktls_secret *s, char *why, size_t whylen)
{
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	const EVP_MD *md = cipher ? SSL_CIPHER_get_handshake_digest(cipher) : NULL;
	uint16_t id = cipher ? SSL_CIPHER_get_protocol_id(cipher) : 0;
	size_t klen = id == 0x1301 ? 16 : 32;
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
		snprintf(why, whylen, "cipher %s has no kernel offload", cipher ? SSL_CIPHER_get_name(cipher) : "?");
		return -1;
	}
	if (!md || s->len != (size_t)EVP_MD_get_size(md)) {
		snprintf(why, whylen, "client traffic secret not captured");
		return -1;
	}
	if (!hkdf_expand_label(md, s->client, s->len, "key", key, klen) ||
	    !hkdf_expand_label(md, s->client, s->len, "iv", iv, sizeof(iv))) {
		snprintf(why, whylen, "HKDF-Expand-Label failed");
		goto out;
	}
	/* rec_seq stays 0: the first record after Finished is number 0 under
	 * the application traffic key (RFC 8446 5.3). */
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
	if (setsockopt(fd, SOL_TLS, TLS_RX, &ci, cilen) < 0) {
		/* ENOPROTOOPT: no tls ULP; EINVAL/ENOTSUPP: cipher not built into
		 * this kernel (e.g. chacha20poly1305 module absent); EBUSY: set. */
		snprintf(why, whylen, "setsockopt TLS_RX: %s", strerror(errno));
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
	*tx = BIO_get_ktls_send(SSL_get_wbio(ssl)) == 1;
	*rx = BIO_get_ktls_recv(SSL_get_rbio(ssl)) == 1;
	why[0] = 0;
	if (SSL_version(ssl) == TLS1_3_VERSION && !*rx) {
		if (!*tx)
			snprintf(why, whylen, "OpenSSL did not offload sending (cipher or kernel)");
		else if (SSL_has_pending(ssl))
			/* Bytes already in OpenSSL's buffer would be skipped. */
			snprintf(why, whylen, "OpenSSL holds unread data");
		else if (install_rx13(ssl, fd, secret, why, whylen) == 0)
			*rx = true;
	} else if (!*tx || !*rx) {
		snprintf(why, whylen, "OpenSSL offloaded %s", *tx ? "sending only" : *rx ? "receiving only" : "nothing");
	}
	OPENSSL_cleanse(secret, sizeof(*secret));
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
	union {
		char b[CMSG_SPACE(sizeof(unsigned char))];
		struct cmsghdr align;
	} cbuf;
	unsigned char alert[2] = { level, desc };
	struct iovec iov = { .iov_base = alert, .iov_len = sizeof(alert) };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b, .msg_controllen = sizeof(cbuf.b),
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	ssize_t n;

	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*CMSG_DATA(cm) = SLUICE_TLS_ALERT;
	do
		n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == (ssize_t)sizeof(alert) ? 0 : -1;
}

const char *sluice_ktls_alert_name(int desc)
{
	return SSL_alert_desc_string_long(desc);
}
