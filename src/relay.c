/* Relay: moving bytes between the two sides of a connection.
 *
 * Each direction (flow) is one of two kinds, chosen when the relay starts:
 *   splice     both ends plain TCP or kTLS that way: socket -> pipe ->
 *              socket, zero copy; the kernel does any record crypto.
 *   copy       a TLS end that OpenSSL handles: SSL_read/SSL_write through
 *              one buffer.
 * The connection's datapath (logged) is splice (plain TCP), ktls (TLS with
 * both directions spliced) or userspace (any direction through OpenSSL).
 * A flow (one direction) holds a pipe or buffer only while bytes are in
 * flight, so an idle connection costs no pipe fds and no buffer memory.
 *
 * The sockets are registered edge-triggered, so every pump runs each flow
 * until it would block.  To stay fair to other connections a pump stops after
 * FLOW_ROUNDS transfers per direction and asks to be called again (MORE).
 *
 * Return contract of the flow functions (HAProxy's raw_sock.c style):
 *   SLUICE_AGAIN  waiting for readiness on src (empty) or dst (full)
 *   SLUICE_DONE   src ended and that EOF has been passed on to dst
 *   SLUICE_ERR    a side failed; conn result/detail set
 *   SLUICE_OK     budget spent with work left: call again
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "common.h"
#include "ktls.h"
#include "proxy.h"
#include "tls.h"

#define FLOW_ROUNDS 16
#define PIPE_SIZE (1024 * 1024)  /* a third less relay CPU than 64 KiB (design.md) */
#define KTLS_FILL_BYTES (256 * 1024) /* records gathered before one splice out */
#define MAX_FREE_BUFS 16         /* 1 MiB of 64 KiB buffers per worker */
/* Per-record overhead room: 4 records x (5 header + 8 explicit nonce (TLS
 * 1.2) + 16 tag + 1 type (TLS 1.3)) = 120 bytes; 256 with margin. */
#define GATHER_RECORD_SLACK 256

/* ---- pools: pipes and buffers, per worker, no locks ---- */

static struct sluice_pipe *pipe_get(struct sluice_worker *w)
{
	struct sluice_pipe *p = w->free_pipes;
	int fds[2];

	if (p) {
		w->free_pipes = p->next;
		w->n_free_pipes--;
		return p;
	}
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return NULL;
	/* Larger pipes mean fewer splice calls per MiB.  Failure (EPERM above
	 * pipe-max-size for an unprivileged user, or the per-user pipe budget)
	 * only costs speed, so it is not an error. */
	(void)fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE);
	p = malloc(sizeof(*p));
	if (!p) {
		close(fds[0]);
		close(fds[1]);
		return NULL;
	}
	p->rfd = fds[0];
	p->wfd = fds[1];
	return p;
}

static void pipe_put(struct sluice_worker *w, struct sluice_pipe *p, bool empty)
{
	/* A pipe that may still hold bytes (error path) is never reused: its
	 * stale bytes would leak into another connection. */
	if (empty && w->n_free_pipes < w->max_free_pipes) {
		p->next = w->free_pipes;
		w->free_pipes = p;
		w->n_free_pipes++;
		return;
	}
	close(p->rfd);
	close(p->wfd);
	free(p);
}

static struct sluice_buf *buf_get(struct sluice_worker *w)
{
	struct sluice_buf *b = w->free_bufs;

	if (b) {
		w->free_bufs = b->next;
		w->n_free_bufs--;
		return b;
	}
	return malloc(sizeof(*b));
}

static void buf_put(struct sluice_worker *w, struct sluice_buf *b)
{
	if (w->n_free_bufs < MAX_FREE_BUFS) {
		b->next = w->free_bufs;
		w->free_bufs = b;
		w->n_free_bufs++;
		return;
	}
	free(b);
}

unsigned sluice_worker_pipes_trim(struct sluice_worker *w)
{
	unsigned fds = 0;

	while (w->free_pipes) {
		struct sluice_pipe *p = w->free_pipes;

		w->free_pipes = p->next;
		close(p->rfd);
		close(p->wfd);
		free(p);
		fds += 2;
	}
	w->n_free_pipes = 0;
	return fds;
}

void sluice_worker_pools_free(struct sluice_worker *w)
{
	(void)sluice_worker_pipes_trim(w);
	while (w->free_bufs) {
		struct sluice_buf *b = w->free_bufs;

		w->free_bufs = b->next;
		free(b);
	}
	w->n_free_pipes = w->n_free_bufs = 0;
}

