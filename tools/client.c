/* client — the test client of sluice's integration tests.
 *
 *   client --connect ADDR [--tls --ca F (--cert F --key F | --no-cert)
 *          [--servername NAME | --no-verify-name] [--tls-version 1.2|1.3]
 *          [--cipher NAME]] [--send N [--seed S]] [--expect N | --expect-any]
 *          [--expect-sha256 HEX] [--half-close | --abort] [--hold SECONDS]
 *          [--check-stream] [--allow-early-close]
 *          [--key-update-at N [--key-update requested|not-requested] [--key-updates K]]
 *          [--ktls-alert LEVEL:DESC | --ktls-record TYPE:HEX]
 *          [--reset-after N] [--pause-read SECONDS]
 *          [--garbage N] [--count C --parallel P] [--timeout SECONDS]
 *          [--session-in FILE] [--session-out FILE]
 *
 * Sends N bytes of the deterministic stream (tools/toolkit.h; the same one
 * echo --source makes) while reading concurrently (non-blocking socket, one
 * poll loop; for TLS every SSL_read/SSL_write WANT_READ/WANT_WRITE is waited
 * for), so any volume through an echo server never deadlocks.
 *
 *   --expect N     read exactly N bytes back (default: N = --send, and then
 *                  the bytes must equal what was sent: the echo check)
 *   --expect-any   read until EOF, any amount
 *   --half-close   after the last byte: TLS close_notify (SSL_shutdown) or
 *                  shutdown(SHUT_WR), then read until EOF
 *   --hold S       after connecting (and the handshake) stay idle S seconds
 *                  before sending; the peer closing during it is an error
 *   --garbage N    no TLS: send N raw random bytes, then read until the peer
 *                  closes (EOF or reset); success = the peer closed
 *   --servername   SNI and the name the server certificate must carry; by
 *                  default the certificate must carry the connect IP
 *   --abort        after the last byte is sent and the expected bytes are
 *                  back, close() the TCP socket without a TLS close_notify
 *                  (without --abort the client always ends with one)
 *   --check-stream check every received byte, as it arrives, against the
 *                  deterministic stream of --seed (what --send sends, what
 *                  echo --source sends); always on for the echo check
 *   --allow-early-close
 *                  the peer may end the connection before everything was
 *                  sent or received (e.g. sluice closing on a KeyUpdate it
 *                  cannot follow): success if every received byte was a
 *                  correct prefix of the stream (implies --check-stream) and
 *                  the peer closed cleanly (TLS: close_notify; TCP: EOF).
 *                  Send errors after the peer's close are reported as
 *                  "write_error", not as failure
 *   --key-update-at N  TLS 1.3: once N bytes have been sent, SSL_key_update()
 *                  and carry on (the next SSL_write/SSL_read sends the
 *                  KeyUpdate, before byte N+1); --key-update picks
 *                  update_requested (default "requested") or "not-requested";
 *                  --key-updates K sends K of them, the i-th once i*N bytes
 *                  have been sent (N = 0: K in a row with no data between)
 *   --ktls-alert LEVEL:DESC  after the handshake and the --send bytes, send
 *                  a genuine encrypted alert record {LEVEL, DESC} (e.g. 1:90
 *                  user_canceled, 2:40 handshake_failure) through kernel TLS:
 *                  SSL_OP_ENABLE_KTLS is set on the context, kTLS TX must
 *                  have engaged (else a clear error: the host kernel has no
 *                  tls module; use the VM), and the alert goes out with
 *                  sendmsg + cmsg SOL_TLS/TLS_SET_RECORD_TYPE = 21. Then no
 *                  close_notify; read until the peer closes (EOF or reset):
 *                  that is success, with the bytes received checked as a
 *                  prefix of the stream (not counted)
 *   --ktls-record TYPE:HEX  the same with any record: content type TYPE
 *                  and the body HEX (1..64 bytes), e.g. 22:1800000102 is a
 *                  KeyUpdate with request_update 2; reported as record_sent
 *   --reset-after N  once N bytes have been sent (after the handshake), set
 *                  SO_LINGER {1, 0} and close(): the kernel sends an RST, no
 *                  close_notify, no FIN; a client that vanishes mid-transfer.
 *                  Success = the reset went out with no error before it (the
 *                  bytes received until then are checked as usual)
 *   --session-out F  after the exchange, save the TLS session (with the
 *                  server's ticket) to F as PEM; no resumable session is an
 *                  error.  --session-in F offers that session on every
 *                  connection; "resumed" in the JSON says whether the server
 *                  took it
 *   --pause-read S  do not read anything for S seconds after the handshake
 *                  (the socket is not even polled for input), then read on
 *                  as usual: a client that stops reading while the server
 *                  pushes, and whose bytes must all arrive intact afterwards
 *   --fin-on-pause  (plain TCP, with --send as the most to send) send at most
 *                  16 KiB unacknowledged at a time and watch the window the
 *                  server advertises; once it falls under half of the largest
 *                  seen (the server stopped taking bytes off its receive
 *                  queue: a paused sockmap source), stop sending and
 *                  half-close at once, so the FIN reaches a socket that
 *                  still holds bytes.  "paused_seen" in the JSON says it
 *                  happened; "sent" is what was sent
 *
 * TLS 1.3 note: the server judges the client certificate after the client's
 * handshake has completed, so a refused client shows "handshake":"ok" and
 * then an "alert" and "error" on the first read: send something.
 *
 * Prints one JSON line (per connection when --count is 1, else a summary):
 *   {"connected":true,"handshake":"ok","tls_version":"TLSv1.3","cipher":"...",
 *    "sent":N,"sent_sha256":"..","recv":N,"recv_sha256":"..","eof":true,
 *    "close_notify":true,"reset":false,"alert":null,"error":null,
 *    "recv_prefix_ok":true,"mismatch_at":null,"mismatch_from":null,"key_update":null,
 *    "alert_sent":null,"write_error":null,"reset_sent":false,"ms":12}
 * recv_prefix_ok is null when the received bytes were not checked against
 * the stream; mismatch_from says where in the stream the bytes received at
 * mismatch_at come from (later: bytes were lost; earlier: repeated; null:
 * not found within 32 MiB); key_update is the type sent ("requested"/"not-requested");
 * alert_sent is "LEVEL:DESC" once --ktls-alert went out.
 * Exit 0 only if everything asked for happened; 1 otherwise; 2 usage. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <linux/sockios.h>
#include <linux/tls.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "toolkit.h"

#define CHUNK (32 * 1024)
#define FIN_ON_PAUSE_CHUNK (8 * 1024)

/* ---- options ---------------------------------------------------------- */

static struct {
	const char *connect;
	struct sockaddr_storage sa;
	socklen_t salen;
	char host[INET6_ADDRSTRLEN];
	bool tls;
	const char *cert, *key, *ca, *servername, *cipher;
	const char *session_in, *session_out; /* PEM SSL_SESSION files */
	bool no_cert, no_verify_name;
	int tls_version;            /* 0 = any of 1.2/1.3 */
	uint64_t send, seed;
	uint64_t expect;
	bool expect_set, expect_any;
	const char *expect_sha;
	bool half_close, abort_close;
	bool check_stream, allow_early_close;
	uint64_t ku_at;
	uint64_t ku_count;          /* --key-updates (default 1) */
	bool ku_set;
	int ku_type;                /* SSL_KEY_UPDATE_(NOT_)REQUESTED */
	bool ktls_alert;
	uint8_t alert_level, alert_desc;
	uint8_t rec_type;           /* --ktls-alert: 21; --ktls-record: TYPE */
	uint8_t rec_body[64];
	size_t rec_len;
	uint64_t hold_ms;
	uint64_t reset_after;
	bool reset_set;
	uint64_t pause_read_ms;
	bool fin_on_pause;
	uint64_t garbage;
	bool garbage_set;
	uint64_t count, parallel;
	uint64_t timeout_ms;
} o = { .seed = 1, .count = 1, .parallel = 1, .timeout_ms = 30000,
        .ku_type = SSL_KEY_UPDATE_REQUESTED, .ku_count = 1 };

