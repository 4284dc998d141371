/* One connection, from accept to close: the state machine of proxy.h.
 *
 *   accept -> source ACL -> [TLS handshake: identity, authorization, limits
 *   in the verify callback] -> pick + connect (retry next server) -> relay
 *   -> close (counters down, one log line)
 *
 * Each stage is a small function; conn_close() is the only exit and the only
 * place that releases what a connection holds, so no error path can leak a
 * counter, an fd or a pipe. */
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "bpf.h"
#include "common.h"
#include "log.h"
#include "proxy.h"
#include "session.h"
#include "sockmap.h"
#include "tls.h"

#define SIDE_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

static void conn_connect_next(struct sluice_conn *c);
static void conn_relay_start(struct sluice_conn *c);

static const struct sluice_config *conn_cfg(const struct sluice_conn *c)
{
	return c->w->proxy->cfg;
}

static struct sluice_pool *conn_pool(const struct sluice_conn *c)
{
	return &c->w->proxy->pools[c->l->cfg->upstream];
}

static uint64_t deadline(uint64_t now, uint64_t timeout_ms)
{
	return timeout_ms ? now + timeout_ms : UINT64_MAX;
}

static void conn_arm(struct sluice_conn *c, uint64_t when)
{
	if (when == UINT64_MAX) {
		sluice_timer_cancel(c->w->loop, &c->timer);
		return;
	}
	/* Only fails on allocation; the connection then has no deadline,
	 * which the drain deadline still bounds. */
	if (sluice_timer_set(c->w->loop, &c->timer, when) < 0)
		sluice_log(SLUICE_LOG_WARN, "timer", "cannot arm a deadline: out of memory");
}

/* The client's names: allocated when a certificate (or the source address)
 * is read, freed once admission is final, so an established connection
 * does not carry them. NULL on allocation failure. */
static struct sluice_identity *conn_id(struct sluice_conn *c)
{
	if (!c->id)
		c->id = calloc(1, sizeof(*c->id));
	return c->id;
}

static void conn_id_drop(struct sluice_conn *c)
{
	if (!c->id)
		return;
	sluice_identity_clear(c->id);
	free(c->id);
	c->id = NULL;
}

static void conn_secret_drop(struct sluice_conn *c)
{
	if (!c->secret)
		return;
	OPENSSL_cleanse(c->secret, sizeof(*c->secret));
	free(c->secret);
	c->secret = NULL;
}

/* ---- close: the one exit ---- */

void sluice_conn_detail(struct sluice_conn *c, const char *fmt, ...)
{
	va_list ap;

	if (c->detail)
		return;
	va_start(ap, fmt);
	/* Out of memory only costs the detail, never the connection's close. */
	if (vasprintf(&c->detail, fmt, ap) < 0)
		c->detail = NULL;
	va_end(ap);
}

#define LINGER_MS 2000        /* longest wait for the client to take our last bytes */
#define LINGER_POLL_MS 20     /* how often the send queue is looked at */
#define FD_WAIT_POLL_MS 50    /* out of fds: how often socket() is retried */

static void linger_end(struct sluice_linger *lg)
{
	struct sluice_worker *w = lg->w;

	sluice_timer_cancel(w->loop, &lg->timer);
	sluice_loop_del(w->loop, &lg->io);
	close(lg->io.fd);
	if (lg->prev)
		lg->prev->next = lg->next;
	else
		w->lingering = lg->next;
	if (lg->next)
		lg->next->prev = lg->prev;
	free(lg);
}

void sluice_linger_free_all(struct sluice_worker *w)
{
	while (w->lingering)
		linger_end(w->lingering);
}

static bool linger_done(struct sluice_linger *lg)
{
	int outq = 0;

	/* SIOCOUTQ counts bytes not yet acknowledged: at 0 the client's
	 * kernel has everything, and an RST can no longer take it away. */
	return ioctl(lg->io.fd, SIOCOUTQ, &outq) < 0 || outq == 0 || sluice_now_ms() >= lg->deadline_ms;
}

