/* The sockmap datapath, userspace side (see sockmap.h for the contract and
 * docs/architecture.md for the reasoning).
 *
 * Pair slots are shared by all workers (one mutex-protected free list);
 * everything else about a pair belongs to the worker that owns its
 * connection, including its ring buffer, so the hot paths take no lock.
 *
 * Side k of a pair: 0 the client socket, 1 the upstream socket.
 * Direction d: the bytes side d receives, sent by side d ^ 1 (0 is
 * client -> upstream). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <netinet/in.h>
#include <linux/tcp.h>     /* tcp_info with tcpi_bytes_acked/received */
#include <linux/sockios.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "log.h"
#include "sockmap.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

/* Receive buffer of a sockmap socket.  The verdict empties the receive
 * queue as bytes arrive, so this sizes the window a sender may have in
 * flight, and what a paused source holds before its window closes (about
 * twice this: the kernel doubles it).  It was 128 KiB while only the
 * worker could pause (what arrived before its pause grew with the
 * window); against veth's 64 KiB GRO segments that small a buffer let
 * silly-window avoidance hold the window shut after each pause (one
 * stream 0.3 Gbit/s).  Since the kernel pauses at the next segment the
 * source sends (sockmap_pause in bpf/sluice.bpf.c), 2 MiB: measured on
 * 6.18 as fast as kernel autotuning, with a bound autotuning lacks. */
#define SOCKMAP_RCVBUF (2 * 1024 * 1024)
/* Longest pause between two looks at a pair that is paused or draining. */
#define POLL_MAX_MS 16
/* Buffer of a direction's tail copy (see dir_tail). */
#define TAIL_BUF (64 * 1024)

struct sluice_sockmap {
	struct sluice_bpf_sockmap_handles h;
	uint64_t soft_cap, hard_cap;
	pthread_mutex_t lock;          /* the free slot list */
	uint32_t *free_slots, n_free;
};

struct sluice_sockmap_worker {
	struct sluice_io io;           /* the ring buffer's fd */
	struct sluice_sockmap *sm;
	struct sluice_worker *w;
	struct ring_buffer *rb;
	int ring_fd;
	uint32_t id;
	struct sluice_sockmap_pair **by_slot;  /* this worker's pairs */
};

struct sluice_sockmap_pair {
	struct sluice_conn *c;
	struct sluice_sockmap_worker *sw;
	uint32_t slot, gen;
	uint64_t cookie[2];
	uint64_t wbase[2];             /* side k's acked + queued bytes at insert */
	bool eof[2];                   /* side k received a FIN */
	bool shut[2];                  /* direction d done: FIN passed to side d ^ 1 */
	bool reset;                    /* close both sockets with an RST */
	/* Direction d's tail: its source was paused and can no longer go
	 * back into sockmap_socks (it is past ESTABLISHED: a FIN came while
	 * paused, or we shut it), so userspace copies the rest (dir_tail). */
	bool tail[2];
	uint64_t tail_sent[2];         /* bytes the tail copy handed to the destination */
	char *tail_buf[2];
	size_t tail_len[2], tail_off[2];
	struct sluice_timer timer;     /* while pausing, paused or draining */
	unsigned polls;
	uint64_t seen;                 /* redirected bytes at the last idle look */
};

static volatile struct sluice_bpf_pair *pstate(const struct sluice_sockmap_pair *p)
{
	return &p->sw->sm->h.pairs[p->slot];
}

static int side_fd(const struct sluice_conn *c, int k)
{
	return k == 0 ? c->client.io.fd : c->upstream.io.fd;
}

/* Bytes side fd has put into its TCP write queue since it was created:
 * acknowledged + not yet acknowledged.  TCP_INFO first, so a concurrent
 * ACK can only make this an underestimate. */
static int tcp_written(int fd, uint64_t *out)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	int outq = 0;

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ioctl(fd, SIOCOUTQ, &outq) < 0)
		return -1;
	*out = ti.tcpi_bytes_acked + (uint64_t)outq;
	return 0;
}

static int tcp_received(int fd, uint64_t *out)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return -1;
	*out = ti.tcpi_bytes_received;
	return 0;
}