static SSL_CTX *g_ctx;
static SSL_SESSION *g_session_in;  /* --session-in, offered by every connection */
static uint8_t g_rbuf[64 * 1024];   /* received bytes: hashed and dropped */

/* ---- one connection ----------------------------------------------------- */

enum state {
	ST_NEW,        /* not started */
	ST_CONNECT,    /* non-blocking connect() in flight */
	ST_HANDSHAKE,  /* SSL_connect() in flight */
	ST_RUN,        /* hold, send, receive, half-close */
	ST_DONE,       /* finished, ok or error; fd closed */
};

enum io { IO_OK, IO_EOF, IO_AGAIN, IO_ERR };

struct conn {
	enum state st;
	int fd;
	SSL *ssl;
	uint64_t t_start, t_end, hold_until;
	uint64_t read_from;         /* --pause-read: no reads before this time */
	bool read_paused;           /* a read was skipped for --pause-read: wake at read_from */
	bool reset_sent;            /* --reset-after: the RST went out */
	uint32_t max_wnd;           /* --fin-on-pause: largest window the server advertised */
	bool paused_seen;           /* --fin-on-pause: the window halved, sending stopped */
	bool connected;
	const char *handshake;      /* NULL (not reached), "none", "ok", "failed" */
	const char *tls_version_s;  /* static strings from OpenSSL's tables */
	const char *cipher_s;
	bool resumed;               /* the handshake resumed --session-in's session */
	/* sending */
	uint64_t send_total, sent;
	struct tk_prng send_prng;
	uint8_t *sbuf;
	size_t sbuf_off, sbuf_len;
	EVP_MD_CTX *sent_sha;
	bool wr_shut;               /* half-close done */
	bool send_stopped;          /* --allow-early-close: peer closed first */
	uint64_t ku_sent;           /* --key-update-at: SSL_key_update() calls made */
	bool alert_done;            /* --ktls-alert: the alert record went out */
	/* receiving */
	uint64_t recv;
	EVP_MD_CTX *recv_sha;
	bool eof, close_notify, reset;
	bool echo_check;            /* sha(sent) must equal sha(recv) */
	bool stream_check;          /* every received byte checked against the stream */
	struct tk_prng check_prng;
	int64_t mismatch_at;
	int64_t mismatch_from;      /* where in the stream the bytes at mismatch_at are from; -1 unknown */
	/* poll interest of the pending read and write operations */
	short rd_ev, wr_ev;
	bool busy;                  /* stopped while still making progress: poll(0) */
	char alert[96];
	char error[512];
	char write_error[512];      /* --allow-early-close: send failure after the peer closed */
};

/* --key-updates: where in the stream the next KeyUpdate goes. */
static uint64_t ku_next_at(const struct conn *c)
{
	return o.ku_at * (c->ku_sent + 1);
}

static void set_error(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(struct conn *c, const char *fmt, ...)
{
	if (c->error[0])
		return;   /* keep the first cause */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
}

/* OpenSSL's reasons from the error queue, "; "-joined, into buf. */
static void ssl_reasons(struct conn *c, char *buf, size_t n)
{
	size_t len = 0;
	unsigned long e;
	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		const char *r = ERR_reason_error_string(e);
		char tmp[256];
		if (!r) {
			ERR_error_string_n(e, tmp, sizeof(tmp));
			r = tmp;
		}
		int w = snprintf(buf + len, n - len, "%s%s", len ? "; " : "", r);
		if (w < 0 || (size_t)w >= n - len)
			break;
		len += (size_t)w;
		if (ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && c->ssl) {
			long vr = SSL_get_verify_result(c->ssl);
			w = snprintf(buf + len, n - len, " (%s)", X509_verify_cert_error_string(vr));
			if (w < 0 || (size_t)w >= n - len)
				break;
			len += (size_t)w;
		}
	}
	if (len == 0)
		snprintf(buf, n, "unknown TLS error");
}

/* Classifies a failed SSL_* call.  IO_AGAIN sets *ev to the poll event to
 * wait for; IO_EOF for a clean or unclean TCP/TLS end of stream; IO_ERR sets
 * the error text. */
static enum io ssl_fail(struct conn *c, int ret, int saved_errno, const char *op, short *ev)
{
	int e = SSL_get_error(c->ssl, ret);
	char why[400];
	switch (e) {
	case SSL_ERROR_WANT_READ:
		*ev = POLLIN;
		return IO_AGAIN;
	case SSL_ERROR_WANT_WRITE:
		*ev = POLLOUT;
		return IO_AGAIN;
	case SSL_ERROR_ZERO_RETURN:
		c->close_notify = true;   /* peer's close_notify */
		return IO_EOF;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (saved_errno == 0)
			return IO_EOF;        /* TCP EOF without close_notify (pre-3.0 style) */
		if (saved_errno == ECONNRESET || saved_errno == EPIPE)
			c->reset = true;
		set_error(c, "%s: %s", op, strerror(saved_errno));
		return IO_ERR;
	case SSL_ERROR_SSL:
		if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
			ERR_clear_error();
			return IO_EOF;        /* TCP EOF without close_notify */
		}
		ssl_reasons(c, why, sizeof(why));
		set_error(c, "%s: %s", op, why);
		return IO_ERR;
	default:
		ERR_clear_error();
		set_error(c, "%s: SSL error %d", op, e);
		return IO_ERR;
	}
}

static enum io io_read(struct conn *c, size_t *got)
{
	if (c->ssl) {
		ERR_clear_error();
		errno = 0;
		int n = SSL_read(c->ssl, g_rbuf, sizeof(g_rbuf));
		if (n > 0) {
			*got = (size_t)n;
			return IO_OK;
		}
		return ssl_fail(c, n, errno, "tls read", &c->rd_ev);
	}
	for (;;) {
		ssize_t n = recv(c->fd, g_rbuf, sizeof(g_rbuf), 0);
		if (n > 0) {
			*got = (size_t)n;
			return IO_OK;
		}
		if (n == 0)
			return IO_EOF;
		if (errno == EINTR)
			continue;                 /* signal: retry */
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			c->rd_ev = POLLIN;        /* nothing queued: wait */
			return IO_AGAIN;
		}
		if (errno == ECONNRESET)
			c->reset = true;          /* peer aborted (RST) */
		set_error(c, "recv: %s", strerror(errno));
		return IO_ERR;
	}
}