static void linger_on_event(struct sluice_io *io, uint32_t events)
{
	struct sluice_linger *lg = (struct sluice_linger *)io;

	/* The client hung up or failed: nothing more can reach it. */
	if ((events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || linger_done(lg))
		linger_end(lg);
}

static void linger_on_timer(struct sluice_timer *t)
{
	struct sluice_linger *lg = (struct sluice_linger *)((char *)t - offsetof(struct sluice_linger, timer));

	if (linger_done(lg) || sluice_timer_set(lg->w->loop, &lg->timer, sluice_now_ms() + LINGER_POLL_MS) < 0)
		linger_end(lg);
}

/* Hands the client fd to a linger: FIN after our last bytes, no more reads
 * (a kTLS socket would only answer EBADMSG after a KeyUpdate).  Returns
 * false if it could not, and the caller closes the fd as usual. */
static bool linger_start(struct sluice_worker *w, int fd)
{
	struct sluice_linger *lg = calloc(1, sizeof(*lg));

	if (!lg)
		return false;
	lg->w = w;
	lg->io.fd = fd;
	lg->io.fn = linger_on_event;
	lg->deadline_ms = sluice_now_ms() + LINGER_MS;
	sluice_timer_init(&lg->timer, linger_on_timer);
	(void)shutdown(fd, SHUT_WR);
	if (sluice_loop_add(w->loop, &lg->io, EPOLLRDHUP | EPOLLET) < 0 ||
	    sluice_timer_set(w->loop, &lg->timer, sluice_now_ms() + LINGER_POLL_MS) < 0) {
		sluice_loop_del(w->loop, &lg->io);
		free(lg);
		return false;
	}
	lg->next = w->lingering;
	if (w->lingering)
		w->lingering->prev = lg;
	w->lingering = lg;
	return true;
}

static void side_close(struct sluice_conn *c, struct sluice_side *s)
{
	if (s->ssl) {
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->io.fd >= 0) {
		if (s->linger) {
			/* The fd lives on in the linger list, registered anew. */
			sluice_loop_del(c->w->loop, &s->io);
			if (linger_start(c->w, s->io.fd)) {
				s->io.fd = -1;
				return;
			}
		} else {
			/* close() drops the fd from epoll by itself (it is never
			 * dup'ed): no EPOLL_CTL_DEL, one syscall less per side. */
			sluice_loop_forget(c->w->loop, &s->io);
		}
		close(s->io.fd);
		s->io.fd = -1;
	}
}

static const char *datapath_name(enum sluice_datapath d)
{
	switch (d) {
	case SLUICE_DP_SPLICE: return "splice";
	case SLUICE_DP_KTLS: return "ktls";
	case SLUICE_DP_USERSPACE: return "userspace";
	case SLUICE_DP_SOCKMAP: return "sockmap";
	default: return NULL;
	}
}

static void conn_log(struct sluice_conn *c)
{
	const struct sluice_config *cfg = conn_cfg(c);
	struct sluice_logline l;
	char addr[80];

	if (!sluice_log_enabled(SLUICE_LOG_INFO))
		return;
	sluice_logline_begin(&l, SLUICE_LOG_INFO, "close");
	sluice_logline_str(&l, "listener", c->l->cfg->name);
	sluice_logline_str(&l, "client", sluice_addr_str(&c->peer.sa, addr, sizeof(addr)));
	sluice_logline_str(&l, "identity", c->id_name);
	sluice_logline_str(&l, "upstream",
	                   c->server >= 0 ? cfg->upstreams[c->l->cfg->upstream].servers[c->server].address : NULL);
	sluice_logline_u64(&l, "bytes_in", c->c2u.bytes);
	sluice_logline_u64(&l, "bytes_out", c->u2c.bytes);
	sluice_logline_u64(&l, "duration_ms", sluice_now_ms() - c->start_ms);
	sluice_logline_str(&l, "datapath", datapath_name(c->datapath));
	if (c->datapath == SLUICE_DP_SOCKMAP) {
		sluice_logline_u64(&l, "sockmap_pauses", c->sockmap_pauses);
		sluice_logline_u64(&l, "sockmap_kernel_pauses", c->sockmap_kpauses);
		sluice_logline_u64(&l, "sockmap_copied", c->sockmap_copied);
		sluice_logline_u64(&l, "sockmap_trimmed", c->sockmap_trimmed);
	}
	if (c->tls_version) {
		sluice_logline_str(&l, "tls_version", c->tls_version);
		sluice_logline_str(&l, "cipher", c->cipher);
		sluice_logline_bool(&l, "resumed", c->resumed);
		sluice_logline_bool(&l, "ktls_tx", c->client.ktls_tx);
		sluice_logline_bool(&l, "ktls_rx", c->client.ktls_rx);
		if (c->client.ktls_rx && strcmp(c->tls_version, "TLSv1.3") == 0)
			sluice_logline_u64(&l, "key_updates", c->key_updates);
		if (c->ktls_why)
			sluice_logline_str(&l, "ktls_detail", c->ktls_why);
	}
	sluice_logline_str(&l, "result", c->result);
	if (c->detail)
		sluice_logline_str(&l, "detail", c->detail);
	sluice_logline_emit(&l);
}

/* The per-datapath totals operators read with bpftool.  One syscall per
 * connection; a failure only costs the statistics, so it is not logged
 * per connection. */
static void conn_account(const struct sluice_conn *c)
{
	static const unsigned dp[] = {
		[SLUICE_DP_NONE] = SLUICE_BPF_DP_NONE,
		[SLUICE_DP_SPLICE] = SLUICE_BPF_DP_SPLICE,
		[SLUICE_DP_KTLS] = SLUICE_BPF_DP_KTLS,
		[SLUICE_DP_USERSPACE] = SLUICE_BPF_DP_USERSPACE,
		[SLUICE_DP_SOCKMAP] = SLUICE_BPF_DP_SOCKMAP,
	};

	(void)sluice_bpf_account(c->w->proxy->bpf, dp[c->datapath], c->c2u.bytes, c->u2c.bytes);
}

void sluice_conn_close(struct sluice_conn *c, const char *result, const char *detail)
{
	struct sluice_worker *w = c->w;

	if (c->state == SLUICE_CONN_CLOSED)
		return;
	if (!c->result) {
		c->result = result;
		if (detail)
			sluice_conn_detail(c, "%s", detail);
	}
	/* sockmap: the byte counts are the kernel's, and the sockets must
	 * leave the maps (and get their RST, for a dead pair) before the
	 * line is written and the fds are closed. */
	sluice_sockmap_release(c);
	conn_log(c);
	if (w->proxy->bpf)
		conn_account(c);

	sluice_timer_cancel(w->loop, &c->timer);
	sluice_relay_release(c);
	/* OpenSSL's rule for a session whose connection ended without our
	 * close_notify, for the connections that outlived their SSL object. */
	if (c->sess_id_len && !c->client.close_notify_sent)
		sluice_session_forget(w->proxy->ssl_ctx, c->sess_id, c->sess_id_len);
	side_close(c, &c->client);
	side_close(c, &c->upstream);
	if (c->server >= 0) {
		sluice_pool_release(conn_pool(c), (unsigned)c->server);
		c->server = -1;
	}
	if (c->limit_ref) {
		sluice_limits_release(w->proxy->limits, c->limit_ref);
		c->limit_ref = NULL;
	}
	conn_id_drop(c);
	conn_secret_drop(c);
	free(c->id_name);
	free(c->ktls_why);
	free(c->connect_errors);
	free(c->detail);
	c->id_name = c->ktls_why = c->connect_errors = c->detail = NULL;

	/* live list -> graveyard: queued events for this connection may still
	 * be dispatched in this iteration; they see CLOSED and return. */
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->state = SLUICE_CONN_CLOSED;
	c->next = w->graveyard;
	c->prev = NULL;
	w->graveyard = c;
	w->n_conns--;
	sluice_worker_conn_gone(w);
}

/* ---- admission: identity -> authorization -> limits ---- */

static int conn_set_id_name(struct sluice_conn *c, const struct sluice_client_cfg *matched)
{
	char buf[SLUICE_ID_NAME_LEN];

	if (!c->id)
		return -1;
	sluice_identity_name(c->id, matched, buf, sizeof(buf));
	free(c->id_name);
	c->id_name = strdup(buf);
	return c->id_name ? 0 : -1;
}

/* Returns 0 when admitted; otherwise sets result/detail and returns -1. */
static int conn_admit(struct sluice_conn *c)
{
	const struct sluice_config *cfg = conn_cfg(c);
	const struct sluice_client_cfg *cl;
	unsigned pool = c->l->cfg->upstream;
	enum sluice_limit_result lr;
	int idx;

	if (!c->id) {
		c->result = "internal";
		sluice_conn_detail(c, "out of memory reading identity");
		return -1;
	}
	idx = sluice_identity_find_client(cfg, c->id);
	if (idx < 0) {
		(void)conn_set_id_name(c, NULL);  /* only for the log line */
		c->result = "unauthorized";
		sluice_conn_detail(c, "no clients entry matches");
		return -1;
	}
	cl = &cfg->clients[idx];
	c->client_idx = idx;
	if (conn_set_id_name(c, cl) < 0) {
		c->result = "internal";
		sluice_conn_detail(c, "out of memory");
		return -1;
	}
	if (!(cl->allow_mask & (UINT64_C(1) << pool))) {
		c->result = "unauthorized";
		sluice_conn_detail(c, "client entry \"%s\" does not allow upstream \"%s\"",
		         cl->id, cfg->upstreams[pool].name);
		return -1;
	}
	lr = sluice_limits_acquire(c->w->proxy->limits, (unsigned)idx, cl, c->id_name,
	                           c->client.io.fd, sluice_now_ms(), &c->limit_ref);
	if (lr == SLUICE_LIMIT_MAX_CONNS) {
		c->result = "max_conns";
		sluice_conn_detail(c, "max_conns %u reached", cl->max_conns);
		return -1;
	}
	if (lr == SLUICE_LIMIT_ERROR) {
		if (errno == EEXIST) {
			/* The kernel saw this socket close before it could be
			 * counted (bpf/sluice.bpf.c, sock_closed): a client that
			 * reset during its handshake, not our failure. */
			c->result = "client_error";
			sluice_conn_detail(c, "client closed during the handshake");
			return -1;
		}
		c->result = "internal";
		sluice_conn_detail(c, "cannot count the connection in the kernel: %s", strerror(errno));
		return -1;
	}
	if (lr == SLUICE_LIMIT_RATE) {
		c->result = "conn_rate";
		sluice_conn_detail(c, "conn_rate %u/s burst %u exceeded", cl->conn_rate,
		         cl->conn_burst);
		return -1;
	}
	c->admitted = true;
	return 0;
}

/* Forgets an admission decided from a cached session (and what it held),
 * so the full handshake that follows decides afresh from the certificate
 * the client presents. */
static void conn_unadmit(struct sluice_conn *c)
{
	if (c->limit_ref) {
		sluice_limits_release(c->w->proxy->limits, c->limit_ref);
		c->limit_ref = NULL;
	}
	conn_id_drop(c);
	free(c->id_name);
	free(c->detail);
	c->id_name = c->detail = NULL;
	c->id_read = c->admitted = c->ticket_admitted = false;
	c->client_idx = -1;
	c->result = NULL;
}

/* A client offered a cached session (a TLS 1.3 ticket or a TLS 1.2
 * session ID; session.c found it).  The verify callback does not run for
 * a resumed session, so admission runs here, on the certificate the
 * session holds: still within its validity period, not revoked by the CRL
 * loaded now, then identity -> authorization -> limits as for a full
 * handshake.  Anything short of admitted ignores the session instead of
 * failing: the client then does a full handshake, whose chain verification
 * and admission give the precise reason (an expired or revoked certificate,
 * an unauthorized identity, max_conns) and the alert.  A refused resumption
 * that was counted against conn_rate is counted again by the full
 * handshake: both were attempts. */
int sluice_conn_resume_admit(SSL *ssl, SSL_SESSION *sess)
{
	struct sluice_conn *c = SSL_get_app_data(ssl);
	X509 *peer = SSL_SESSION_get0_peer(sess);

	if (c && c->ticket_admitted)   /* the same session again, after a HelloRetryRequest */
		return 0;
	if (!c || !peer || c->admitted || !sluice_tls_cert_current(peer) ||
	    sluice_tls_revoked(SSL_get_SSL_CTX(ssl), peer))
		return -1;
	if (!conn_id(c) || sluice_identity_from_cert(c->id, peer) < 0) {
		conn_unadmit(c);
		return -1;
	}
	c->id_read = true;
	if (conn_admit(c) < 0) {
		conn_unadmit(c);
		return -1;
	}
	c->ticket_admitted = true;
	return 0;
}

/* Runs inside SSL_accept for each certificate of the client's chain.  At the
 * leaf, once OpenSSL has verified the chain (and CRL), the connection is
 * admitted or refused here, so a refusal reaches the client as a TLS alert
 * instead of a bare close. */
int sluice_conn_verify_cb(int preverify_ok, X509_STORE_CTX *ctx)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct sluice_conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
	int depth;

	if (!c)
		return 0;
	depth = X509_STORE_CTX_get_error_depth(ctx);
	/* A cached session was accepted, yet OpenSSL went on to a full
	 * handshake (its suite did not fit): judge the certificate presented
	 * now, not the one in the session. */
	if (depth == 0 && c->ticket_admitted)
		conn_unadmit(c);
	/* Read the leaf's names even when it fails verification, so the log
	 * line says who was refused (a revoked CN=mallory, not just "revoked").
	 * They are only used for admission once the chain verified. */
	if (depth == 0 && !c->id_read) {
		if (!conn_id(c) || sluice_identity_from_cert(c->id, X509_STORE_CTX_get_current_cert(ctx)) < 0) {
			c->result = "internal";
			sluice_conn_detail(c, "out of memory reading identity");
			goto refuse;
		}
		c->id_read = true;
		(void)conn_set_id_name(c, NULL);
	}
	if (!preverify_ok) {
		/* Failed above the leaf (a chain too long): still say who. */
		if (!c->id_read) {
			X509 *leaf = X509_STORE_CTX_get0_cert(ctx);

			if (leaf && conn_id(c) && sluice_identity_from_cert(c->id, leaf) == 0) {
				c->id_read = true;
				(void)conn_set_id_name(c, NULL);
			}
		}
		if (!c->detail)
			sluice_conn_detail(c, "%s",
			         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		return 0;
	}
	if (depth != 0 || c->admitted)
		return 1;
	if (conn_admit(c) == 0)
		return 1;
refuse:
	X509_STORE_CTX_set_error(ctx, X509_V_ERR_APPLICATION_VERIFICATION);
	return 0;
}

/* ---- kTLS ---- */

/* OpenSSL calls this for every TLS message it reads.  Only installed when
 * the kernel sends and OpenSSL reads (TLS 1.3 receive key not installed):
 * a KeyUpdate must then end the connection before OpenSSL answers it. */
static void conn_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                        SSL *ssl, void *arg)
{
	struct sluice_side *s = arg;

	(void)version;
	(void)ssl;
	if (!write_p && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
	    ((const unsigned char *)buf)[0] == SSL3_MT_KEY_UPDATE)
		s->keyupdate_seen = true;
}