static void flow_release(struct sluice_worker *w, struct sluice_flow *f)
{
	if (f->pipe) {
		pipe_put(w, f->pipe, f->in_pipe == 0);
		f->pipe = NULL;
		f->in_pipe = 0;
	}
	if (f->buf) {
		buf_put(w, f->buf);
		f->buf = NULL;
		f->off = f->len = 0;
	}
}

void sluice_relay_release(struct sluice_conn *c)
{
	flow_release(c->w, &c->c2u);
	flow_release(c->w, &c->u2c);
}

/* ---- errors ---- */

static const char *side_name(const struct sluice_conn *c, const struct sluice_side *s)
{
	return s == &c->client ? "client" : "upstream";
}

static int flow_fail(struct sluice_conn *c, const struct sluice_side *s, const char *what, int err)
{
	if (!c->result) {
		c->result = s == &c->client ? "client_error" : "upstream_error";
		sluice_conn_detail(c, "%s %s: %s", side_name(c, s), what,
		         strerror(err));
	}
	return SLUICE_ERR;
}

static int flow_fail_tls(struct sluice_conn *c, struct sluice_side *s, const char *what, int ret)
{
	char reason[160];

	sluice_tls_error_reason(s->ssl, ret, reason, sizeof(reason));
	if (!c->result) {
		c->result = "client_error";
		sluice_conn_detail(c, "%s %s: %s", side_name(c, s), what, reason);
	}
	return SLUICE_ERR;
}

/* Passes src's EOF on to dst: close_notify on a TLS side, FIN on TCP. */
static int flow_flush_dst(struct sluice_conn *c, struct sluice_flow *f);

/* SSL_shutdown has written our close_notify (into the gather BIO, which
 * OpenSSL flushes but whose full socket it ignores): the flow is done once
 * it is out.  A client that sent its own close_notify and left makes the
 * send fail with EPIPE/ECONNRESET: a clean end, as in flow_shutdown_dst. */
static int flow_close_notify_sent(struct sluice_conn *c, struct sluice_flow *f)
{
	BIO *b = SSL_get_wbio(f->dst->ssl);

	if (!b || BIO_wpending(b) == 0 || BIO_flush(b) > 0) {
		f->dst_shut = true;
		return SLUICE_DONE;
	}
	if (BIO_should_retry(b))
		return SLUICE_AGAIN;
	if ((errno == EPIPE || errno == ECONNRESET) &&
	    (SSL_get_shutdown(f->dst->ssl) & SSL_RECEIVED_SHUTDOWN)) {
		f->dst->tls_broken = true;  /* nothing more goes out */
		f->dst_shut = true;
		return SLUICE_DONE;
	}
	return flow_fail(c, f->dst, "close_notify", errno ? errno : EIO);
}

static int flow_shutdown_dst(struct sluice_conn *c, struct sluice_flow *f)
{
	if (f->dst_shut)
		return SLUICE_DONE;
	if (f->close_notify_out)   /* our close_notify sits gathered behind a full socket */
		return flow_close_notify_sent(c, f);
	if (f->dst->ssl) {
		int r = flow_flush_dst(c, f);   /* records still gathered go first */

		if (r != SLUICE_OK)
			return r;
	}
	if (f->dst->tls && !f->dst->tls_broken && f->dst->ssl) {
		int r;

		ERR_clear_error();
		r = SSL_shutdown(f->dst->ssl);
		if (r < 0) {
			int e = SSL_get_error(f->dst->ssl, r);

			if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
				return SLUICE_AGAIN;
			/* The client said goodbye first (its close_notify is in) and
			 * is gone: our close_notify has no one to reach, and every
			 * byte owed to the client went out before it.  A clean end,
			 * not a failure.  (A client that closes with our session
			 * ticket unread in its socket makes its kernel answer with
			 * a reset, so the write fails.) */
			if (e == SSL_ERROR_ZERO_RETURN) {
				ERR_clear_error();
				f->dst->tls_broken = true;  /* nothing more goes out */
				f->dst_shut = true;
				return SLUICE_DONE;
			}
			return flow_fail_tls(c, f->dst, "close_notify", r);
		}
		/* r == 0: our close_notify is written, the client's may follow;
		 * the other flow keeps reading it (TLS half-close).  OpenSSL
		 * flushes its alert but ignores a full socket: send what is
		 * still gathered before calling the flow done. */
		f->close_notify_out = true;
		return flow_close_notify_sent(c, f);
	} else if (f->dst->tls && !f->dst->tls_broken) {
		/* kTLS both ways and OpenSSL already gone: the kernel encrypts
		 * our close_notify like any other record. */
		if (sluice_ktls_send_alert(f->dst->io.fd, 1, 0) < 0) {
			if (errno == EAGAIN)  /* send buffer full: EPOLLOUT resumes us */
				return SLUICE_AGAIN;
			return flow_fail(c, f->dst, "close_notify", errno);
		}
		f->dst->close_notify_sent = true;
	} else if (shutdown(f->dst->io.fd, SHUT_WR) < 0 && errno != ENOTCONN) {
		/* Plain TCP, or TLS that ended without close_notify (OpenSSL
		 * won't write any more, so a FIN is all that can be said).
		 * ENOTCONN: the peer already reset; the other flow reports it. */
		return flow_fail(c, f->dst, "shutdown", errno);
	}
	f->dst_shut = true;
	return SLUICE_DONE;
}