static enum io io_write(struct conn *c, const uint8_t *buf, size_t len, size_t *put)
{
	if (c->ssl) {
		ERR_clear_error();
		errno = 0;
		int n = SSL_write(c->ssl, buf, (int)len);
		if (n > 0) {
			*put = (size_t)n;
			return IO_OK;
		}
		enum io r = ssl_fail(c, n, errno, "tls write", &c->wr_ev);
		if (r == IO_EOF) {
			set_error(c, "tls write: connection closed by peer");
			r = IO_ERR;
		}
		return r;
	}
	for (;;) {
		ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
		if (n >= 0) {
			*put = (size_t)n;
			return IO_OK;
		}
		if (errno == EINTR)
			continue;                 /* signal: retry */
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			c->wr_ev = POLLOUT;       /* send buffer full: wait */
			return IO_AGAIN;
		}
		if (errno == ECONNRESET || errno == EPIPE)
			c->reset = true;          /* peer closed / aborted */
		set_error(c, "send: %s", strerror(errno));
		return IO_ERR;
	}
}

/* --ktls-alert: one alert record {level, desc} through kernel TLS TX, which
 * encrypts it with the current key and sequence number like any record. */
static enum io send_ktls_alert(struct conn *c)
{
	union {
		char buf[CMSG_SPACE(sizeof(uint8_t))];
		struct cmsghdr align;
	} cb;
	memset(&cb, 0, sizeof(cb));
	struct iovec iov = { .iov_base = o.rec_body, .iov_len = o.rec_len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
	                    .msg_control = cb.buf, .msg_controllen = sizeof(cb.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(uint8_t));
	*CMSG_DATA(cm) = o.rec_type;
	for (;;) {
		ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		if (n == (ssize_t)o.rec_len)
			return IO_OK;
		if (n >= 0) {
			set_error(c, "ktls record: short sendmsg (%zd of %zu bytes)", n, o.rec_len);
			return IO_ERR;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			c->wr_ev = POLLOUT;
			return IO_AGAIN;
		}
		if (errno == ECONNRESET || errno == EPIPE)
			c->reset = true;
		set_error(c, "ktls record: sendmsg: %s", strerror(errno));
		return IO_ERR;
	}
}

static void info_cb(const SSL *ssl, int where, int ret)
{
	if ((where & SSL_CB_ALERT) && (where & SSL_CB_READ) && (ret & 0xff) != SSL_AD_CLOSE_NOTIFY) {
		struct conn *c = SSL_get_app_data(ssl);
		if (c && !c->alert[0]) {
			const char *d = SSL_alert_desc_string_long(ret);
			if (strcmp(d, "unknown") == 0 && (ret & 0xff) == 116)
				d = "certificate required";   /* TLS 1.3 alert OpenSSL 3.0 has no text for */
			if (strcmp(d, "unknown") == 0)
				snprintf(c->alert, sizeof(c->alert), "alert %d", ret & 0xff);
			else
				snprintf(c->alert, sizeof(c->alert), "%s", d);
		}
	}
}

static void conn_finish(struct conn *c)
{
	if (c->ssl && o.session_out && c->handshake && strcmp(c->handshake, "ok") == 0) {
		/* By now the TLS 1.3 ticket (sent after the handshake) has been
		 * read along with the echo. */
		SSL_SESSION *sess = SSL_get1_session(c->ssl);
		FILE *f;

		if (sess && SSL_SESSION_is_resumable(sess) && (f = fopen(o.session_out, "w"))) {
			if (PEM_write_SSL_SESSION(f, sess) != 1)
				set_error(c, "--session-out: cannot write %s", o.session_out);
			fclose(f);
		} else {
			set_error(c, "--session-out: no resumable session (no ticket received?)");
		}
		SSL_SESSION_free(sess);
	}
	if (c->ssl) {
		/* Polite close_notify when the exchange went well and none was sent
		 * (never with --abort, nor after our own --ktls-alert). */
		if (!c->error[0] && !c->wr_shut && !o.abort_close && !c->alert_done && !c->reset_sent &&
		    !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN)) {
			ERR_clear_error();
			(void)SSL_shutdown(c->ssl);   /* best effort: we close right after */
			ERR_clear_error();
		}
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) {
		if (close(c->fd) < 0)
			set_error(c, "close: %s", strerror(errno));
		c->fd = -1;
	}
	c->t_end = tk_now_ms();
	c->st = ST_DONE;
}

static bool need_eof(void)
{
	return o.half_close || o.expect_any || o.garbage_set || o.ktls_alert;
}

/* Final verdict for a connection that ran to the end without an error. */
static void conn_judge(struct conn *c)
{
	if (c->error[0])
		return;
	/* Ended before the whole exchange, as --allow-early-close/--ktls-alert
	 * permit: the stream check has vouched for every byte received. */
	bool early = (o.allow_early_close || o.ktls_alert) &&
	             (c->recv != o.expect || c->sent < c->send_total);
	if (early && o.allow_early_close && !o.ktls_alert && o.tls && !c->close_notify)
		set_error(c, "peer closed early without close_notify (after %llu of %llu bytes received)",
		          (unsigned long long)c->recv, (unsigned long long)o.expect);
	if (!o.expect_any && !o.garbage_set && !early && c->recv != o.expect)
		set_error(c, "received %llu bytes, expected %llu",
		          (unsigned long long)c->recv, (unsigned long long)o.expect);
	if (o.expect_sha) {
		char hex[65];
		tk_sha_hex(c->recv_sha, hex);
		if (strcasecmp(hex, o.expect_sha) != 0)
			set_error(c, "recv_sha256 %s, expected %s", hex, o.expect_sha);
	}
	if (c->echo_check && !early) {
		char a[65], b[65];
		tk_sha_hex(c->sent_sha, a);
		tk_sha_hex(c->recv_sha, b);
		if (strcmp(a, b) != 0)
			set_error(c, "echo mismatch: recv_sha256 differs from sent_sha256");
	}
}

static void conn_start(struct conn *c)
{
	c->t_start = tk_now_ms();
	c->fd = socket(o.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		set_error(c, "socket: %s", strerror(errno));
		conn_finish(c);
		return;
	}
	int one = 1;
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
		set_error(c, "TCP_NODELAY: %s", strerror(errno));
		conn_finish(c);
		return;
	}
	if (connect(c->fd, (struct sockaddr *)&o.sa, o.salen) == 0) {
		c->st = ST_CONNECT;   /* done already (loopback); checked below */
		c->wr_ev = POLLOUT;
		return;
	}
	if (errno != EINPROGRESS && errno != EINTR) {
		set_error(c, "connect: %s", strerror(errno));
		conn_finish(c);
		return;
	}
	c->st = ST_CONNECT;
	c->rd_ev = 0;
	c->wr_ev = POLLOUT;   /* writable = connect finished, one way or another */
}

static bool tls_setup(struct conn *c)
{
	c->ssl = SSL_new(g_ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
		char why[300];
		ssl_reasons(c, why, sizeof(why));
		set_error(c, "SSL_new: %s", why);
		return false;
	}
	SSL_set_app_data(c->ssl, c);
	SSL_set_info_callback(c->ssl, info_cb);
	if (g_session_in && SSL_set_session(c->ssl, g_session_in) != 1) {
		set_error(c, "--session-in: SSL_set_session failed");
		return false;
	}
	if (o.servername) {
		unsigned char ipbuf[16];
		bool is_ip = inet_pton(AF_INET, o.servername, ipbuf) == 1 ||
		             inet_pton(AF_INET6, o.servername, ipbuf) == 1;
		if (!is_ip && SSL_set_tlsext_host_name(c->ssl, o.servername) != 1) {
			set_error(c, "bad --servername for SNI");
			return false;
		}
		if (!o.no_verify_name) {
			X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
			int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, o.servername)
			               : SSL_set1_host(c->ssl, o.servername);
			if (ok != 1) {
				set_error(c, "cannot set the name to verify");
				return false;
			}
		}
	} else if (!o.no_verify_name) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), o.host) != 1) {
			set_error(c, "cannot set the IP to verify");
			return false;
		}
	}
	SSL_set_connect_state(c->ssl);
	return true;
}