/* Right after the handshake, before OpenSSL could read application data:
 * move record crypto into the kernel where it can go.  Returns -1 when the
 * connection was closed (ktls: require and it did not engage). */
static int conn_ktls_engage(struct sluice_conn *c)
{
	struct sluice_side *s = &c->client;

	struct sluice_ktls_secret none = { .len = 0 };
	char why[96];

	c->tls_version = SSL_get_version(s->ssl);
	c->cipher = SSL_get_cipher_name(s->ssl);
	if (!c->w->proxy->ktls)
		return 0;
	sluice_ktls_engage(s->ssl, s->io.fd, c->secret ? c->secret : &none, &s->ktls_tx, &s->ktls_rx,
	                   why, sizeof(why));
	/* The secrets stay only where a KeyUpdate can be followed: TLS 1.3
	 * with both directions in a kernel that rekeys.  Elsewhere a
	 * KeyUpdate ends the connection and they are of no use. */
	if (!(c->w->proxy->ktls_rekey && s->ktls_tx && s->ktls_rx && SSL_version(s->ssl) == TLS1_3_VERSION))
		conn_secret_drop(c);
	if (why[0])
		c->ktls_why = strdup(why);   /* for the log only: NULL on ENOMEM is fine */
	if (s->ktls_tx && !s->ktls_rx && SSL_version(s->ssl) == TLS1_3_VERSION) {
		SSL_set_msg_callback(s->ssl, conn_msg_cb);
		SSL_set_msg_callback_arg(s->ssl, s);
	}
	if (conn_cfg(c)->tls.ktls == SLUICE_KTLS_REQUIRE && !(s->ktls_tx && s->ktls_rx)) {
		sluice_conn_close(c, "ktls_required", why);
		return -1;
	}
	/* The kernel has both directions: OpenSSL's state (~20 KiB with the
	 * client's certificate and the session) has nothing left to do.  What
	 * still needs saying goes through the kernel (close_notify: the relay's
	 * sluice_ktls_send_alert; KeyUpdate: the secrets kept above); the log
	 * keeps OpenSSL's static version and cipher strings. */
	if (s->ktls_tx && s->ktls_rx) {
		SSL_SESSION *sess = SSL_get_session(s->ssl);
		const unsigned char *id;
		unsigned len = 0;

		/* SSL_free drops from the cache the session of a connection
		 * that has not sent close_notify (ssl_clear_bad_session).  This
		 * one is healthy so far: keep its session, and apply the same
		 * rule at close by its ID (sluice_conn_close). */
		id = sess ? SSL_SESSION_get_id(sess, &len) : NULL;
		if (id && len > 0 && len <= sizeof(c->sess_id)) {
			memcpy(c->sess_id, id, len);
			c->sess_id_len = (uint8_t)len;
		}
		SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN);
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	return 0;
}