/* ---- userspace TLS sending: records gathered into one send() ----
 *
 * OpenSSL writes each TLS record (<= 16 KiB) to its BIO separately, so a
 * socket BIO costs one send() per record: 62 per MB downloaded, each with
 * its own trip through TCP and a wakeup of the receiver.  After the
 * handshake, a connection whose sending stays in userspace gets this BIO
 * as its write BIO instead: records are copied into a pooled 64 KiB buffer
 * and go out with one send() when the flow has nothing more to encrypt
 * (flow_flush_dst), when the buffer is full, or when OpenSSL flushes (a
 * handshake message, an alert).  The buffer is held only while it holds
 * bytes, so an idle connection pays ~100 bytes for the BIO.  Reads keep
 * the socket BIO. */

struct gather {
	struct sluice_worker *w;
	struct sluice_buf *buf;        /* NULL when empty */
	size_t off, len;               /* unsent bytes: buf->data[off..len) */
	int fd;
};

static BIO_METHOD *gather_method;

/* Sends what is gathered: 1 when all of it is out (the buffer goes back
 * to the pool), -1 with errno (EAGAIN: the socket is full; retry flag set
 * for OpenSSL). */
static int gather_send(BIO *b, struct gather *g)
{
	while (g->buf && g->off < g->len) {
		ssize_t n = send(g->fd, g->buf->data + g->off, g->len - g->off, MSG_NOSIGNAL);

		if (n > 0) {
			g->off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			BIO_set_retry_write(b);
		return -1;   /* EPIPE/ECONNRESET: OpenSSL reports SSL_ERROR_SYSCALL */
	}
	if (g->buf) {
		buf_put(g->w, g->buf);
		g->buf = NULL;
		g->off = g->len = 0;
	}
	return 1;
}

static int gather_write(BIO *b, const char *in, int inl)
{
	struct gather *g = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	if (inl <= 0)
		return 0;
	if (g->buf && (size_t)inl > sizeof(g->buf->data) - g->len && gather_send(b, g) < 0)
		return -1;
	if (!g->buf && (size_t)inl <= sizeof(g->buf->data))
		g->buf = buf_get(g->w);
	if (g->buf && (size_t)inl <= sizeof(g->buf->data) - g->len) {
		memcpy(g->buf->data + g->len, in, (size_t)inl);
		g->len += (size_t)inl;
		return inl;
	}
	/* No buffer to be had (out of memory), or a write larger than one:
	 * straight to the socket, nothing gathered is pending here. */
	do
		n = send(g->fd, in, (size_t)inl, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EAGAIN)
		BIO_set_retry_write(b);
	return n < 0 ? -1 : (int)n;
}

static long gather_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct gather *g = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		BIO_clear_retry_flags(b);
		return gather_send(b, g) > 0;
	case BIO_CTRL_WPENDING:
		return g->buf ? (long)(g->len - g->off) : 0;
	case BIO_CTRL_PENDING:
		return 0;
	default:
		return 0;   /* no kTLS, no fd queries: those go to the read BIO */
	}
}

static int gather_destroy(BIO *b)
{
	struct gather *g = BIO_get_data(b);

	if (g) {
		/* Not buf_put: the connection may outlive its worker's pools
		 * at shutdown.  Unsent bytes here belong to an aborted
		 * connection. */
		free(g->buf);
		free(g);
		BIO_set_data(b, NULL);
	}
	return 1;
}

static pthread_once_t gather_once = PTHREAD_ONCE_INIT;

static void gather_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice gather");

	if (m && BIO_meth_set_write(m, gather_write) && BIO_meth_set_ctrl(m, gather_ctrl) &&
	    BIO_meth_set_destroy(m, gather_destroy)) {
		gather_method = m;
		return;
	}
	BIO_meth_free(m);
}

