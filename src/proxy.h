/* Internal types of the proxy: the process-wide proxy, its workers and
 * listeners, and the connection state machine.  Types only (HAProxy's -t.h
 * idea); functions live in proxy.c (workers, listeners, accept), conn.c
 * (one connection from accept to close) and relay.c (moving bytes). */
#ifndef SLUICE_PROXY_H
#define SLUICE_PROXY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "balance.h"
#include "config.h"
#include "identity.h"
#include "ktls.h"
#include "limit.h"
#include "loop.h"

struct sluice_worker;
struct sluice_conn;
struct sluice_sockmap;
struct sluice_sockmap_worker;
struct sluice_sockmap_pair;

struct sluice_proxy {
	struct sluice_config *cfg;
	SSL_CTX *ssl_ctx;              /* NULL when no listener is mtls */
	bool ktls;                     /* kTLS enabled: configured and the kernel has it */
	bool ktls_rekey;               /* ...and it can take new TLS 1.3 keys (KeyUpdate) */
	char ktls_why[160];            /* why not, when configured but unavailable */
	struct sluice_pool *pools;     /* one per cfg->upstreams[] */
	struct sluice_limits *limits;
	struct sluice_bpf *bpf;        /* kernel-kept counters, NULL = atomics */
	char bpf_why[256];             /* why not, when bpf.mode is auto */
	struct sluice_sockmap *sockmap; /* sockmap datapath, NULL = splice for every listener */
	char sockmap_why[256];         /* why a configured sockmap datapath is not available */
	struct sluice_worker *workers;
	unsigned n_workers;
	int fd_limit;                  /* RLIMIT_NOFILE at start, 0 if unlimited */
	_Atomic bool stopping;
};

struct sluice_listener {
	struct sluice_io io;
	struct sluice_worker *w;
	const struct sluice_listener_cfg *cfg;
	struct sluice_timer retry;     /* accept paused after EMFILE/ENFILE/ENOBUFS */
	uint64_t last_fdlimit_log_ms;
	uint64_t fdlimit_refusals;     /* since the last log line */
};

/* A client socket we have stopped reading but whose last bytes (data and
 * close_notify) must still reach the client: closing a socket with unread
 * input sends an RST, which makes the client's kernel drop what it has not
 * yet delivered.  Kept until the send queue is acknowledged, the client
 * hangs up, or a short deadline (nginx's lingering close). */
struct sluice_linger {
	struct sluice_io io;
	struct sluice_timer timer;
	struct sluice_worker *w;
	uint64_t deadline_ms;
	struct sluice_linger *prev, *next;
};

/* A pipe for splice(); held by a flow only while it carries bytes. */
struct sluice_pipe {
	int rfd, wfd;
	struct sluice_pipe *next;
};

/* A userspace relay buffer; held by a flow only while it carries bytes. */
#define SLUICE_BUF_SIZE (64 * 1024)   /* four TLS records' plaintext: one send() for them */
struct sluice_buf {
	struct sluice_buf *next;
	char data[SLUICE_BUF_SIZE];
};

struct sluice_worker {
	struct sluice_proxy *proxy;
	unsigned id;
	pthread_t thread;
	struct sluice_loop *loop;
	struct sluice_io stop_io;      /* eventfd written by sluice_proxy_stop() */
	struct sluice_listener *listeners;  /* one per cfg->listeners[] */
	struct sluice_timer drain_timer;
	bool draining, exit;
	struct sluice_conn *conns;     /* live connections, for drain */
	unsigned n_conns;
	struct sluice_conn *graveyard; /* closed this iteration; freed after it */
	struct sluice_linger *lingering; /* client sockets draining before close */
	struct sluice_pipe *free_pipes;
	unsigned n_free_pipes, max_free_pipes; /* cache bounded by the fd limit */
	struct sluice_buf *free_bufs;
	unsigned n_free_bufs;
	struct sluice_sockmap_worker *sockmap; /* ring buffer + pairs (src/sockmap.c), or NULL */
};