static void conn_enter_run(struct conn *c)
{
	c->st = ST_RUN;
	c->hold_until = tk_now_ms() + o.hold_ms;
	c->read_from = tk_now_ms() + o.pause_read_ms;
	c->rd_ev = o.pause_read_ms ? 0 : POLLIN;
	c->wr_ev = 0;
}

/* Does everything possible without blocking; leaves rd_ev/wr_ev set to what
 * the stalled operations wait for. */

/* Where in the expected stream the bytes received at `at` really come
 * from, to tell loss (later), repetition (earlier) and garbage (nowhere,
 * -1) apart in a report.  Searches 32 MiB either side for the first up to
 * 32 bytes received there; fewer than 16 received in this read: -1. */
static int64_t mismatch_source(int64_t at, const uint8_t *got, size_t n)
{
	const int64_t span = 32 << 20;
	int64_t lo = at > span ? at - span : 0, pos = 0, found = -1;
	size_t len = (size_t)(at + span - lo);
	uint8_t skip[65536], *buf, *hit;
	struct tk_prng p;

	if (n < 16)
		return -1;
	if (n > 32)
		n = 32;
	buf = malloc(len);
	if (!buf)
		return -1;
	tk_prng_init(&p, o.seed);
	while (pos < lo) {
		size_t k = lo - pos < (int64_t)sizeof(skip) ? (size_t)(lo - pos) : sizeof(skip);

		tk_prng_fill(&p, skip, k);
		pos += (int64_t)k;
	}
	tk_prng_fill(&p, buf, len);
	hit = memmem(buf, len, got, n);
	if (hit)
		found = lo + (hit - buf);
	free(buf);
	return found;
}

/* --fin-on-pause: 1 the window fell under half of the largest seen (stop
 * and half-close), 0 send the next chunk, -1 wait (16 KiB or more not yet
 * acknowledged, so that what is in flight and the FIN still fit in what is
 * left of a window that starts closing).  tcpi_snd_wnd (linux >= 6.2) sits
 * past glibc's struct tcp_info, so it is read at its offset in the
 * kernel's. */
#define TCPI_SND_WND_OFFSET 228
static int fin_on_pause_check(struct conn *c)
{
	uint8_t ti[TCPI_SND_WND_OFFSET + 4];
	socklen_t len = sizeof(ti);
	uint32_t wnd;
	int outq = 0;

	if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, ti, &len) < 0 || len < sizeof(ti))
		return 0;    /* no tcpi_snd_wnd: send on; "paused_seen" stays false */
	memcpy(&wnd, ti + TCPI_SND_WND_OFFSET, sizeof(wnd));
	if (wnd > c->max_wnd)
		c->max_wnd = wnd;
	if (c->max_wnd && wnd < c->max_wnd / 2) {
		c->paused_seen = true;
		return 1;
	}
	if (ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq >= FIN_ON_PAUSE_CHUNK * 2)
		return -1;
	return 0;
}