/* ---- handshake ---- */

static void conn_handshake(struct sluice_conn *c)
{
	char reason[200];
	int r, e;

	ERR_clear_error();
	r = SSL_accept(c->client.ssl);
	if (r == 1) {
		/* Admitted by the verify callback (full handshake) or by the
		 * session cache's lookup (resumed); this guards the invariant. */
		if (!c->admitted) {
			sluice_conn_close(c, "unauthorized", "handshake completed without admission");
			return;
		}
		c->resumed = SSL_session_reused(c->client.ssl) == 1;
		conn_id_drop(c);   /* admitted for good: id_name says who from here */
		if (conn_ktls_engage(c) < 0)
			return;
		if (!c->client.ssl) {   /* kTLS both ways: OpenSSL is done */
			conn_connect_next(c);
			return;
		}
		/* OpenSSL keeps its handshake read/write buffers (~33 KiB)
		 * after the handshake; SSL_MODE_RELEASE_BUFFERS only frees them
		 * after application I/O.  Drop them now: an idle connection
		 * should cost a few KiB. */
		(void)SSL_free_buffers(c->client.ssl);
		/* OpenSSL reads what the client sends: let it read ahead, so a
		 * record costs one read() instead of two (header, then body).
		 * Never with the kernel receiving: bytes OpenSSL read ahead
		 * would be bytes the kernel never sees (design.md). */
		if (!c->client.ktls_rx)
			SSL_set_read_ahead(c->client.ssl, 1);
		/* Sending through OpenSSL: one send() per batch of records
		 * instead of per record.  Without it (no memory) each record
		 * still goes out, one send() each. */
		if (!c->client.ktls_tx)
			(void)sluice_relay_gather_attach(c, &c->client);
		conn_connect_next(c);
		return;
	}
	e = SSL_get_error(c->client.ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return;
	if (c->result) {
		/* Refused by admission: OpenSSL has sent the alert. */
		ERR_clear_error();
		sluice_conn_close(c, c->result, NULL);
		return;
	}
	/* The verify callback's reason (expired, revoked, unknown CA) is more
	 * precise than OpenSSL's generic "certificate verify failed". */
	if (c->detail) {
		ERR_clear_error();
		sluice_conn_close(c, "tls_handshake", NULL);
		return;
	}
	sluice_conn_close(c, "tls_handshake",
	                  sluice_tls_error_reason(c->client.ssl, r, reason, sizeof(reason)));
}

/* ---- connect ---- */

static void note_connect_error(struct sluice_conn *c, const char *addr, const char *why)
{
	char *more;

	if (asprintf(&more, "%s%s%s: %s", c->connect_errors ? c->connect_errors : "",
	             c->connect_errors ? "; " : "", addr, why) < 0)
		return; /* out of memory: the log line just says less */
	free(c->connect_errors);
	c->connect_errors = more;
}

static void conn_connect_failed(struct sluice_conn *c, const char *why)
{
	const struct sluice_server_cfg *s = &conn_cfg(c)->upstreams[c->l->cfg->upstream].servers[c->server];

	note_connect_error(c, s->address, why);
	sluice_timer_cancel(c->w->loop, &c->timer);
	side_close(c, &c->upstream);
	sluice_pool_release(conn_pool(c), (unsigned)c->server);
	c->server = -1;
	conn_connect_next(c);
}

static void conn_connected(struct sluice_conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->upstream.io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		conn_connect_failed(c, strerror(err));
		return;
	}
	conn_relay_start(c);
}