int sluice_relay_gather_attach(struct sluice_conn *c, struct sluice_side *s)
{
	struct gather *g;
	BIO *b;

	pthread_once(&gather_once, gather_method_init);
	if (!gather_method)
		return -1;
	g = calloc(1, sizeof(*g));
	b = g ? BIO_new(gather_method) : NULL;
	if (!b) {
		free(g);
		return -1;
	}
	g->w = c->w;
	g->fd = s->io.fd;
	BIO_set_data(b, g);
	BIO_set_init(b, 1);
	SSL_set0_wbio(s->ssl, b);   /* the socket BIO stays the read BIO */
	return 0;
}

/* Sends the records gathered for the flow's TLS destination.  SLUICE_OK
 * when nothing is left, SLUICE_AGAIN (dst full: its EPOLLOUT resumes the
 * flow, see sluice_flow_stuck) or SLUICE_ERR. */
static int flow_flush_dst(struct sluice_conn *c, struct sluice_flow *f)
{
	BIO *b;

	if (!f->dst->ssl || !(b = SSL_get_wbio(f->dst->ssl)) || BIO_wpending(b) == 0)
		return SLUICE_OK;
	if (BIO_flush(b) > 0)
		return SLUICE_OK;
	if (BIO_should_retry(b))
		return SLUICE_AGAIN;
	return flow_fail(c, f->dst, "write", errno ? errno : EIO);
}

static bool flow_dst_pending(const struct sluice_flow *f)
{
	BIO *b = f->dst->ssl ? SSL_get_wbio(f->dst->ssl) : NULL;

	return b && BIO_wpending(b) > 0;
}

/* ---- splice: plain TCP to plain TCP ---- */

static ssize_t side_read(struct sluice_conn *c, struct sluice_side *s, char *buf, size_t len);
static ssize_t side_write(struct sluice_conn *c, struct sluice_side *s, const char *buf, size_t len);
static int flow_ktls_record(struct sluice_conn *c, struct sluice_flow *f);
static int ktls_keyupdate_answer(struct sluice_conn *c, struct sluice_side *s);

/* Reads one buffer from the flow's source: the copy datapath's read, and
 * what a splice flow that cannot get a pipe does instead; the write side
 * (flow_write_buf) is shared the same way.  SLUICE_OK to go on (data held,
 * or src_eof set), SLUICE_AGAIN or SLUICE_ERR. */
static int flow_read_buf(struct sluice_conn *c, struct sluice_flow *f)
{
	ssize_t n;

	if (f->src->ktls_rx)
		return flow_ktls_record(c, f);
	f->buf = buf_get(c->w);
	if (!f->buf)
		return flow_fail(c, f->src, "buffer", ENOMEM);
	/* For a TLS destination, a little less than a full buffer: its four
	 * records' headers and tags must fit the gather buffer too, or the
	 * fourth would cost a second send(). */
	n = side_read(c, f->src, f->buf->data,
	              sizeof(f->buf->data) - (f->dst->ssl ? GATHER_RECORD_SLACK : 0));
	if (n > 0) {
		f->off = 0;
		f->len = (size_t)n;
		/* SSL_read returns one record at a time; the ones OpenSSL has
		 * already read ahead cost no syscall, so gather them and send
		 * them with one send() instead of one per 16 KiB record. */
		while (f->src->ssl && f->len < sizeof(f->buf->data) && SSL_has_pending(f->src->ssl)) {
			n = side_read(c, f->src, f->buf->data + f->len, sizeof(f->buf->data) - f->len);
			if (n > 0)
				f->len += (size_t)n;
			else if (n == 0)
				f->src_eof = true;
			if (n <= 0)
				break;
		}
		return n == SLUICE_ERR ? SLUICE_ERR : SLUICE_OK;
	}
	buf_put(c->w, f->buf);
	f->buf = NULL;
	if (n == 0) {
		f->src_eof = true;
		return SLUICE_OK;
	}
	return (int)n;
}

/* Writes what the flow's buffer holds.  >0 bytes written (call again),
 * 0 nothing held (the buffer, if any, went back to the pool), or
 * SLUICE_AGAIN / SLUICE_ERR from side_write. */
static ssize_t flow_write_buf(struct sluice_conn *c, struct sluice_flow *f)
{
	ssize_t n;

	if (!f->buf)
		return 0;
	if (f->off < f->len) {
		n = side_write(c, f->dst, f->buf->data + f->off, f->len - f->off);
		if (n > 0) {
			f->off += (size_t)n;
			f->bytes += (uint64_t)n;
			c->moved = true;
		}
		return n;
	}
	buf_put(c->w, f->buf);
	f->buf = NULL;
	f->off = f->len = 0;
	return 0;
}