static void conn_step(struct conn *c)
{
	if (c->st == ST_CONNECT) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == EINPROGRESS || err == EALREADY)
			return;
		if (err == 0) {
			struct sockaddr_storage peer;
			socklen_t pl = sizeof(peer);
			if (getpeername(c->fd, (struct sockaddr *)&peer, &pl) < 0) {
				if (errno == ENOTCONN)
					return;   /* still connecting: spurious wakeup */
				err = errno;
			}
		}
		if (err) {
			set_error(c, "connect: %s", strerror(err));
			conn_finish(c);
			return;
		}
		c->connected = true;
		if (o.tls) {
			if (!tls_setup(c)) {
				conn_finish(c);
				return;
			}
			c->st = ST_HANDSHAKE;
		} else {
			c->handshake = "none";
			conn_enter_run(c);
		}
	}

	if (c->st == ST_HANDSHAKE) {
		ERR_clear_error();
		errno = 0;
		int r = SSL_connect(c->ssl);
		if (r != 1) {
			short ev = 0;
			enum io res = ssl_fail(c, r, errno, "handshake", &ev);
			if (res == IO_AGAIN) {
				c->rd_ev = ev;
				c->wr_ev = 0;
				return;
			}
			if (res == IO_EOF)
				set_error(c, "handshake: connection closed by peer");
			c->handshake = "failed";
			if (c->alert[0] && !strstr(c->error, "alert")) {
				size_t l = strlen(c->error);
				snprintf(c->error + l, sizeof(c->error) - l, " (alert: %s)", c->alert);
			}
			conn_finish(c);
			return;
		}
		c->handshake = "ok";
		c->resumed = SSL_session_reused(c->ssl) == 1;
		c->tls_version_s = SSL_get_version(c->ssl);
		c->cipher_s = SSL_get_cipher_name(c->ssl);
		if (o.ktls_alert && BIO_get_ktls_send(SSL_get_wbio(c->ssl)) != 1) {
			set_error(c, "--ktls-alert: kernel TLS TX did not engage (BIO_get_ktls_send = 0): "
			             "needs a kernel with the tls module (not this host's: use tests/vm) "
			             "and an AES-GCM or ChaCha20-Poly1305 suite");
			conn_finish(c);
			return;
		}
		conn_enter_run(c);
	}

	if (c->st != ST_RUN)
		return;

	c->busy = true;   /* cleared when an iteration makes no progress */
	for (int rounds = 0; rounds < 64; rounds++) {
		bool progress = false;
		uint64_t now = tk_now_ms();

		/* receive (not during --pause-read: rd_ev stays 0 meanwhile, so
		 * poll does not spin on the pending input) */
		if (!c->eof && now < c->read_from) {
			c->rd_ev = 0;
			c->read_paused = true;
		} else if (!c->eof) {
			c->read_paused = false;
			size_t got = 0;
			enum io r = io_read(c, &got);
			if (r == IO_OK) {
				progress = true;
				if (c->stream_check && c->mismatch_at < 0) {
					uint8_t want[sizeof(g_rbuf)];
					tk_prng_fill(&c->check_prng, want, got);
					if (memcmp(want, g_rbuf, got) != 0) {
						size_t i = 0;
						while (want[i] == g_rbuf[i])
							i++;
						c->mismatch_at = (int64_t)(c->recv + i);
						c->mismatch_from = mismatch_source(c->mismatch_at, g_rbuf + i, got - i);
						set_error(c, "%s mismatch at byte %lld", c->echo_check ? "echo" : "stream",
						          (long long)c->mismatch_at);
					}
				}
				tk_sha_update(c->recv_sha, g_rbuf, got);
				c->recv += got;
				if (!o.expect_any && !o.garbage_set && c->recv > o.expect)
					set_error(c, "received more than the %llu bytes expected",
					          (unsigned long long)o.expect);
				if (c->error[0]) {
					conn_finish(c);
					return;
				}
			} else if (r == IO_EOF) {
				progress = true;
				c->eof = true;
				c->rd_ev = 0;
				if (o.allow_early_close)
					c->send_stopped = true;   /* nothing more goes out */
				if (!o.expect_any && !o.garbage_set && c->recv < o.expect &&
				    !o.allow_early_close && !(o.ktls_alert && c->alert_done))
					set_error(c, "connection closed by peer after %llu of %llu bytes",
					          (unsigned long long)c->recv, (unsigned long long)o.expect);
				else if (now < c->hold_until)
					set_error(c, "connection closed by peer during --hold, after %llu ms",
					          (unsigned long long)(now - c->t_start));
				if (c->error[0]) {
					conn_finish(c);
					return;
				}
			} else if (r == IO_ERR) {
				if ((o.garbage_set || c->alert_done) && c->reset) {
					/* a reset is the answer garbage wants; after our
					 * alert the peer may close either way */
					c->error[0] = '\0';
					conn_finish(c);
					return;
				}
				if (c->alert[0] && !strstr(c->error, "alert")) {
					size_t l = strlen(c->error);
					snprintf(c->error + l, sizeof(c->error) - l, " (alert: %s)", c->alert);
				}
				conn_finish(c);
				return;
			}
		}

		/* send, after the hold */
		c->wr_ev = 0;
		if (o.reset_set && now >= c->hold_until && c->sent >= o.reset_after) {
			/* SO_LINGER {1, 0}: close() discards what is queued and sends
			 * an RST instead of a FIN (and no close_notify before it). */
			struct linger lg = { .l_onoff = 1, .l_linger = 0 };
			if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
				set_error(c, "SO_LINGER: %s", strerror(errno));
			else
				c->reset_sent = true;
			conn_finish(c);
			return;
		}
		if (now >= c->hold_until && o.ku_set && c->ku_sent < o.ku_count && !c->send_stopped &&
		    c->sent >= ku_next_at(c) && c->sbuf_off == c->sbuf_len) {
			/* At a chunk boundary, so no record write is pending. */
			if (SSL_version(c->ssl) != TLS1_3_VERSION) {
				set_error(c, "--key-update-at needs TLS 1.3 (negotiated %s)", SSL_get_version(c->ssl));
				conn_finish(c);
				return;
			}
			ERR_clear_error();
			if (SSL_key_update(c->ssl, o.ku_type) != 1) {
				char why[300];
				ssl_reasons(c, why, sizeof(why));
				set_error(c, "SSL_key_update: %s", why);
				conn_finish(c);
				return;
			}
			c->ku_sent++;
			progress = true;
			/* Push the KeyUpdate out now, even if no more data follows;
			 * a WANT_* leaves it to the next SSL_write/SSL_read. */
			ERR_clear_error();
			errno = 0;
			int r = SSL_do_handshake(c->ssl);
			if (r != 1) {
				enum io res = ssl_fail(c, r, errno, "key update", &c->wr_ev);
				if (res == IO_ERR || res == IO_EOF) {
					if (res == IO_EOF)
						set_error(c, "key update: connection closed by peer");
					conn_finish(c);
					return;
				}
			} else if (c->ku_sent < o.ku_count && c->sent >= ku_next_at(c)) {
				continue;   /* the next is due too: no data between them */
			}
		}
		if (now >= c->hold_until && !c->send_stopped) {
			if (c->sent < c->send_total) {
				if (c->sbuf_off == c->sbuf_len && o.fin_on_pause) {
					switch (fin_on_pause_check(c)) {
					case 1:
						c->send_total = c->sent;   /* the half-close follows */
						if (!o.expect_set && !o.expect_any)
							o.expect = c->sent;   /* an echo returns what went (one connection) */
						progress = true;
						continue;
					case 0:
						break;
					default:   /* too much unacknowledged: look again soon
						    * (busy: the loop polls without waiting) */
						usleep(200);
						return;
					}
				}
				if (c->sbuf_off == c->sbuf_len) {
					uint64_t left = c->send_total - c->sent;
					size_t n = left < CHUNK ? (size_t)left : CHUNK;
					if (o.fin_on_pause && n > FIN_ON_PAUSE_CHUNK)
						n = FIN_ON_PAUSE_CHUNK;
					if (o.ku_set && c->ku_sent < o.ku_count && c->sent < ku_next_at(c) &&
					    ku_next_at(c) - c->sent < n)
						n = (size_t)(ku_next_at(c) - c->sent);   /* stop exactly at the KeyUpdate */
					tk_prng_fill(&c->send_prng, c->sbuf, n);
					c->sbuf_off = 0;
					c->sbuf_len = n;
				}
				size_t put = 0;
				enum io r = io_write(c, c->sbuf + c->sbuf_off, c->sbuf_len - c->sbuf_off, &put);
				if (r == IO_OK) {
					tk_sha_update(c->sent_sha, c->sbuf + c->sbuf_off, put);
					c->sbuf_off += put;
					c->sent += put;
					progress = true;
				} else if (r == IO_ERR) {
					if (o.garbage_set && c->reset) {
						c->error[0] = '\0';   /* reset while sending garbage: the peer refused it */
						conn_finish(c);
						return;
					}
					if (o.allow_early_close) {
						/* The peer may have closed: stop sending, read on
						 * (its close_notify may still be queued). */
						snprintf(c->write_error, sizeof(c->write_error), "%s", c->error);
						c->error[0] = '\0';
						c->send_stopped = true;
						c->wr_ev = 0;
						progress = true;
						continue;
					}
					conn_finish(c);
					return;
				}
			} else if (o.ktls_alert && !c->alert_done) {
				enum io r = send_ktls_alert(c);
				if (r == IO_OK) {
					c->alert_done = true;
					progress = true;
				} else if (r == IO_ERR) {
					conn_finish(c);
					return;
				}
			} else if (o.half_close && !c->wr_shut) {
				if (c->ssl) {
					ERR_clear_error();
					errno = 0;
					int r = SSL_shutdown(c->ssl);
					if (r >= 0) {
						c->wr_shut = true;   /* close_notify sent (0) or both done (1) */
						progress = true;
					} else {
						enum io res = ssl_fail(c, r, errno, "tls shutdown", &c->wr_ev);
						if ((res == IO_ERR || res == IO_EOF) && o.allow_early_close) {
							snprintf(c->write_error, sizeof(c->write_error), "%s",
							         c->error[0] ? c->error : "tls shutdown: connection closed by peer");
							c->error[0] = '\0';
							c->send_stopped = true;
							c->wr_ev = 0;
							progress = true;
							continue;
						}
						if (res == IO_ERR || res == IO_EOF) {
							if (res == IO_EOF)
								set_error(c, "tls shutdown: connection closed by peer");
							conn_finish(c);
							return;
						}
					}
				} else {
					if (shutdown(c->fd, SHUT_WR) < 0) {
						set_error(c, "shutdown: %s", strerror(errno));
						conn_finish(c);
						return;
					}
					c->wr_shut = true;
					progress = true;
				}
			}
		}

		/* done? */
		bool send_done = c->send_stopped ||
		                 (c->sent == c->send_total && (!o.half_close || c->wr_shut) &&
		                  (!o.ktls_alert || c->alert_done) && (!o.ku_set || c->ku_sent == o.ku_count ||
		                                                       ku_next_at(c) > c->send_total));
		bool recv_done = need_eof() ? c->eof : c->recv >= o.expect;
		if (send_done && recv_done && now >= c->hold_until) {
			conn_judge(c);
			conn_finish(c);
			return;
		}
		if (!progress) {
			c->busy = false;
			break;
		}
	}
}

/* ---- output --------------------------------------------------------------- */