/* Out of fds with the client already accepted: closing it would lose a
 * connection that a close elsewhere is about to make room for.  Wait
 * instead, polling every FD_WAIT_POLL_MS, for at most the connect timeout;
 * accepts pause meanwhile so the wait does not grow. */
static void conn_fd_wait(struct sluice_conn *c, const char *addr, int err)
{
	uint64_t now = sluice_now_ms();

	if (!c->fd_wait_until_ms)
		c->fd_wait_until_ms = deadline(now, c->l->cfg->timeouts.connect_ms);
	if (now >= c->fd_wait_until_ms) {
		note_connect_error(c, addr, strerror(err));
		sluice_conn_close(c, "no_upstream", c->connect_errors);
		return;
	}
	sluice_listener_fdlimit(c->l, err);
	conn_arm(c, now + FD_WAIT_POLL_MS < c->fd_wait_until_ms ? now + FD_WAIT_POLL_MS
	                                                         : c->fd_wait_until_ms);
}

static void conn_connect_next(struct sluice_conn *c)
{
	struct sluice_pool *pool = conn_pool(c);
	const struct sluice_upstream_cfg *up = pool->cfg;
	int one = 1;

	c->state = SLUICE_CONN_CONNECT;
	for (;;) {
		const struct sluice_server_cfg *s;
		int srv = sluice_pool_pick(pool, c->tried);
		int fd;

		if (srv < 0) {
			sluice_conn_close(c, "no_upstream", c->connect_errors ? c->connect_errors
			                                                       : "no server to try");
			return;
		}
		s = &up->servers[srv];
		c->server = srv;
		c->tried |= UINT64_C(1) << srv;
		fd = socket(s->sa.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			/* EMFILE/ENFILE/ENOBUFS/ENOMEM: this proxy, not the server, is
			 * out of resources, and the next server would fail the same
			 * way.  The server was not tried: un-pick it. */
			int err = errno;

			sluice_pool_release(pool, (unsigned)srv);
			c->server = -1;
			c->tried &= ~(UINT64_C(1) << srv);
			if (sluice_worker_pipes_trim(c->w) > 0)
				continue; /* cached pipes were holding the fds */
			conn_fd_wait(c, s->address, err);
			return;
		}
		/* Proxied streams are latency-sensitive request/response traffic
		 * as often as bulk; Nagle would add a delayed-ACK round trip. */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->upstream.io.fd = fd;
		if (connect(fd, (const struct sockaddr *)&s->sa.ss, s->sa.len) == 0 || errno == EINPROGRESS) {
			if (sluice_loop_add(c->w->loop, &c->upstream.io, SIDE_EVENTS) < 0) {
				note_connect_error(c, s->address, strerror(errno));
				close(fd);
				c->upstream.io.fd = -1;
				sluice_pool_release(pool, (unsigned)srv);
				c->server = -1;
				sluice_conn_close(c, "no_upstream", c->connect_errors);
				return;
			}
			/* Completion (or failure) arrives as EPOLLOUT/EPOLLERR. */
			conn_arm(c, deadline(sluice_now_ms(), c->l->cfg->timeouts.connect_ms));
			return;
		}
		/* ECONNREFUSED, ENETUNREACH, EADDRNOTAVAIL (no local port left):
		 * this server is unusable right now; try the next. */
		note_connect_error(c, s->address, strerror(errno));
		close(fd);
		c->upstream.io.fd = -1;
		sluice_pool_release(pool, (unsigned)srv);
		c->server = -1;
	}
}