static int flow_splice(struct sluice_conn *c, struct sluice_flow *f)
{
	int round;

	for (round = 0; round < FLOW_ROUNDS; round++) {
		ssize_t n;

		if (f->dst->keyupdate_owed) {
			int r = ktls_keyupdate_answer(c, f->dst);

			if (r != SLUICE_OK)
				return r;
		}
		/* Application data that came with a control-record read
		 * (flow_ktls_record): send it before anything newer. */
		n = flow_write_buf(c, f);
		if (n < 0)
			return (int)n;
		if (n > 0)
			continue;
		/* A kTLS receive socket splices one record (<= 16 KiB) per call:
		 * let those pile up in the pipe and move them out with one
		 * splice, instead of one out per record in. */
		if (f->in_pipe > 0 && !(f->filling && f->in_pipe < KTLS_FILL_BYTES)) {
			n = splice(f->pipe->rfd, NULL, f->dst->io.fd, NULL, f->in_pipe,
			           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				f->in_pipe -= (size_t)n;
				f->bytes += (uint64_t)n;
				c->moved = true;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			/* EAGAIN: dst's send buffer is full; its EPOLLOUT edge resumes us. */
			if (n < 0 && errno == EAGAIN)
				return SLUICE_AGAIN;
			/* EPIPE / ECONNRESET: dst went away with bytes still owed to it. */
			return flow_fail(c, f->dst, "write", n < 0 ? errno : EPIPE);
		}
		if (f->pipe && f->in_pipe == 0) {
			/* Empty: give it back so an idle connection holds no pipe. */
			pipe_put(c->w, f->pipe, true);
			f->pipe = NULL;
		}
		if (f->src_eof)
			return flow_shutdown_dst(c, f);
		if (!f->pipe)
			f->pipe = pipe_get(c->w);
		if (!f->pipe) {
			int r;

			if (errno != EMFILE && errno != ENFILE && errno != ENOMEM)
				return flow_fail(c, f->src, "pipe", errno);
			/* Out of fds: losing the connection for want of a pipe
			 * would be worse than copying this round. */
			r = flow_read_buf(c, f);
			if (r != SLUICE_OK)
				return r;
			continue;
		}
		if (f->in_pipe >= PIPE_SIZE) {   /* cannot happen (filling stops far below); never splice 0 */
			f->filling = false;
			continue;
		}
		n = splice(f->src->io.fd, NULL, f->pipe->wfd, NULL, PIPE_SIZE - f->in_pipe,
		           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			f->in_pipe += (size_t)n;
			f->filling = f->src->ktls_rx;
			continue;
		}
		/* What ends the filling (an empty socket, EOF, a control record:
		 * each is still there on the next call) first sends out what the
		 * pipe holds, so the bytes keep their order.  Errors fail now. */
		if (f->in_pipe > 0 && (n == 0 || errno == EAGAIN || (errno == EINVAL && f->src->ktls_rx))) {
			f->filling = false;
			continue;
		}
		if (n == 0) {          /* FIN from src */
			if (f->src->tls) {
				/* kTLS: TCP closed without close_notify. */
				f->src->tls_broken = true;
				if (!c->detail)
					sluice_conn_detail(c, "eof without close_notify");
			}
			f->src_eof = true;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) { /* src empty (the pipe was empty, so not "pipe full") */
			pipe_put(c->w, f->pipe, true);
			f->pipe = NULL;
			return SLUICE_AGAIN;
		}
		if (errno == EINVAL && f->src->ktls_rx) {
			/* kTLS: the next record is not application data (alert,
			 * KeyUpdate); splice won't take it, recvmsg will. */
			int r;

			pipe_put(c->w, f->pipe, true);
			f->pipe = NULL;
			r = flow_ktls_record(c, f);
			if (r != SLUICE_OK)
				return r;
			continue;
		}
		if (errno == EBADMSG && f->src->ktls_rx) {
			/* The kernel could not authenticate a record. */
			f->src->tls_broken = true;
			if (!c->result) {
				c->result = "tls_error";
				sluice_conn_detail(c, "client record failed authentication (bad_record_mac)");
			}
			return SLUICE_ERR;
		}
		/* ECONNRESET: src reset; anything else is a bug worth logging as is. */
		return flow_fail(c, f->src, "read", errno);
	}
	return SLUICE_OK;
}

/* kTLS, a KeyUpdate the kernel cannot follow: close cleanly.  close_notify
 * still goes out under the send key, which the client has not changed. */
static int ktls_keyupdate_close(struct sluice_side *s)
{
	if (s->ssl) {
		ERR_clear_error();
		(void)SSL_shutdown(s->ssl);
		ERR_clear_error();
	} else {
		/* Best effort: a full send buffer only costs the alert. */
		s->close_notify_sent = sluice_ktls_send_alert(s->io.fd, 1, 0) == 0;
	}
	s->tls_broken = true;
	/* The client goes on sending under its new key; closing with that
	 * unread would reset the connection and lose the close_notify and the
	 * echo still in flight. */
	s->linger = true;
	return SLUICE_ERR;
}

/* kTLS: the KeyUpdate the peer asked for, then our send key steps on.
 * Runs before every data write toward s, so no record of ours can go out
 * between the two under a key the peer no longer expects. */
static int ktls_keyupdate_answer(struct sluice_conn *c, struct sluice_side *s)
{
	struct sluice_flow *out = s == &c->client ? &c->u2c : &c->c2u;
	char why[96];

	if (!s->keyupdate_owed)
		return SLUICE_OK;
	if (out->dst_shut || out->close_notify_out) {
		/* Nothing more will be sent: no key to protect. */
		s->keyupdate_owed = false;
		return SLUICE_OK;
	}
	if (sluice_ktls_send_keyupdate(s->io.fd) < 0) {
		/* EAGAIN: the send buffer is full; s's EPOLLOUT edge comes back
		 * here (sluice_flow_stuck).  Anything else: s went away. */
		if (errno == EAGAIN)
			return SLUICE_AGAIN;
		return flow_fail(c, s, "write", errno);
	}
	s->keyupdate_owed = false;
	if (sluice_ktls_rekey(s->io.fd, c->secret, true, why, sizeof(why)) < 0) {
		/* Our KeyUpdate is out: the peer now rejects anything under
		 * the old key, close_notify included.  Only a reset is left. */
		s->tls_broken = true;
		c->result = "ktls_rekey_failed";
		sluice_conn_detail(c, "send key after our KeyUpdate: %s", why);
		return SLUICE_ERR;
	}
	return SLUICE_OK;
}

/* kTLS: a client KeyUpdate (RFC 8446 4.6.3), read by recvmsg.  The kernel
 * holds back every later record until the next receive key is in. */
static int ktls_keyupdate_take(struct sluice_conn *c, struct sluice_flow *f, const unsigned char *rec,
                               size_t n)
{
	struct sluice_side *s = f->src;
	uint64_t at = f->bytes + f->in_pipe;
	char why[96];

	/* One KeyUpdate ends its record: handshake messages must not span a
	 * key change (RFC 8446 5.1), and the kernel pauses after the record. */
	if (n != 5 || rec[1] != 0 || rec[2] != 0 || rec[3] != 1 || rec[4] > 1) {
		bool framed = n == 5 && rec[1] == 0 && rec[2] == 0 && rec[3] == 1;

		/* a request_update other than 0/1: illegal_parameter; bad framing: decode_error */
		(void)sluice_ktls_send_alert(s->io.fd, 2, framed ? 47 : 50);
		s->tls_broken = true;
		c->result = "tls_error";
		sluice_conn_detail(c, "malformed KeyUpdate (%zu bytes, request_update %d)", n,
		                   n >= 5 ? rec[4] : -1);
		return SLUICE_ERR;
	}
	c->keyupdate_streak = c->key_updates > 0 && at == c->keyupdate_streak_at ? c->keyupdate_streak + 1 : 1;
	c->keyupdate_streak_at = at;
	if (c->keyupdate_streak > SLUICE_KTLS_MAX_KEYUPDATES) {
		(void)sluice_ktls_send_alert(s->io.fd, 2, 10);  /* unexpected_message */
		s->tls_broken = true;
		c->result = "tls_error";
		sluice_conn_detail(c, "more than %d KeyUpdates without application data",
		                   SLUICE_KTLS_MAX_KEYUPDATES);
		return SLUICE_ERR;
	}
	if (sluice_ktls_rekey(s->io.fd, c->secret, false, why, sizeof(why)) < 0) {
		c->result = "ktls_rekey_failed";
		sluice_conn_detail(c, "receive key after the client's KeyUpdate: %s", why);
		return ktls_keyupdate_close(s);
	}
	c->key_updates++;
	if (rec[4] == 1) {
		int r;

		s->keyupdate_owed = true;
		r = ktls_keyupdate_answer(c, s);
		if (r == SLUICE_ERR)
			return r;   /* SLUICE_AGAIN: owed, answered on EPOLLOUT */
	}
	return SLUICE_OK;
}

/* A non-data record on a kTLS receive socket (splice said EINVAL).
 * Returns SLUICE_OK to go on (data or close_notify taken), SLUICE_AGAIN, or
 * SLUICE_ERR with the connection's result set. */
static int flow_ktls_record(struct sluice_conn *c, struct sluice_flow *f)
{
	struct sluice_side *s = f->src;
	unsigned char *rec;
	ssize_t n;
	int type;

	f->buf = buf_get(c->w);
	if (!f->buf)
		return flow_fail(c, s, "buffer", ENOMEM);
	rec = (unsigned char *)f->buf->data;
	n = sluice_ktls_recv_record(s->io.fd, rec, sizeof(f->buf->data), &type);
	if (n > 0 && type == SLUICE_TLS_APP_DATA) {
		/* Data after all (the record boundary moved on): relay it. */
		f->off = 0;
		f->len = (size_t)n;
		return SLUICE_OK;
	}
	buf_put(c->w, f->buf);
	f->buf = NULL;
	if (n < 0) {
		if (errno == EAGAIN)
			return SLUICE_AGAIN;
		if (errno == EBADMSG) {
			s->tls_broken = true;
			c->result = "tls_error";
			sluice_conn_detail(c, "client record failed authentication (bad_record_mac)");
			return SLUICE_ERR;
		}
		return flow_fail(c, s, "recvmsg", errno);
	}
	if (n == 0) {
		s->tls_broken = true;
		if (!c->detail)
			sluice_conn_detail(c, "eof without close_notify");
		f->src_eof = true;
		return SLUICE_OK;
	}
	if (type == SLUICE_TLS_ALERT && n >= 2 && rec[1] == 0) {
		f->src_eof = true;  /* close_notify: a clean half-close */
		return SLUICE_OK;
	}
	if (type == SLUICE_TLS_ALERT && n >= 2) {
		s->tls_broken = true;
		c->result = "tls_alert";
		sluice_conn_detail(c, "client alert %u (%s)", rec[1],
		         sluice_ktls_alert_name(rec[1]));
		return SLUICE_ERR;
	}
	if (type == SLUICE_TLS_HANDSHAKE && rec[0] == SLUICE_TLS_KEY_UPDATE) {
		/* The secrets are held only where the kernel can rekey
		 * (conn_ktls_engage); 6.1 answers EBUSY (design.md). */
		if (c->secret)
			return ktls_keyupdate_take(c, f, rec, (size_t)n);
		c->result = "ktls_keyupdate_unsupported";
		sluice_conn_detail(c, "client KeyUpdate (update_requested=%d)",
		         n >= 5 ? rec[4] : -1);
		return ktls_keyupdate_close(s);
	}
	/* A handshake message after the handshake (renegotiation, tickets
	 * from a client) or an unknown record type: not something to relay. */
	s->tls_broken = true;
	c->result = "tls_error";
	sluice_conn_detail(c, "unexpected record type %d (first byte %u)", type, rec[0]);
	return SLUICE_ERR;
}

/* ---- userspace: a TLS side, through one buffer ---- */

/* >0 bytes, 0 EOF, SLUICE_AGAIN, SLUICE_ERR (conn result set) */
static ssize_t side_read(struct sluice_conn *c, struct sluice_side *s, char *buf, size_t len)
{
	if (s->ssl) {
		int r, e;

		ERR_clear_error();
		r = SSL_read(s->ssl, buf, (int)len);
		if (s->keyupdate_seen) {
			/* kTLS sends but OpenSSL reads, and OpenSSL has just taken a
			 * KeyUpdate: it would switch its send key while the kernel
			 * keeps the old one and corrupt the stream (design.md).
			 * Close without writing another byte. */
			s->tls_broken = true;
			if (!c->result) {
				c->result = "ktls_keyupdate_unsupported";
				sluice_conn_detail(c, "client KeyUpdate with kTLS sending only");
			}
			return SLUICE_ERR;
		}
		if (r > 0)
			return r;
		e = SSL_get_error(s->ssl, r);
		switch (e) {
		case SSL_ERROR_WANT_READ:
		case SSL_ERROR_WANT_WRITE:   /* e.g. answering a KeyUpdate into a full socket */
			return SLUICE_AGAIN;
		case SSL_ERROR_ZERO_RETURN:  /* close_notify */
			return 0;
		case SSL_ERROR_SYSCALL:
			if (ERR_peek_error() == 0 && (r == 0 || errno == 0)) {
				/* TCP FIN without close_notify: EOF, passed on as a FIN */
				s->tls_broken = true;
				return 0;
			}
			if (errno == ECONNRESET || errno == EPIPE)
				return flow_fail(c, s, "read", errno);
			return flow_fail_tls(c, s, "read", r);
		default:
			/* OpenSSL 3 reports a FIN without close_notify as SSL_ERROR_SSL
			 * "unexpected eof while reading" unless told otherwise; that is
			 * the same truncation as above. */
			if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
				ERR_clear_error();
				s->tls_broken = true;
				return 0;
			}
			return flow_fail_tls(c, s, "read", r);
		}
	}
	for (;;) {
		ssize_t n = read(s->io.fd, buf, len);

		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return SLUICE_AGAIN;
		return flow_fail(c, s, "read", errno);
	}
}