static void json_str(FILE *f, const char *s)
{
	if (!s) {
		fputs("null", f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void print_conn(const struct conn *c)
{
	char sh[65], rh[65];
	tk_sha_hex(c->sent_sha, sh);
	tk_sha_hex(c->recv_sha, rh);
	printf("{\"connected\":%s,\"handshake\":", c->connected ? "true" : "false");
	json_str(stdout, c->handshake);
	printf(",\"tls_version\":");
	json_str(stdout, c->tls_version_s);
	printf(",\"cipher\":");
	json_str(stdout, c->cipher_s);
	printf(",\"sent\":%llu,\"sent_sha256\":\"%s\",\"recv\":%llu,\"recv_sha256\":\"%s\"",
	       (unsigned long long)c->sent, sh, (unsigned long long)c->recv, rh);
	printf(",\"eof\":%s,\"close_notify\":%s,\"reset\":%s,\"alert\":",
	       c->eof ? "true" : "false",
	       o.tls ? (c->close_notify ? "true" : "false") : "null",
	       c->reset ? "true" : "false");
	json_str(stdout, c->alert[0] ? c->alert : NULL);
	printf(",\"error\":");
	json_str(stdout, c->error[0] ? c->error : NULL);
	printf(",\"recv_prefix_ok\":%s,\"mismatch_at\":",
	       !c->stream_check ? "null" : c->mismatch_at < 0 ? "true" : "false");
	if (c->mismatch_at < 0)
		fputs("null", stdout);
	else
		printf("%lld", (long long)c->mismatch_at);
	printf(",\"mismatch_from\":");
	if (c->mismatch_from < 0)
		fputs("null", stdout);
	else
		printf("%lld", (long long)c->mismatch_from);
	printf(",\"key_update\":");
	json_str(stdout, !c->ku_sent ? NULL :
	                 o.ku_type == SSL_KEY_UPDATE_REQUESTED ? "requested" : "not-requested");
	printf(",\"key_updates\":%llu", (unsigned long long)c->ku_sent);
	printf(",\"alert_sent\":");
	if (c->alert_done && o.rec_type == 21)
		printf("\"%u:%u\"", o.alert_level, o.alert_desc);
	else
		fputs("null", stdout);
	printf(",\"record_sent\":");
	if (c->alert_done && o.rec_type != 21) {
		printf("\"%u:", o.rec_type);
		for (size_t i = 0; i < o.rec_len; i++)
			printf("%02x", o.rec_body[i]);
		fputs("\"", stdout);
	} else {
		fputs("null", stdout);
	}
	printf(",\"write_error\":");
	json_str(stdout, c->write_error[0] ? c->write_error : NULL);
	printf(",\"reset_sent\":%s", c->reset_sent ? "true" : "false");
	if (o.fin_on_pause)
		printf(",\"paused_seen\":%s", c->paused_seen ? "true" : "false");
	printf(",\"resumed\":%s", !o.tls ? "null" : c->resumed ? "true" : "false");
	printf(",\"ms\":%llu}\n", (unsigned long long)(c->t_end - c->t_start));
}

/* ---- setup and the loop --------------------------------------------------- */

static void usage(const char *why)
{
	if (why)
		fprintf(stderr, "client: %s\n", why);
	fprintf(stderr,
	        "usage: client --connect ADDR [--tls --ca F (--cert F --key F | --no-cert)\n"
	        "              [--servername NAME | --no-verify-name] [--tls-version 1.2|1.3] [--cipher NAME]]\n"
	        "              [--send N] [--seed S] [--expect N | --expect-any] [--expect-sha256 HEX]\n"
	        "              [--half-close | --abort] [--hold SECONDS] [--garbage N]\n"
	        "              [--check-stream] [--allow-early-close] [--ktls-alert LEVEL:DESC | --ktls-record TYPE:HEX]\n"
	        "              [--key-update-at N [--key-update requested|not-requested] [--key-updates K]]\n"
	        "              [--reset-after N] [--pause-read SECONDS]\n"
	        "              [--count C] [--parallel P] [--timeout SECONDS]\n"
	        "              [--session-in FILE] [--session-out FILE]\n"
	        "  sizes take K/M/G suffixes (KiB/MiB/GiB)\n");
	exit(2);
}

static uint64_t parse_seconds_ms(const char *s, const char *what)
{
	char *ep;
	errno = 0;
	double v = strtod(s, &ep);
	if (errno || ep == s || *ep != '\0' || !(v >= 0) || v > 1e7) {
		fprintf(stderr, "client: bad %s '%s'\n", what, s);
		exit(2);
	}
	return (uint64_t)(v * 1000.0 + 0.5);
}

static uint64_t parse_size(const char *s, const char *what)
{
	uint64_t v;
	if (tk_parse_u64(s, &v) < 0) {
		fprintf(stderr, "client: bad %s '%s'\n", what, s);
		exit(2);
	}
	return v;
}

static void die_ssl(const char *what)
{
	fprintf(stderr, "client: %s: ", what);
	ERR_print_errors_fp(stderr);
	fputc('\n', stderr);
	exit(2);
}

static void make_ctx(void)
{
	g_ctx = SSL_CTX_new(TLS_client_method());
	if (!g_ctx)
		die_ssl("SSL_CTX_new");
	if (o.session_in) {
		FILE *f = fopen(o.session_in, "r");

		if (!f || !(g_session_in = PEM_read_SSL_SESSION(f, NULL, NULL, NULL)))
			die_ssl("--session-in");
		fclose(f);
	}
	int v = o.tls_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
	if (SSL_CTX_set_min_proto_version(g_ctx, v) != 1)
		die_ssl("min version");
	if (o.tls_version && SSL_CTX_set_max_proto_version(g_ctx, v) != 1)
		die_ssl("max version");
	if (o.cipher) {
		/* TLS 1.3 suites are named TLS_*; anything else is a 1.2 cipher list. */
		int ok = strncmp(o.cipher, "TLS_", 4) == 0 ? SSL_CTX_set_ciphersuites(g_ctx, o.cipher)
		                                            : SSL_CTX_set_cipher_list(g_ctx, o.cipher);
		if (ok != 1)
			die_ssl("--cipher");
	}
	if (SSL_CTX_load_verify_locations(g_ctx, o.ca, NULL) != 1)
		die_ssl("--ca");
	SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
	if (!o.no_cert) {
		if (SSL_CTX_use_certificate_chain_file(g_ctx, o.cert) != 1)
			die_ssl("--cert");
		if (SSL_CTX_use_PrivateKey_file(g_ctx, o.key, SSL_FILETYPE_PEM) != 1)
			die_ssl("--key");
		if (SSL_CTX_check_private_key(g_ctx) != 1)
			die_ssl("--cert/--key do not match");
	}
	SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (o.ktls_alert)
		SSL_CTX_set_options(g_ctx, SSL_OP_ENABLE_KTLS);   /* engages at the key change */
	SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
}

static void parse_args(int argc, char **argv)
{
	enum {
		O_CONNECT = 256, O_TLS, O_CERT, O_KEY, O_CA, O_SNI, O_NOVERIFY, O_VER, O_CIPHER,
		O_NOCERT, O_SEND, O_SEED, O_EXPECT, O_EXPECT_ANY, O_EXPECT_SHA, O_HALF, O_HOLD,
		O_GARBAGE, O_COUNT, O_PAR, O_TIMEOUT, O_HELP, O_ABORT, O_CHECK, O_EARLY, O_KU_AT,
		O_KU, O_KU_COUNT, O_KTLS_ALERT, O_KTLS_RECORD, O_RESET_AFTER, O_PAUSE_READ, O_FIN_ON_PAUSE, O_SESS_IN, O_SESS_OUT,
	};
	static const struct option opts[] = {
		{ "connect", required_argument, NULL, O_CONNECT },
		{ "tls", no_argument, NULL, O_TLS },
		{ "cert", required_argument, NULL, O_CERT },
		{ "key", required_argument, NULL, O_KEY },
		{ "ca", required_argument, NULL, O_CA },
		{ "servername", required_argument, NULL, O_SNI },
		{ "no-verify-name", no_argument, NULL, O_NOVERIFY },
		{ "tls-version", required_argument, NULL, O_VER },
		{ "cipher", required_argument, NULL, O_CIPHER },
		{ "no-cert", no_argument, NULL, O_NOCERT },
		{ "send", required_argument, NULL, O_SEND },
		{ "seed", required_argument, NULL, O_SEED },
		{ "expect", required_argument, NULL, O_EXPECT },
		{ "expect-any", no_argument, NULL, O_EXPECT_ANY },
		{ "expect-sha256", required_argument, NULL, O_EXPECT_SHA },
		{ "half-close", no_argument, NULL, O_HALF },
		{ "hold", required_argument, NULL, O_HOLD },
		{ "garbage", required_argument, NULL, O_GARBAGE },
		{ "count", required_argument, NULL, O_COUNT },
		{ "session-in", required_argument, NULL, O_SESS_IN },
		{ "session-out", required_argument, NULL, O_SESS_OUT },
		{ "parallel", required_argument, NULL, O_PAR },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "help", no_argument, NULL, O_HELP },
		{ "abort", no_argument, NULL, O_ABORT },
		{ "check-stream", no_argument, NULL, O_CHECK },
		{ "allow-early-close", no_argument, NULL, O_EARLY },
		{ "key-update-at", required_argument, NULL, O_KU_AT },
		{ "key-update", required_argument, NULL, O_KU },
		{ "key-updates", required_argument, NULL, O_KU_COUNT },
		{ "ktls-alert", required_argument, NULL, O_KTLS_ALERT },
		{ "ktls-record", required_argument, NULL, O_KTLS_RECORD },
		{ "reset-after", required_argument, NULL, O_RESET_AFTER },
		{ "pause-read", required_argument, NULL, O_PAUSE_READ },
		{ "fin-on-pause", no_argument, NULL, O_FIN_ON_PAUSE },
		{ 0, 0, 0, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case O_CONNECT: o.connect = optarg; break;
		case O_TLS: o.tls = true; break;
		case O_CERT: o.cert = optarg; break;
		case O_KEY: o.key = optarg; break;
		case O_CA: o.ca = optarg; break;
		case O_SNI: o.servername = optarg; break;
		case O_NOVERIFY: o.no_verify_name = true; break;
		case O_VER:
			if (strcmp(optarg, "1.2") == 0)
				o.tls_version = 12;
			else if (strcmp(optarg, "1.3") == 0)
				o.tls_version = 13;
			else
				usage("--tls-version wants 1.2 or 1.3");
			break;
		case O_CIPHER: o.cipher = optarg; break;
		case O_NOCERT: o.no_cert = true; break;
		case O_SEND: o.send = parse_size(optarg, "--send"); break;
		case O_SEED: o.seed = parse_size(optarg, "--seed"); break;
		case O_EXPECT: o.expect = parse_size(optarg, "--expect"); o.expect_set = true; break;
		case O_EXPECT_ANY: o.expect_any = true; break;
		case O_EXPECT_SHA: o.expect_sha = optarg; break;
		case O_HALF: o.half_close = true; break;
		case O_HOLD: o.hold_ms = parse_seconds_ms(optarg, "--hold"); break;
		case O_GARBAGE: o.garbage = parse_size(optarg, "--garbage"); o.garbage_set = true; break;
		case O_COUNT: o.count = parse_size(optarg, "--count"); break;
		case O_PAR: o.parallel = parse_size(optarg, "--parallel"); break;
		case O_TIMEOUT: o.timeout_ms = parse_seconds_ms(optarg, "--timeout"); break;
		case O_ABORT: o.abort_close = true; break;
		case O_SESS_IN: o.session_in = optarg; break;
		case O_SESS_OUT: o.session_out = optarg; break;
		case O_RESET_AFTER: o.reset_after = parse_size(optarg, "--reset-after"); o.reset_set = true; break;
		case O_PAUSE_READ: o.pause_read_ms = parse_seconds_ms(optarg, "--pause-read"); break;
		case O_FIN_ON_PAUSE: o.fin_on_pause = true; o.half_close = true; break;
		case O_CHECK: o.check_stream = true; break;
		case O_EARLY: o.allow_early_close = true; break;
		case O_KU_AT: o.ku_at = parse_size(optarg, "--key-update-at"); o.ku_set = true; break;
		case O_KU_COUNT:
			o.ku_count = parse_size(optarg, "--key-updates");
			if (o.ku_count == 0)
				usage("--key-updates wants 1 or more");
			break;
		case O_KU:
			if (strcmp(optarg, "requested") == 0)
				o.ku_type = SSL_KEY_UPDATE_REQUESTED;
			else if (strcmp(optarg, "not-requested") == 0)
				o.ku_type = SSL_KEY_UPDATE_NOT_REQUESTED;
			else
				usage("--key-update wants requested or not-requested");
			break;
		case O_KTLS_ALERT: {
			unsigned lv, ds;
			char end;
			if (sscanf(optarg, "%u:%u%c", &lv, &ds, &end) != 2 || lv > 255 || ds > 255)
				usage("--ktls-alert wants LEVEL:DESC, two numbers 0..255 (e.g. 2:40)");
			o.alert_level = (uint8_t)lv;
			o.alert_desc = (uint8_t)ds;
			o.rec_type = 21;   /* content type alert */
			o.rec_body[0] = o.alert_level;
			o.rec_body[1] = o.alert_desc;
			o.rec_len = 2;
			o.ktls_alert = true;
			break;
		}
		case O_KTLS_RECORD: {
			unsigned ty, byte;
			int off = 0;
			const char *hex;
			if (sscanf(optarg, "%u:%n", &ty, &off) != 1 || off == 0 || ty > 255)
				usage("--ktls-record wants TYPE:HEX (e.g. 22:1800000102)");
			o.rec_type = (uint8_t)ty;
			o.rec_len = 0;
			for (hex = optarg + off; hex[0]; hex += 2) {
				if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]) ||
				    o.rec_len == sizeof(o.rec_body) || sscanf(hex, "%2x", &byte) != 1)
					usage("--ktls-record: HEX must be 1..64 bytes in pairs of hex digits");
				o.rec_body[o.rec_len++] = (uint8_t)byte;
			}
			if (o.rec_len == 0)
				usage("--ktls-record: HEX must be 1..64 bytes in pairs of hex digits");
			o.ktls_alert = true;
			break;
		}
		default: usage(NULL);
		}
	}
	if (optind != argc)
		usage("unexpected argument");
	if (!o.connect)
		usage("--connect is required");
	if (tk_parse_addr(o.connect, &o.sa, &o.salen) < 0)
		usage("bad --connect (want 1.2.3.4:port or [::1]:port)");
	tk_format_addr(&o.sa, o.host, sizeof(o.host), 0);
	if (o.expect_set && o.expect_any)
		usage("--expect and --expect-any exclude each other");
	if (o.garbage_set && (o.tls || o.send || o.expect_set || o.expect_any || o.half_close))
		usage("--garbage excludes --tls, --send, --expect*, --half-close");
	if (o.abort_close && (o.half_close || o.garbage_set || o.ktls_alert))
		usage("--abort excludes --half-close, --garbage, --ktls-alert");
	if (o.reset_set && (o.half_close || o.abort_close || o.garbage_set || o.ktls_alert ||
	                    o.allow_early_close))
		usage("--reset-after excludes --half-close, --abort, --garbage, --ktls-alert, --allow-early-close");
	if (o.fin_on_pause && (o.tls || o.count != 1))
		usage("--fin-on-pause is for one plain TCP connection");
	if (o.ktls_alert && o.half_close)
		usage("--ktls-alert excludes --half-close");
	if ((o.ku_set || o.ktls_alert) && !o.tls)
		usage("--key-update-at and --ktls-alert need --tls");
	if ((o.check_stream || o.allow_early_close) && o.garbage_set)
		usage("--check-stream and --allow-early-close exclude --garbage");
	if (o.expect_sha && strlen(o.expect_sha) != 64)
		usage("--expect-sha256 wants 64 hex digits");
	if (o.count == 0 || o.parallel == 0 || o.parallel > 10000)
		usage("--count >= 1, 1 <= --parallel <= 10000");
	if (o.tls) {
		if (!o.ca)
			usage("--tls needs --ca");
		if (!o.no_cert && (!o.cert || !o.key))
			usage("--tls needs --cert and --key (or --no-cert)");
		if (o.no_cert && (o.cert || o.key))
			usage("--no-cert excludes --cert/--key");
	} else if (o.cert || o.key || o.ca || o.servername || o.tls_version || o.cipher || o.no_cert) {
		usage("TLS options need --tls");
	}
}