/* ---- relay ---- */

static void conn_relay_arm(struct sluice_conn *c)
{
	const struct sluice_timeouts *t = &c->l->cfg->timeouts;
	uint64_t idle = deadline(c->last_active_ms, t->idle_ms);
	uint64_t life = deadline(c->start_ms, t->lifetime_ms);

	conn_arm(c, idle < life ? idle : life);
}

static void conn_relay(struct sluice_conn *c, unsigned flows)
{
	/* A sockmap pair's events are only ends of stream: sockmap.c. */
	switch (c->sockmap ? sluice_sockmap_pump(c) : sluice_relay_pump(c, flows)) {
	case SLUICE_RELAY_WAIT:
		return;
	case SLUICE_RELAY_MORE:
		sluice_loop_defer(c->w->loop, &c->client.io);
		return;
	case SLUICE_RELAY_DONE:
		sluice_conn_close(c, "ok", NULL);
		return;
	case SLUICE_RELAY_ERR:
		sluice_conn_close(c, c->result ? c->result : "error", NULL);
		return;
	}
}

static void conn_relay_start(struct sluice_conn *c)
{
	struct sluice_side *cl = &c->client;

	c->state = SLUICE_CONN_RELAY;
	c->c2u.splice = !cl->tls || cl->ktls_rx;
	c->u2c.splice = !cl->tls || cl->ktls_tx;
	if (!cl->tls)
		c->datapath = SLUICE_DP_SPLICE;
	else if (c->c2u.splice && c->u2c.splice)
		c->datapath = SLUICE_DP_KTLS;
	else
		c->datapath = SLUICE_DP_USERSPACE;
	c->last_active_ms = sluice_now_ms();
	/* datapath: sockmap (mode tcp only): hand the pair to the kernel.
	 * Declined (no slot, a map update failed): splice, as above. */
	if (c->l->cfg->datapath == SLUICE_DATAPATH_SOCKMAP && c->w->sockmap) {
		int r = sluice_sockmap_start(c);

		if (r == SLUICE_ERR) {
			sluice_conn_close(c, c->result ? c->result : "internal", NULL);
			return;
		}
		if (r == SLUICE_OK)
			c->datapath = SLUICE_DP_SOCKMAP;
	}
	conn_relay_arm(c);
	/* Bytes may already be waiting (sent with the client's Finished, or
	 * during the connect) and their edge has passed: pump now. */
	conn_relay(c, SLUICE_FLOW_BOTH);
}