static uint64_t load64(volatile const __u64 *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static uint32_t load32(volatile const __u32 *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* ---- policy ---- */

/* The kernels the datapath has been through: the host's 6.18
 * (tests/net/sockmap.sh, make soak) and Debian 12's 6.1 in the VM
 * (tests/vm/sockmap.sh).  Both run the verdict from
 * tcp_read_skb(), which 6.0 introduced for sockmap; older kernels feed it
 * through strparser/tcp_read_sock, a path none of the pause, the tail copy
 * or the tests have been through, so sluice splices there. */
#define SOCKMAP_MIN_MAJOR 6
#define SOCKMAP_MIN_MINOR 1

int sluice_sockmap_kernel_ok(const char *release, char *why, size_t whylen)
{
	unsigned major, minor;

	if (!release || sscanf(release, "%u.%u", &major, &minor) != 2) {
		snprintf(why, whylen, "refused: cannot read the kernel release \"%s\"", release ? release : "");
		return 0;
	}
	if (major > SOCKMAP_MIN_MAJOR || (major == SOCKMAP_MIN_MAJOR && minor >= SOCKMAP_MIN_MINOR))
		return 1;
	snprintf(why, whylen,
	         "refused on kernel %u.%u: verified on 6.1 and 6.18 only (verdicts from tcp_read_skb, 6.1+); "
	         "see docs/architecture.md", major, minor);
	return 0;
}

/* ---- proxy-wide ---- */

int sluice_sockmap_open(struct sluice_bpf *b, const struct sluice_config *cfg, struct sluice_sockmap **out,
                        char *why, size_t whylen)
{
	struct sluice_sockmap *sm;
	struct utsname u;
	uint32_t i;

	*out = NULL;
	if (uname(&u) < 0) {
		snprintf(why, whylen, "uname: %s", strerror(errno));
		return SLUICE_ERR;
	}
	if (!sluice_sockmap_kernel_ok(u.release, why, whylen))
		return SLUICE_ERR;
	sm = calloc(1, sizeof(*sm));
	if (!sm) {
		snprintf(why, whylen, "out of memory");
		return SLUICE_ERR;
	}
	if (sluice_bpf_sockmap_handles(b, &sm->h, why, whylen) != SLUICE_OK) {
		free(sm);
		return SLUICE_ERR;
	}
	/* The sockets that may be paused (sockmap_watch): accepted on a
	 * sockmap listener's port, and upstreams (key 0). */
	for (i = 0; i <= cfg->n_listeners; i++) {
		uint32_t port = 0, one = 1;

		if (i < cfg->n_listeners) {
			const struct sluice_listener_cfg *l = &cfg->listeners[i];

			if (l->datapath != SLUICE_DATAPATH_SOCKMAP)
				continue;
			/* sin_port and sin6_port sit at the same offset */
			port = ntohs(((const struct sockaddr_in *)&l->sa.ss)->sin_port);
		}
		if (bpf_map_update_elem(sm->h.ports_fd, &port, &one, BPF_ANY) < 0) {
			snprintf(why, whylen, "sockmap_ports: %s", strerror(errno));
			free(sm);
			return SLUICE_ERR;
		}
	}
	sm->soft_cap = cfg->bpf.sockmap_pair_cap;
	sm->hard_cap = cfg->bpf.sockmap_hard_cap;
	sm->free_slots = malloc(sm->h.n_pairs * sizeof(*sm->free_slots));
	if (!sm->free_slots) {
		free(sm);
		snprintf(why, whylen, "out of memory");
		return SLUICE_ERR;
	}
	for (i = 0; i < sm->h.n_pairs; i++)   /* slot 0 handed out first */
		sm->free_slots[i] = sm->h.n_pairs - 1 - i;
	sm->n_free = sm->h.n_pairs;
	pthread_mutex_init(&sm->lock, NULL);
	*out = sm;
	return SLUICE_OK;
}

void sluice_sockmap_close(struct sluice_sockmap *sm)
{
	if (!sm)
		return;
	pthread_mutex_destroy(&sm->lock);
	free(sm->free_slots);
	free(sm);
}

static int slot_get(struct sluice_sockmap *sm, uint32_t *slot)
{
	int rc = SLUICE_ERR;

	pthread_mutex_lock(&sm->lock);
	if (sm->n_free > 0) {
		*slot = sm->free_slots[--sm->n_free];
		rc = SLUICE_OK;
	}
	pthread_mutex_unlock(&sm->lock);
	return rc;
}

static void slot_put(struct sluice_sockmap *sm, uint32_t slot)
{
	pthread_mutex_lock(&sm->lock);
	sm->free_slots[sm->n_free++] = slot;
	pthread_mutex_unlock(&sm->lock);
}

/* ---- pair checks ---- */

static void pair_close_now(struct sluice_sockmap_pair *p, enum sluice_relay_rc rc)
{
	struct sluice_conn *c = p->c;

	if (rc == SLUICE_RELAY_DONE)
		sluice_conn_close(c, "ok", NULL);
	else if (rc == SLUICE_RELAY_ERR)
		sluice_conn_close(c, c->result ? c->result : "error", NULL);
}

static void pair_on_timer(struct sluice_timer *t)
{
	struct sluice_sockmap_pair *p =
		(struct sluice_sockmap_pair *)((char *)t - offsetof(struct sluice_sockmap_pair, timer));

	pair_close_now(p, sluice_sockmap_pump(p->c));
}

/* Direction d's backlog as userspace sees it: redirected by the verdict
 * (or copied by userspace), not yet in the destination's TCP write
 * queue. */
static int dir_backlog(struct sluice_sockmap_pair *p, int d, uint64_t *backlog)
{
	uint64_t red = load64(&pstate(p)->dir[d].redirected) + p->tail_sent[d], w;

	if (tcp_written(side_fd(p->c, d ^ 1), &w) < 0)
		return -1;
	w -= p->wbase[d ^ 1];
	*backlog = red > w ? red - w : 0;
	return 0;
}

/* Soft cap passed (ring event, and again at each look while the pause is
 * pending): a zero-length send makes tcp_sendmsg_locked() call
 * tcp_current_mss() under the source's socket lock, where the sockops
 * program takes the source out of sockmap_socks (bpf/sluice.bpf.c
 * sockmap_pause says why only there).  It sends nothing.  If it fails
 * (the source already shut down for writing, so tcp_sendmsg refuses
 * before it), the hard cap still bounds the backlog. */
static void dir_pause(struct sluice_sockmap_pair *p, int d)
{
	volatile struct sluice_bpf_pair_dir *pd = &pstate(p)->dir[d];

	if (load32(&pd->soft) != 1 || load32(&pd->paused))
		return;
	__atomic_store_n(&pd->pause_req, 1, __ATOMIC_RELEASE);
	(void)send(side_fd(p->c, d), NULL, 0, MSG_DONTWAIT | MSG_NOSIGNAL);
	__atomic_store_n(&pd->pause_req, 0, __ATOMIC_RELEASE);
}

/* The tail copy of direction d (paused source -> destination), for a
 * source that cannot go back into sockmap_socks.  Only while it is out of
 * sockmap_socks (no verdict runs for d) and its backlog is 0 (everything
 * redirected is in the destination's TCP write queue), so the copied bytes
 * follow the redirected ones in order.
 *
 * copy_flush: sends what the buffer holds.  1 empty, 0 the destination is
 * full (EAGAIN), -1 error (errno). */
static int copy_flush(struct sluice_sockmap_pair *p, int d)
{
	volatile struct sluice_bpf_pair_dir *pd = &pstate(p)->dir[d];
	ssize_t n;

	while (p->tail_off[d] < p->tail_len[d]) {
		n = send(side_fd(p->c, d ^ 1), p->tail_buf[d] + p->tail_off[d], p->tail_len[d] - p->tail_off[d],
		         MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0)
			/* EAGAIN: its send buffer is full; EPOLLOUT or the
			 * timer brings us back.  Else the socket failed. */
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		p->tail_off[d] += (size_t)n;
		p->tail_sent[d] += (uint64_t)n;
		/* The verdict's backlog is redirected - (peer write_seq -
		 * seq_base): bytes that moved the peer's write_seq without
		 * being redirected move the origin too.  No verdict of
		 * direction d runs now (its source is out of the map). */
		pd->seq_base += (uint32_t)n;
	}
	return 1;
}

/* copy_fill: one recv from the source into the empty buffer.
 *
 * Reading a socket the verdict has read is fragile on 6.18: a resume that
 * copied a first chunk by recv() before re-inserting (to make the source
 * announce its reopened window at once) hit "TCP recvmsg seq # bug 2"
 * warnings (skbs left in the receive queue below copied_seq) and
 * duplicated 229,376 bytes in one 512 MiB run.  So recv() is only used for
 * the tail, and each one is checked: what the kernel still holds after it
 * (TCP_INQ: rcv_nxt - copied_seq, the FIN included) must be exactly what
 * our own accounting says is left (received - redirected - copied - this
 * read).  Otherwise the pair is reset (errno EPROTO) before the bytes go
 * anywhere, never corrupted.
 *
 * Not SIOCINQ: on a socket that is in any sockmap (ours stays in
 * sockmap_peers) 6.18 answers it from the psock's own queue (tcp_bpf_ioctl),
 * 0 here whatever TCP holds.  A check on SIOCINQ refused every tail that
 * had bytes to copy, which looked like the kernel losing them
 * (docs/architecture.md).  The TCP_INQ hint comes from tcp_recvmsg itself.
 *
 * >0 bytes, 0 EOF, -2 nothing queued (EAGAIN), -1 error (errno). */
static ssize_t copy_fill(struct sluice_sockmap_pair *p, int d)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
	                     .msg_controllen = sizeof(cbuf.buf) };
	struct cmsghdr *cm;
	uint64_t rx, left;
	int fd = side_fd(p->c, d), inq = -1;
	ssize_t n;

	if (!p->tail_buf[d] && !(p->tail_buf[d] = malloc(TAIL_BUF)))
		return -1;
	iov.iov_base = p->tail_buf[d];
	iov.iov_len = TAIL_BUF;
	n = recvmsg(fd, &mh, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? -2 : -1;
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == IPPROTO_TCP && cm->cmsg_type == TCP_CM_INQ)
			memcpy(&inq, CMSG_DATA(cm), sizeof(inq));
	if (tcp_received(fd, &rx) < 0)
		return -1;
	left = rx - load64(&pstate(p)->dir[d].redirected) - p->tail_sent[d];
	if (inq < 0 || left < (uint64_t)n || left - (uint64_t)n != (uint64_t)inq) {
		errno = EPROTO;
		sluice_conn_detail(p->c, "sockmap tail: read %zd, the kernel holds %d more, sluice counts %llu", n,
		                   inq, (unsigned long long)left);
		return -1;
	}
	p->tail_len[d] = (size_t)n;
	p->tail_off[d] = 0;
	return n;
}