static struct conn *conn_new(void)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c || !(c->sbuf = malloc(CHUNK))) {
		fprintf(stderr, "client: out of memory\n");
		exit(1);
	}
	c->fd = -1;
	c->st = ST_NEW;
	c->send_total = o.garbage_set ? o.garbage : o.send;
	tk_prng_init(&c->send_prng, o.seed);
	tk_prng_init(&c->check_prng, o.seed);
	c->sent_sha = tk_sha_new();
	c->recv_sha = tk_sha_new();
	c->echo_check = !o.expect_set && !o.expect_any && !o.garbage_set;
	c->stream_check = c->echo_check || o.check_stream || o.allow_early_close;
	c->mismatch_at = -1;
	c->mismatch_from = -1;
	return c;
}

static void conn_free(struct conn *c)
{
	EVP_MD_CTX_free(c->sent_sha);
	EVP_MD_CTX_free(c->recv_sha);
	free(c->sbuf);
	free(c);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	if (!o.expect_set && !o.expect_any)
		o.expect = o.send;   /* what an echo server sends back */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		perror("client: signal");
		return 1;
	}
	if (o.tls)
		make_ctx();

	uint64_t t0 = tk_now_ms(), deadline = t0 + o.timeout_ms;
	size_t slots = o.parallel < o.count ? (size_t)o.parallel : (size_t)o.count;
	struct conn **live = calloc(slots, sizeof(*live));
	struct pollfd *pfd = calloc(slots, sizeof(*pfd));
	if (!live || !pfd) {
		fprintf(stderr, "client: out of memory\n");
		return 1;
	}
	uint64_t started = 0, finished = 0, ok = 0, failed = 0;
	uint64_t tot_sent = 0, tot_recv = 0;
	char first_error[600] = "";
	bool timed_out = false;

	while (finished < o.count) {
		/* fill free slots */
		for (size_t i = 0; i < slots && started < o.count; i++) {
			if (live[i])
				continue;
			live[i] = conn_new();
			started++;
			conn_start(live[i]);
			if (live[i]->st != ST_DONE)
				conn_step(live[i]);
		}
		/* reap finished ones, build the poll set */
		uint64_t now = tk_now_ms();
		uint64_t wake = deadline;
		nfds_t n = 0;
		bool freed = false;
		for (size_t i = 0; i < slots; i++) {
			struct conn *c = live[i];
			if (!c)
				continue;
			if (c->st != ST_DONE && now >= deadline) {
				set_error(c, "timeout after %llu ms (sent %llu of %llu, received %llu%s)",
				          (unsigned long long)(now - c->t_start), (unsigned long long)c->sent,
				          (unsigned long long)c->send_total, (unsigned long long)c->recv,
				          c->st == ST_CONNECT ? ", connecting" :
				          c->st == ST_HANDSHAKE ? ", in handshake" : "");
				if (c->st == ST_HANDSHAKE)
					c->handshake = "failed";
				timed_out = true;
				conn_finish(c);
			}
			if (c->st == ST_DONE) {
				if (c->error[0]) {
					failed++;
					if (!first_error[0])
						snprintf(first_error, sizeof(first_error), "%s", c->error);
				} else {
					ok++;
				}
				tot_sent += c->sent;
				tot_recv += c->recv;
				if (o.count == 1)
					print_conn(c);
				conn_free(c);
				live[i] = NULL;
				finished++;
				freed = true;
				continue;
			}
			if (c->st == ST_RUN && now < c->hold_until && c->hold_until < wake)
				wake = c->hold_until;
			/* Not "now < read_from": the pause may have ended between the
			 * step that skipped the read and this check, and with nothing
			 * else to poll for, the wait would last until the deadline. */
			if (c->st == ST_RUN && c->read_paused && c->read_from < wake)
				wake = c->read_from > now ? c->read_from : now;
			if (c->busy)
				wake = now;
			pfd[n].fd = c->fd;
			pfd[n].events = (short)(c->rd_ev | c->wr_ev);
			pfd[n].revents = 0;
			n++;
		}
		if (finished >= o.count)
			break;
		if (n == 0 || (freed && started < o.count))
			continue;   /* a slot is free: start more before waiting */
		int ms = wake > now ? (int)(wake - now) : 0;
		int r = poll(pfd, n, ms);
		if (r < 0 && errno != EINTR) {
			perror("client: poll");
			return 1;
		}
		/* step every live connection: cheap, and covers hold expiry */
		for (size_t i = 0; i < slots; i++)
			if (live[i] && live[i]->st != ST_DONE)
				conn_step(live[i]);
	}

	if (o.count > 1) {
		printf("{\"count\":%llu,\"parallel\":%llu,\"ok\":%llu,\"failed\":%llu,"
		       "\"sent\":%llu,\"recv\":%llu,\"timeout\":%s,\"first_error\":",
		       (unsigned long long)o.count, (unsigned long long)slots, (unsigned long long)ok,
		       (unsigned long long)failed, (unsigned long long)tot_sent,
		       (unsigned long long)tot_recv, timed_out ? "true" : "false");
		json_str(stdout, first_error[0] ? first_error : NULL);
		printf(",\"ms\":%llu}\n", (unsigned long long)(tk_now_ms() - t0));
	}
	if (fflush(stdout) == EOF) {
		perror("client: stdout");
		return 1;
	}
	free(live);
	free(pfd);
	SSL_CTX_free(g_ctx);
	return failed == 0 ? 0 : 1;
}