/* ---- events and deadlines ---- */

/* The flows an event on side s can move: the one it feeds if s is
 * readable, and the one it drains if s is writable *and* that flow is
 * stuck on a write (edge-triggered epoll reports EPOLLOUT with every
 * wakeup of a writable socket, so writability alone says nothing).
 * Skipping the other flow saves the read that would find it empty: one
 * EAGAIN per wakeup.  0 events is a deferred pump (more to do, either
 * way): both.  So is any event on a client whose records OpenSSL handles:
 * SSL_read may wait to write (answering a KeyUpdate) and SSL_write to
 * read, so readiness either way can unblock either flow. */
static unsigned conn_event_flows(const struct sluice_conn *c, const struct sluice_side *s,
                                 uint32_t events)
{
	const uint32_t in = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
	const uint32_t out = EPOLLOUT | EPOLLHUP | EPOLLERR;
	bool client = s == &c->client;
	const struct sluice_flow *drains = client ? &c->u2c : &c->c2u;
	unsigned flows = 0;

	if (events == 0 || (client && s->ssl && !(s->ktls_rx && s->ktls_tx)))
		return SLUICE_FLOW_BOTH;
	if (events & in)
		flows |= client ? SLUICE_FLOW_C2U : SLUICE_FLOW_U2C;
	if ((events & out) && sluice_flow_stuck(drains))
		flows |= client ? SLUICE_FLOW_U2C : SLUICE_FLOW_C2U;
	return flows;
}

static void conn_on_event(struct sluice_io *io, uint32_t events)
{
	struct sluice_side *s = (struct sluice_side *)io;
	struct sluice_conn *c = s->conn;

	switch (c->state) {
	case SLUICE_CONN_HANDSHAKE:
		if (s == &c->client)
			conn_handshake(c);
		return;
	case SLUICE_CONN_CONNECT:
		/* Client bytes wait in its socket until the relay starts. */
		if (s == &c->upstream)
			conn_connected(c);
		return;
	case SLUICE_CONN_RELAY:
		conn_relay(c, conn_event_flows(c, s, events));
		return;
	case SLUICE_CONN_CLOSED:
		return;
	}
}