static ssize_t side_write(struct sluice_conn *c, struct sluice_side *s, const char *buf, size_t len)
{
	if (s->ssl) {
		int r, e;

		ERR_clear_error();
		r = SSL_write(s->ssl, buf, (int)len);
		if (r > 0)
			return r;
		e = SSL_get_error(s->ssl, r);
		if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
			return SLUICE_AGAIN;
		if (e == SSL_ERROR_SYSCALL && (errno == EPIPE || errno == ECONNRESET))
			return flow_fail(c, s, "write", errno);
		return flow_fail_tls(c, s, "write", r);
	}
	for (;;) {
		ssize_t n = send(s->io.fd, buf, len, MSG_NOSIGNAL);

		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return SLUICE_AGAIN;
		return flow_fail(c, s, "write", errno);
	}
}

static int flow_copy(struct sluice_conn *c, struct sluice_flow *f)
{
	ssize_t n;
	int round;

	for (round = 0; round < FLOW_ROUNDS; round++) {
		n = flow_write_buf(c, f);
		if (n < 0)
			return (int)n;
		if (n > 0)
			continue;
		if (f->src_eof)
			return flow_shutdown_dst(c, f);
		/* Records still gathered go out before more plaintext is read:
		 * a stalled reader then holds one gather buffer, not that plus
		 * a read buffer plus OpenSSL's record buffer. */
		n = flow_flush_dst(c, f);
		if (n != SLUICE_OK)
			return (int)n;
		n = flow_read_buf(c, f);   /* data or EOF: the next round moves it */
		if (n != SLUICE_OK)   /* AGAIN: src empty, and the flush above left nothing */
			return (int)n;
	}
	n = flow_flush_dst(c, f);
	return n == SLUICE_OK ? SLUICE_OK : (int)n;
}