/* Direction d's source cannot go back into sockmap_socks: from now on
 * userspace copies its bytes (dir_tail), woken by both sockets' readiness.
 * 0, or -1 (epoll). */
static int tail_start(struct sluice_sockmap_pair *p, int d)
{
	struct sluice_conn *c = p->c;
	int k, one = 1;

	/* copy_fill checks each read against the TCP_INQ hint. */
	if (setsockopt(side_fd(c, d), IPPROTO_TCP, TCP_INQ, &one, sizeof(one)) < 0)
		return -1;
	p->tail[d] = true;
	for (k = 0; k < 2; k++) {
		struct sluice_side *s = k == 0 ? &c->client : &c->upstream;

		sluice_loop_del(c->w->loop, &s->io);
		if (sluice_loop_add(c->w->loop, &s->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0)
			return -1;
	}
	return 0;
}

/* The tail copy of direction d.  1 caught up (source empty for now or at
 * EOF), 0 waiting (destination full or the backlog not drained yet),
 * -1 socket error (errno). */
static int dir_tail(struct sluice_sockmap_pair *p, int d)
{
	uint64_t bl;
	ssize_t n;
	int r;

	if (dir_backlog(p, d, &bl) < 0)
		return -1;
	if (bl > 0)
		return 0;
	for (;;) {
		if ((r = copy_flush(p, d)) != 1)
			return r;
		n = copy_fill(p, d);
		if (n == -1)
			return -1;
		if (n <= 0)
			return 1;       /* EAGAIN: EPOLLIN comes back; 0: the FIN, dir_finish passes it on */
	}
}

/* A direction that asked for a pause: resumes it once the backlog is under
 * half the soft cap.  Flags first (so the sockops does not pause it again
 * on the way), then back into sockmap_socks (the kernel takes the socket's
 * lock for the update), then SO_RCVLOWAT, which runs the socket's
 * data_ready: bytes queued while paused get their verdict now.  In order:
 * every byte of the direction goes through the destination's psock queue,
 * none through userspace.  A source that cannot go back (past
 * ESTABLISHED) has its tail copied, once the backlog is 0.
 * 1 running, 0 still paused or pausing, -1 error (errno). */
static int dir_resume_check(struct sluice_sockmap_pair *p, int d)
{
	volatile struct sluice_bpf_pair_dir *pd = &pstate(p)->dir[d];
	uint64_t bl, fd = (uint64_t)side_fd(p->c, d);
	int one = 1;

	if (!load32(&pd->soft))
		return 1;
	if (dir_backlog(p, d, &bl) < 0)
		return -1;
	if (!load32(&pd->paused)) {
		uint32_t want = 1;

		if (bl > p->sw->sm->soft_cap / 2) {
			dir_pause(p, d);
			return 0;
		}
		/* The pause never took (or is still to come): re-arm.  The
		 * kernel may be taking it right now (soft 1 -> 2 under the
		 * source's lock): then the cmpxchg fails, and the next look
		 * finds the source paused. */
		if (!__atomic_compare_exchange_n(&pd->soft, &want, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return 0;
		return 1;
	}
	if (bl > p->sw->sm->soft_cap / 2)
		return 0;
	__atomic_store_n(&pd->paused, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&pd->soft, 0, __ATOMIC_RELEASE);
	if (bpf_map_update_elem(p->sw->sm->h.socks_fd, &p->cookie[d], &fd, BPF_NOEXIST) < 0) {
		/* EOPNOTSUPP: the kernel only inserts ESTABLISHED sockets, and
		 * this one got its FIN while paused (or was shut down). */
		if (errno != EOPNOTSUPP)
			return -1;
		return tail_start(p, d) < 0 ? -1 : 1;
	}
	if (setsockopt((int)fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) < 0)
		return -1;
	return 1;
}

/* Side d sent its FIN: once every byte it sent before it has been
 * redirected (received - 1 for the FIN == redirected) and has reached the
 * destination's TCP write queue, pass the FIN on.  Shutting down earlier
 * would lose what the kernel still holds (design.md pitfall 3).
 * SLUICE_OK (done or not yet: p->shut[d] says), SLUICE_ERR. */
static int dir_finish(struct sluice_sockmap_pair *p, int d)
{
	struct sluice_conn *c = p->c;
	uint64_t rx, red, w;
	int dst = side_fd(c, d ^ 1);

	if (p->shut[d] || !p->eof[d])
		return SLUICE_OK;
	/* Everything the source received went either through the verdict or
	 * through the tail copy. */
	red = load64(&pstate(p)->dir[d].redirected) + p->tail_sent[d];
	if (p->tail_off[d] < p->tail_len[d])
		return SLUICE_OK;
	if (tcp_received(side_fd(c, d), &rx) < 0 || tcp_written(dst, &w) < 0)
		return SLUICE_OK;   /* failing socket: its error event says why */
	if (rx == 0 || rx - 1 != red || w - p->wbase[d ^ 1] < red)
		return SLUICE_OK;
	/* Not while the destination is itself a paused source (or about to
	 * be): shut down, it could not go back into sockmap_socks, and
	 * pausing then shutting down lost bytes in t_51.  Its resume comes
	 * first; the FIN waits for it. */
	if (load32(&pstate(p)->dir[d ^ 1].soft) && !p->shut[d ^ 1])
		return SLUICE_OK;
	if (shutdown(dst, SHUT_WR) < 0 && errno != ENOTCONN) {
		if (!c->result) {
			c->result = d == 0 ? "upstream_error" : "client_error";
			sluice_conn_detail(c, "%s shutdown: %s", d == 0 ? "upstream" : "client", strerror(errno));
		}
		return SLUICE_ERR;
	}
	p->shut[d] = true;
	return SLUICE_OK;
}

static const char *dead_why(uint32_t why)
{
	switch (why) {
	case SLUICE_BPF_DEAD_HARD_CAP: return "hard cap";
	case SLUICE_BPF_DEAD_GLOBAL_CAP: return "global cap";
	case SLUICE_BPF_DEAD_PEER_GONE: return "peer left the map";
	case SLUICE_BPF_DEAD_SEQ: return "an skb that does not continue the stream";
	default: return "unknown";
	}
}

/* The verdict marked the pair dead: reset both ways, say why. */
static enum sluice_relay_rc pair_dead(struct sluice_conn *c, struct sluice_sockmap_pair *p)
{
	volatile struct sluice_bpf_pair *st = pstate(p);
	uint32_t dd = load32(&st->dead_dir) & 1;

	p->reset = true;
	if (!c->result) {
		c->result = "sockmap_backlog";
		sluice_conn_detail(c, "%s: %s backlog %u bytes (soft cap %llu, hard cap %llu)",
		                   dead_why(load32(&st->dead_why)), dd == 0 ? "client->upstream" : "upstream->client",
		                   load32(&st->dead_backlog), (unsigned long long)p->sw->sm->soft_cap,
		                   (unsigned long long)p->sw->sm->hard_cap);
	}
	return SLUICE_RELAY_ERR;
}

enum sluice_relay_rc sluice_sockmap_pump(struct sluice_conn *c)
{
	struct sluice_sockmap_pair *p = c->sockmap;
	volatile struct sluice_bpf_pair *st = pstate(p);
	struct pollfd pf[2];
	bool wait = false, dead;
	int k;

	/* "Peer gone" is what the verdict sees when the other socket was
	 * reset (the kernel drops a closed socket from every map): then the
	 * reset is the reason, found below, not the backlog. */
	dead = load32(&st->state) == SLUICE_BPF_PAIR_DEAD;
	if (dead && load32(&st->dead_why) != SLUICE_BPF_DEAD_PEER_GONE)
		return pair_dead(c, p);
	/* Which sockets ended, without reading them (there is nothing to read:
	 * the verdict took every byte). */
	for (k = 0; k < 2; k++) {
		pf[k].fd = side_fd(c, k);
		pf[k].events = POLLRDHUP;
		pf[k].revents = 0;
	}
	if (poll(pf, 2, 0) < 0 && errno != EINTR) {
		c->result = "internal";
		sluice_conn_detail(c, "poll: %s", strerror(errno));
		return SLUICE_RELAY_ERR;
	}
	for (k = 0; k < 2; k++) {
		if (pf[k].revents & (POLLERR | POLLHUP)) {
			int err = 0;
			socklen_t len = sizeof(err);

			if (getsockopt(pf[k].fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				err = errno;
			if (err) {
				/* One side reset: reset the other too, so its peer
				 * cannot take a cut stream for a complete one. */
				p->reset = true;
				if (!c->result) {
					c->result = k == 0 ? "client_error" : "upstream_error";
					sluice_conn_detail(c, "%s read: %s", k == 0 ? "client" : "upstream", strerror(err));
				}
				return SLUICE_RELAY_ERR;
			}
		}
		if (pf[k].revents & (POLLRDHUP | POLLHUP))
			p->eof[k] = true;
	}
	if (dead)
		return pair_dead(c, p);
	for (k = 0; k < 2; k++) {
		if (!p->tail[k] || p->shut[k])
			continue;
		switch (dir_tail(p, k)) {
		case 0:
			wait = true;
			break;
		case -1:
			p->reset = true;
			if (!c->result) {
				c->result = "internal";
				if (errno != EPROTO)   /* EPROTO: copy_fill said why */
					sluice_conn_detail(c, "sockmap tail copy %s: %s",
					                   k == 0 ? "client->upstream" : "upstream->client",
					                   strerror(errno));
			}
			return SLUICE_RELAY_ERR;
		}
	}
	for (k = 0; k < 2; k++) {
		if (dir_finish(p, k) != SLUICE_OK) {
			p->reset = true;
			return SLUICE_RELAY_ERR;
		}
		if (p->eof[k] && !p->shut[k])
			wait = true;
		switch (dir_resume_check(p, k)) {
		case 0:
			wait = true;
			break;
		case -1:
			/* Its bytes can no longer move: end it as a
			 * failure, with an RST both ways. */
			p->reset = true;
			if (!c->result) {
				c->result = "internal";
				sluice_conn_detail(c, "sockmap resume of the %s failed: %s",
				                   k == 0 ? "client" : "upstream", strerror(errno));
			}
			return SLUICE_RELAY_ERR;
		}
	}
	if (p->shut[0] && p->shut[1])
		return SLUICE_RELAY_DONE;
	if (wait) {
		/* Nothing signals "the backlog drained": look again soon,
		 * backing off to POLL_MAX_MS. */
		unsigned ms = p->polls < 4 ? 1u << p->polls : POLL_MAX_MS;

		p->polls++;
		if (sluice_timer_set(c->w->loop, &p->timer, sluice_now_ms() + ms) < 0) {
			c->result = "internal";
			sluice_conn_detail(c, "cannot arm the sockmap timer: out of memory");
			return SLUICE_RELAY_ERR;
		}
	} else {
		p->polls = 0;
		sluice_timer_cancel(c->w->loop, &p->timer);
	}
	return SLUICE_RELAY_WAIT;
}

void sluice_sockmap_touch(struct sluice_conn *c)
{
	struct sluice_sockmap_pair *p = c->sockmap;
	uint64_t moved;

	if (!p)
		return;
	moved = load64(&pstate(p)->dir[0].redirected) + load64(&pstate(p)->dir[1].redirected);
	if (moved != p->seen) {
		p->seen = moved;
		c->last_active_ms = sluice_now_ms();
	}
}

/* ---- ring buffer: the verdict's events for this worker ---- */

static int ring_event(void *ctx, void *data, size_t len)
{
	struct sluice_sockmap_worker *sw = ctx;
	const struct sluice_bpf_event *ev = data;
	struct sluice_sockmap_pair *p;

	if (len < sizeof(*ev) || ev->slot >= sw->sm->h.n_pairs)
		return 0;
	p = sw->by_slot[ev->slot];
	if (!p || p->gen != ev->gen)
		return 0;       /* a pair that has closed since */
	if (ev->kind == SLUICE_BPF_EV_SOFT)
		dir_pause(p, (int)(ev->dir & 1));
	/* Dead, pausing: the pump does the rest (reset, resume timer). */
	pair_close_now(p, sluice_sockmap_pump(p->c));
	return 0;
}

static void ring_on_event(struct sluice_io *io, uint32_t events)
{
	struct sluice_sockmap_worker *sw = (struct sluice_sockmap_worker *)io;

	(void)events;
	/* Consumes what is there; a negative return is a callback error,
	 * which ring_event never returns. */
	(void)ring_buffer__consume(sw->rb);
}

int sluice_sockmap_worker_init(struct sluice_sockmap *sm, struct sluice_worker *w)
{
	struct sluice_sockmap_worker *sw = calloc(1, sizeof(*sw));

	if (!sw)
		return SLUICE_ERR;
	sw->sm = sm;
	sw->w = w;
	sw->id = w->id;
	sw->ring_fd = -1;
	sw->by_slot = calloc(sm->h.n_pairs, sizeof(*sw->by_slot));
	if (!sw->by_slot || w->id >= SLUICE_BPF_MAX_WORKERS)
		goto fail;
	sw->ring_fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "sluice_ring", 0, 0, SLUICE_BPF_RING_SIZE, NULL);
	if (sw->ring_fd < 0)
		goto fail;
	if (bpf_map_update_elem(sm->h.rings_fd, &sw->id, &sw->ring_fd, BPF_ANY) < 0)
		goto fail;
	sw->rb = ring_buffer__new(sw->ring_fd, ring_event, sw, NULL);
	if (!sw->rb)
		goto fail;
	sw->io.fd = sw->ring_fd;
	sw->io.fn = ring_on_event;
	if (sluice_loop_add(w->loop, &sw->io, EPOLLIN | EPOLLET) < 0)
		goto fail;
	w->sockmap = sw;
	return SLUICE_OK;
fail:
	{
		int e = errno;

		if (sw->rb)
			ring_buffer__free(sw->rb);
		if (sw->ring_fd >= 0)
			close(sw->ring_fd);
		free(sw->by_slot);
		free(sw);
		errno = e;
	}
	return SLUICE_ERR;
}

void sluice_sockmap_worker_fini(struct sluice_worker *w)
{
	struct sluice_sockmap_worker *sw = w->sockmap;

	if (!sw)
		return;
	sluice_loop_del(w->loop, &sw->io);
	(void)bpf_map_delete_elem(sw->sm->h.rings_fd, &sw->id);
	ring_buffer__free(sw->rb);
	close(sw->ring_fd);
	free(sw->by_slot);
	free(sw);
	w->sockmap = NULL;
}

/* ---- start and release ---- */

static void maps_leave(struct sluice_sockmap_pair *p)
{
	const struct sluice_bpf_sockmap_handles *h = &p->sw->sm->h;
	int k;

	/* The verdict's SOCKHASH first: no verdict runs on these sockets
	 * after this (beyond one already running), then the peers (the
	 * psocks go with it), then their records. */
	for (k = 1; k >= 0; k--)
		(void)bpf_map_delete_elem(h->socks_fd, &p->cookie[k]);
	for (k = 1; k >= 0; k--)
		(void)bpf_map_delete_elem(h->peers_fd, &p->cookie[k]);
	for (k = 0; k < 2; k++)
		(void)bpf_map_delete_elem(h->sock_pair_fd, &p->cookie[k]);
}

int sluice_sockmap_start(struct sluice_conn *c)
{
	struct sluice_sockmap_worker *sw = c->w->sockmap;
	struct sluice_sockmap *sm = sw->sm;
	volatile struct sluice_bpf_pair *st;
	struct sluice_sockmap_pair *p;
	int k, rcvbuf = SOCKMAP_RCVBUF, lowat_max = INT_MAX, one = 1, inserted = 0;
	uint32_t gen;

	p = calloc(1, sizeof(*p));
	if (!p)
		return SLUICE_DECLINED;
	p->c = c;
	p->sw = sw;
	sluice_timer_init(&p->timer, pair_on_timer);
	if (slot_get(sm, &p->slot) != SLUICE_OK) {
		free(p);
		return SLUICE_DECLINED;
	}
	st = pstate(p);
	for (k = 0; k < 2; k++) {
		int fd = side_fd(c, k);
		socklen_t len = sizeof(p->cookie[k]);
		struct sluice_bpf_pair_sock ps = { .slot = p->slot, .side = (uint32_t)k };

		/* SO_RCVLOWAT at its maximum keeps the kernel from running the
		 * verdict on bytes that arrive while the pair is half inserted
		 * (it would find no peer); the small SO_RCVBUF bounds what a
		 * clamped sender can still push. */
		if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &p->cookie[k], &len) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat_max, sizeof(lowat_max)) < 0 ||
		    tcp_written(fd, &p->wbase[k]) < 0 ||
		    bpf_map_update_elem(sm->h.sock_pair_fd, &p->cookie[k], &ps, BPF_ANY) < 0)
			goto undo;
	}
	/* The slot's record: counters from zero, then LIVE last. */
	gen = st->gen + 1;
	memset((void *)&st->dir, 0, sizeof(st->dir));
	st->cookie[0] = p->cookie[0];
	st->cookie[1] = p->cookie[1];
	st->dead_why = st->dead_dir = st->dead_backlog = 0;
	st->worker = sw->id;
	st->gen = gen;
	p->gen = gen;
	__atomic_store_n(&st->state, SLUICE_BPF_PAIR_LIVE, __ATOMIC_RELEASE);
	/* Both into sockmap_peers (the redirect targets, held for the pair's
	 * life), then sockmap_socks, upstream first, then the client
	 * (design.md pitfall 1): client bytes already queued must find their
	 * peer. */
	for (k = 1; k >= 0; k--) {
		uint64_t fd = (uint64_t)side_fd(c, k);

		if (bpf_map_update_elem(sm->h.peers_fd, &p->cookie[k], &fd, BPF_NOEXIST) < 0)
			goto undo;
	}
	for (k = 1; k >= 0; k--) {
		uint64_t fd = (uint64_t)side_fd(c, k);

		if (bpf_map_update_elem(sm->h.socks_fd, &p->cookie[k], &fd, BPF_NOEXIST) < 0)
			goto undo;
		inserted++;
	}
	sw->by_slot[p->slot] = p;
	c->sockmap = p;
	/* Only the end of the stream matters to us now: no wakeups for data
	 * or write space, which the kernel handles. */
	for (k = 0; k < 2; k++) {
		struct sluice_side *s = k == 0 ? &c->client : &c->upstream;

		sluice_loop_del(c->w->loop, &s->io);
		if (sluice_loop_add(c->w->loop, &s->io, EPOLLRDHUP | EPOLLET) < 0) {
			c->result = "internal";
			sluice_conn_detail(c, "epoll: %s", strerror(errno));
			return SLUICE_ERR;
		}
	}
	/* The kick: bytes queued before the insert get their verdict now
	 * instead of at the next arrival (design.md pitfall 1). */
	for (k = 1; k >= 0; k--)
		if (setsockopt(side_fd(c, k), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one)) < 0) {
			c->result = "internal";
			sluice_conn_detail(c, "SO_RCVLOWAT: %s", strerror(errno));
			return SLUICE_ERR;
		}
	return SLUICE_OK;
undo:
	{
		int e = errno;
		bool touched;

		maps_leave(p);
		/* A verdict may have run in between (the window was full
		 * enough to override SO_RCVLOWAT): then bytes moved or were
		 * dropped and splice can no longer take over. */
		touched = inserted > 0 && (load64(&st->dir[0].redirected) || load64(&st->dir[1].redirected) ||
		                           load64(&st->dir[0].dropped) || load64(&st->dir[1].dropped));
		__atomic_store_n(&st->state, SLUICE_BPF_PAIR_FREE, __ATOMIC_RELEASE);
		slot_put(sm, p->slot);
		free(p);
		for (k = 0; k < 2; k++)
			(void)setsockopt(side_fd(c, k), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
		sluice_log(SLUICE_LOG_WARN, "sockmap", "cannot insert a pair: %s%s", strerror(e),
		           touched ? "" : "; this connection uses splice");
		if (touched) {
			c->result = "internal";
			sluice_conn_detail(c, "sockmap insert failed after bytes moved: %s", strerror(e));
			return SLUICE_ERR;
		}
	}
	return SLUICE_DECLINED;
}

void sluice_sockmap_release(struct sluice_conn *c)
{
	struct sluice_sockmap_pair *p = c->sockmap;
	volatile struct sluice_bpf_pair *st;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int64_t bl;
	int k;

	if (!p)
		return;
	st = pstate(p);
	sluice_timer_cancel(c->w->loop, &p->timer);
	maps_leave(p);
	c->c2u.bytes = load64(&st->dir[0].redirected) + p->tail_sent[0];
	c->u2c.bytes = load64(&st->dir[1].redirected) + p->tail_sent[1];
	c->sockmap_pauses = load32(&st->dir[0].pauses) + load32(&st->dir[1].pauses);
	c->sockmap_kpauses = load32(&st->dir[0].kpauses) + load32(&st->dir[1].kpauses);
	c->sockmap_copied = p->tail_sent[0] + p->tail_sent[1];
	c->sockmap_trimmed = load64(&st->dir[0].trimmed) + load64(&st->dir[1].trimmed);
	/* What this pair still counted in the global backlog. */
	bl = (int64_t)load32(&st->dir[0].backlog) + (int64_t)load32(&st->dir[1].backlog);
	__atomic_fetch_sub(&p->sw->sm->h.global->backlog, bl, __ATOMIC_ACQ_REL);
	__atomic_store_n(&st->state, SLUICE_BPF_PAIR_FREE, __ATOMIC_RELEASE);
	/* A pair that died or failed ends with an RST both ways, so no peer
	 * takes a cut stream for a complete one; other closes (timeouts,
	 * drain) close as splice does. */
	if (p->reset)
		for (k = 0; k < 2; k++)
			(void)setsockopt(side_fd(c, k), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	p->sw->by_slot[p->slot] = NULL;
	slot_put(p->sw->sm, p->slot);
	c->sockmap = NULL;
	free(p->tail_buf[0]);
	free(p->tail_buf[1]);
	free(p);
}