static void conn_on_timer(struct sluice_timer *t)
{
	struct sluice_conn *c = (struct sluice_conn *)((char *)t - offsetof(struct sluice_conn, timer));
	const struct sluice_timeouts *to = &c->l->cfg->timeouts;
	uint64_t now = sluice_now_ms();

	switch (c->state) {
	case SLUICE_CONN_HANDSHAKE:
		sluice_conn_close(c, "timeout_handshake", NULL);
		return;
	case SLUICE_CONN_CONNECT:
		if (c->server < 0) {
			conn_connect_next(c); /* waiting for an fd: try again */
			return;
		}
		conn_connect_failed(c, "connect timeout");
		return;
	case SLUICE_CONN_RELAY:
		sluice_sockmap_touch(c);   /* sockmap: did the kernel move bytes? */
		if (to->lifetime_ms && now >= c->start_ms + to->lifetime_ms) {
			sluice_conn_close(c, "timeout_lifetime", NULL);
			return;
		}
		if (to->idle_ms && now >= c->last_active_ms + to->idle_ms) {
			sluice_conn_close(c, "timeout_idle", NULL);
			return;
		}
		/* Bytes moved since the deadline was set: push it out.  This is
		 * cheaper than re-arming the timer on every transfer. */
		conn_relay_arm(c);
		return;
	case SLUICE_CONN_CLOSED:
		return;
	}
}

/* ---- accept ---- */

void sluice_conn_accept(struct sluice_listener *l, int fd, const struct sluice_sockaddr *peer)
{
	struct sluice_worker *w = l->w;
	const struct sluice_listener_cfg *lc = l->cfg;
	struct sluice_conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (!c) {
		/* Not even room to log the connection properly: drop it. */
		close(fd);
		return;
	}
	c->w = w;
	c->l = l;
	sluice_ipaddr_set(&c->peer, (const struct sockaddr *)&peer->ss, peer->len);
	c->start_ms = sluice_now_ms();
	c->client_idx = -1;
	c->server = -1;
	c->client.conn = c->upstream.conn = c;
	c->client.io.fd = fd;
	c->upstream.io.fd = -1;
	c->client.io.fn = c->upstream.io.fn = conn_on_event;
	c->c2u.src = c->u2c.dst = &c->client;
	c->c2u.dst = c->u2c.src = &c->upstream;
	sluice_timer_init(&c->timer, conn_on_timer);
	c->state = SLUICE_CONN_HANDSHAKE;
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->n_conns++;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if (sluice_cidr_list_match(lc->deny, lc->n_deny, (struct sockaddr *)&peer->ss) ||
	    (lc->n_allow && !sluice_cidr_list_match(lc->allow, lc->n_allow, (struct sockaddr *)&peer->ss))) {
		sluice_conn_close(c, "acl", NULL);
		return;
	}
	if (sluice_loop_add(w->loop, &c->client.io, SIDE_EVENTS) < 0) {
		sluice_conn_close(c, "internal", strerror(errno));
		return;
	}

	if (lc->mode == SLUICE_MODE_TCP) {
		if (conn_id(c))
			sluice_identity_from_peer(c->id, (struct sockaddr *)&peer->ss);
		if (conn_admit(c) < 0) {
			sluice_conn_close(c, c->result, NULL);
			return;
		}
		conn_id_drop(c);
		conn_connect_next(c);
		return;
	}

	c->client.ssl = SSL_new(w->proxy->ssl_ctx);
	if (!c->client.ssl || !SSL_set_fd(c->client.ssl, fd)) {
		sluice_conn_close(c, "internal", "SSL_new failed");
		return;
	}
	SSL_set_app_data(c->client.ssl, c);
	c->client.tls = true;
	/* Without kTLS nothing but OpenSSL ever reads this socket, so it may
	 * read ahead from the first byte: a handshake record then costs one
	 * read() instead of two (header, then body).  With kTLS it must not
	 * (conn_handshake turns it on once the kernel's side is settled). */
	if (!w->proxy->ktls)
		SSL_set_read_ahead(c->client.ssl, 1);
	if (w->proxy->ktls) {
		c->secret = calloc(1, sizeof(*c->secret));
		if (!c->secret || sluice_ktls_attach(c->client.ssl, c->secret) < 0) {
			sluice_conn_close(c, "internal", "out of memory for the kTLS secret");
			return;
		}
	}
	conn_arm(c, deadline(c->start_ms, lc->timeouts.handshake_ms));
	conn_handshake(c);
}