static int flow_pump(struct sluice_conn *c, struct sluice_flow *f)
{
	if (f->dst_shut)
		return SLUICE_DONE;
	if (f->splice)
		return flow_splice(c, f);
	return flow_copy(c, f);
}

bool sluice_flow_stuck(const struct sluice_flow *f)
{
	return f->in_pipe > 0 || (f->buf && f->off < f->len) || (f->src_eof && !f->dst_shut) ||
	       flow_dst_pending(f) || f->dst->keyupdate_owed;
}

/* A flow not pumped this time stands where its last pump left it:
 * finished, or waiting for its own event (a flow with more to do was
 * deferred, and a deferred pump runs both). */
static int flow_idle_state(const struct sluice_flow *f)
{
	return f->dst_shut ? SLUICE_DONE : SLUICE_AGAIN;
}

enum sluice_relay_rc sluice_relay_pump(struct sluice_conn *c, unsigned flows)
{
	int a, b;

	/* The idle deadline needs the time of the last transfer, not of
	 * every one: one clock read per pump instead of per splice. */
	c->moved = false;
	a = flows & SLUICE_FLOW_C2U ? flow_pump(c, &c->c2u) : flow_idle_state(&c->c2u);
	b = a == SLUICE_ERR ? SLUICE_ERR
	  : flows & SLUICE_FLOW_U2C ? flow_pump(c, &c->u2c) : flow_idle_state(&c->u2c);
	if (c->moved)
		c->last_active_ms = sluice_loop_now(c->w->loop);
	if (a == SLUICE_ERR || b == SLUICE_ERR)
		return SLUICE_RELAY_ERR;
	if (a == SLUICE_DONE && b == SLUICE_DONE)
		return SLUICE_RELAY_DONE;
	if (a == SLUICE_OK || b == SLUICE_OK)
		return SLUICE_RELAY_MORE;
	return SLUICE_RELAY_WAIT;
}