/* The life of a connection, read top to bottom (design.md's flow). */
enum sluice_conn_state {
	SLUICE_CONN_HANDSHAKE, /* TLS with the client, under the handshake deadline;
	                          identity, authorization and limits run inside
	                          it (verify callback) so a refusal is a TLS alert */
	SLUICE_CONN_CONNECT,   /* connecting to a pool server under the connect
	                          deadline; refusal or timeout tries the next */
	SLUICE_CONN_RELAY,     /* both sides up: bytes flow until both directions
	                          have ended, under the idle/lifetime deadlines */
	SLUICE_CONN_CLOSED,    /* fds closed and logged; freed after this loop
	                          iteration (events for it may still be queued) */
};

enum sluice_datapath { SLUICE_DP_NONE, SLUICE_DP_SPLICE, SLUICE_DP_KTLS, SLUICE_DP_USERSPACE, SLUICE_DP_SOCKMAP };

/* One end of the pair.  client and upstream have the same shape. */
struct sluice_side {
	struct sluice_io io;           /* io.fd < 0 when not open */
	struct sluice_conn *conn;
	SSL *ssl;                      /* OpenSSL's state; freed once kTLS has both ways */
	bool tls;                      /* a TLS side (ssl may be gone: kTLS) */
	bool tls_broken;               /* TLS ended without close_notify (or failed):
	                                  OpenSSL refuses to write on it any more */
	bool ktls_tx, ktls_rx;         /* record crypto in the kernel, per direction */
	bool keyupdate_seen;           /* a KeyUpdate reached OpenSSL (kTLS TX only) */
	bool keyupdate_owed;           /* kTLS: the peer asked for our KeyUpdate; it must
	                                  precede our next data record (RFC 8446 4.6.3) */
	bool linger;                   /* close by draining what we sent (see sluice_linger) */
	bool close_notify_sent;        /* kTLS: our close_notify went out through the kernel */
};

/* One direction of the relay: bytes from src to dst. */
struct sluice_flow {
	struct sluice_side *src, *dst;
	struct sluice_pipe *pipe;      /* splice: held while in_pipe > 0 */
	size_t in_pipe;
	struct sluice_buf *buf;        /* userspace: held while off < len */
	size_t off, len;
	bool src_eof;                  /* src has no more bytes (FIN / close_notify) */
	bool dst_shut;                 /* EOF passed on to dst: this direction is done */
	bool close_notify_out;         /* SSL_shutdown done; gathered bytes still to send */
	bool splice;                   /* both ends are plain TCP or kTLS that way */
	bool filling;                  /* kTLS receive: gathering records in the pipe */
	uint64_t bytes;
};

struct sluice_conn {
	struct sluice_worker *w;
	struct sluice_listener *l;
	enum sluice_conn_state state;
	struct sluice_conn *prev, *next;   /* worker's live list, or graveyard */

	struct sluice_side client, upstream;
	struct sluice_flow c2u, u2c;
	enum sluice_datapath datapath;
	struct sluice_sockmap_pair *sockmap; /* datapath sockmap: the kernel moves the bytes */
	/* datapath sockmap, for the close line: times a source was paused,
	 * and bytes userspace copied (a FIN came while paused). */
	uint32_t sockmap_pauses;
	uint32_t sockmap_kpauses;      /* of those, taken by the kernel at a segment (no worker) */
	uint64_t sockmap_copied;
	uint64_t sockmap_trimmed;      /* repeated bytes the verdict cut off (sockmap_overlap) */

	union sluice_ipaddr peer;      /* the client, for the close line */
	struct sluice_timer timer;     /* the current state's deadline */
	uint64_t start_ms, last_active_ms;
	bool moved;                    /* bytes moved during the current pump */

	/* Strings below are heap-allocated only when there is something to say,
	 * so an idle connection costs a few hundred bytes of its own. */
	struct sluice_ktls_secret *secret; /* TLS 1.3 traffic secrets: handshake to install,
	                                      or for life where the kernel can rekey */
	char *ktls_why;                /* why kTLS did not engage both ways */
	const char *tls_version;       /* OpenSSL's static strings, kept for the log */
	const char *cipher;            /* line after the SSL object is gone (kTLS) */

