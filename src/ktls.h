/* Kernel TLS: after OpenSSL's handshake, hand record crypto to the kernel.
 *
 * OpenSSL 3.0 (SSL_OP_ENABLE_KTLS) offloads TLS 1.2 both ways and TLS 1.3
 * only for sending; for TLS 1.3 sluice installs the receive key itself from
 * the client application traffic secret (captured with the keylog callback).
 * Once the receive key is in the kernel, OpenSSL must never read again: the
 * relay splices application data and reads any other record (alert,
 * KeyUpdate) with sluice_ktls_recv_record(). */
#ifndef SLUICE_KTLS_H
#define SLUICE_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

/* TLS record content types (RFC 8446 5.1) */
#define SLUICE_TLS_ALERT      21
#define SLUICE_TLS_HANDSHAKE  22
#define SLUICE_TLS_APP_DATA   23
#define SLUICE_TLS_KEY_UPDATE 24   /* handshake message type */

/* Maximum consecutive KeyUpdates without application data in between
 * before a client is refused (BoringSSL's kMaxKeyUpdates): each one costs
 * two key derivations and, when a reply is requested, a record. */
#define SLUICE_KTLS_MAX_KEYUPDATES 32

/* The TLS 1.3 application traffic secrets, as the keylog callback saw
 * them: held from the handshake until the receive key is installed, and
 * beyond that only where the kernel can rekey (each KeyUpdate derives the
 * next secret from the current one, RFC 8446 7.2).  Wiped when dropped. */
struct sluice_ktls_secret {
	unsigned char client[EVP_MAX_MD_SIZE];  /* client_application_traffic_secret_N */
	unsigned char server[EVP_MAX_MD_SIZE];  /* server_application_traffic_secret_N */
	size_t len;                             /* both: the suite's hash length; 0 = none */
	bool have_server;
	const EVP_MD *md;                       /* the suite's hash, set by sluice_ktls_engage */
	uint16_t suite;                         /* its TLS 1.3 id, e.g. 0x1301 */
};

/* Whether the running kernel offers the tls ULP; if not, why (for the one
 * start-up log line).  Also reports whether it can rekey (TLS 1.3 KeyUpdate):
 * TlsRxRekeyOk appears in /proc/net/tls_stat on kernels that can. */
bool sluice_ktls_available(char *why, size_t len);
bool sluice_ktls_can_rekey(void);

/* Process-wide set-up (an SSL ex_data index); call once before handshakes. */
int sluice_ktls_init(void);
/* Enables kTLS on a server context: SSL_OP_ENABLE_KTLS and the keylog
 * callback that feeds sluice_ktls_attach()ed secrets. */
void sluice_ktls_ctx_enable(SSL_CTX *ctx);
/* Where this connection's handshake should leave its secret. */
int sluice_ktls_attach(SSL *ssl, struct sluice_ktls_secret *secret);

/* After SSL_accept() succeeded: report what OpenSSL offloaded and, for TLS
 * 1.3 with send offloaded, install the receive key.  *tx / *rx say what is
 * in the kernel afterwards; when rx could not be installed, why says why.
 * Records the suite in the secret, which is left to the caller, to wipe or
 * to keep for rekeying (which then needs no SSL object). */
void sluice_ktls_engage(SSL *ssl, int fd, struct sluice_ktls_secret *secret, bool *tx, bool *rx,
                        char *why, size_t whylen);

/* TLS 1.3 KeyUpdate (RFC 8446 4.6.3) on a socket with both directions in
 * the kernel, on a kernel that can rekey (sluice_ktls_can_rekey()).
 * sluice_ktls_rekey() steps one direction's secret to the next generation
 * and installs its key with record sequence 0: rx after the client's
 * KeyUpdate was read (the kernel holds back every later record until then),
 * tx right after our own KeyUpdate went out under the old key.  On failure
 * the secret is unchanged, why says why, and the kernel keeps the old key
 * (tx) or stays paused (rx): the connection cannot go on. */
int sluice_ktls_rekey(int fd, struct sluice_ktls_secret *secret, bool tx, char *why, size_t whylen);
/* Sends KeyUpdate(update_not_requested) as a handshake record under the
 * current send key.  0, or -1 with errno (EAGAIN: send buffer full; nothing
 * was sent). */
int sluice_ktls_send_keyupdate(int fd);

/* Reads one record from a kTLS receive socket with its content type
 * (recvmsg with a TLS_GET_RECORD_TYPE cmsg).  Returns its length (0 = TCP
 * EOF) or -1 with errno (EAGAIN: nothing queued). */
ssize_t sluice_ktls_recv_record(int fd, unsigned char *buf, size_t len, int *type);

/* Sends an alert record (e.g. close_notify: level 1, desc 0) on a socket
 * whose sending side is offloaded; the kernel encrypts it.  -1 with errno
 * (EAGAIN: send buffer full). */
int sluice_ktls_send_alert(int fd, unsigned char level, unsigned char desc);

/* Describes an alert for logs: "close_notify", "user_canceled", ... */
const char *sluice_ktls_alert_name(int desc);

#endif