	struct sluice_identity *id;    /* the client's names (424 B), held only from the
	                                  handshake until admission is final */
	bool id_read;                  /* id holds the client certificate's names */
	int client_idx;                /* clients[] entry, -1 until matched */
	char *id_name;                 /* "CN=alice": log name and limit key */
	struct sluice_limit_ref *limit_ref;
	bool admitted;
	bool ticket_admitted;          /* admitted from a cached session's certificate */
	bool resumed;                  /* the handshake resumed a session */
	uint8_t sess_id_len;           /* kTLS both ways: the session's ID, kept when the */
	unsigned char sess_id[SSL_MAX_SSL_SESSION_ID_LENGTH]; /* SSL object went (see conn.c) */
	uint32_t key_updates;          /* client KeyUpdates followed in the kernel */
	uint32_t keyupdate_streak;     /* ...in a row with no application data between */
	uint64_t keyupdate_streak_at;  /* c2u bytes at the last one */

	int server;                    /* index in the pool, -1 when none held */
	uint64_t tried;                /* servers tried by this connection */
	uint64_t fd_wait_until_ms;     /* out of fds: retry socket() until then, 0 if not waiting */
	char *connect_errors;          /* "addr: why; addr: why" */

	const char *result;            /* set once: the first reason wins */
	char *detail;                  /* set once, like result */
};

/* conn.c */
void sluice_conn_accept(struct sluice_listener *l, int fd, const struct sluice_sockaddr *peer);
void sluice_conn_close(struct sluice_conn *c, const char *result, const char *detail);
/* Sets the close line's detail unless one is set (the first reason wins). */
void sluice_conn_detail(struct sluice_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* proxy.c: out of fds; the listener stops accepting for a while. */
void sluice_listener_fdlimit(struct sluice_listener *l, int err);
int sluice_conn_verify_cb(int preverify_ok, X509_STORE_CTX *ctx);
/* session.c's admit hook: 0 if this connection may resume sess. */
int sluice_conn_resume_admit(SSL *ssl, SSL_SESSION *sess);

void sluice_linger_free_all(struct sluice_worker *w);

/* relay.c */
enum sluice_relay_rc { SLUICE_RELAY_WAIT, SLUICE_RELAY_MORE, SLUICE_RELAY_DONE, SLUICE_RELAY_ERR };
/* Moves bytes both ways until both would block (WAIT), a fairness budget is
 * spent (MORE: call again soon), both directions have ended (DONE), or a side
 * failed (ERR: c->result and c->detail say which and why). */
/* Which flows an event can move: readable source or writable destination.
 * Pumping only those saves the read that would find the other direction
 * empty (one EAGAIN per wakeup). */
#define SLUICE_FLOW_C2U  1u
#define SLUICE_FLOW_U2C  2u
#define SLUICE_FLOW_BOTH (SLUICE_FLOW_C2U | SLUICE_FLOW_U2C)
enum sluice_relay_rc sluice_relay_pump(struct sluice_conn *c, unsigned flows);
/* The flow holds bytes (or its end of stream) for a destination that was
 * not writable: a writable event on that destination must pump it. */
bool sluice_flow_stuck(const struct sluice_flow *f);
/* After the handshake, for a TLS side that sends through OpenSSL: its
 * records are gathered and sent with one send() (relay.c says why).
 * -1 if the BIO could not be made; the connection works without it. */
int sluice_relay_gather_attach(struct sluice_conn *c, struct sluice_side *s);
/* Returns the flow's pipe/buffer to the worker's pools. */
void sluice_relay_release(struct sluice_conn *c);
void sluice_worker_pools_free(struct sluice_worker *w);
/* Closes the cached pipes; returns how many fds that gave back. */
unsigned sluice_worker_pipes_trim(struct sluice_worker *w);

/* proxy.c */
void sluice_worker_conn_gone(struct sluice_worker *w);

#endif
