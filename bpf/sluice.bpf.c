// SPDX-License-Identifier: GPL-2.0
/* sluice's BPF object: kernel-kept connection counters.
 *
 *   sluice_sockops   (sockops, on sluice's own cgroup v2)
 *       counts upstream connections per server from connect to close, and
 *       counts the close of every tagged client socket;
 *   client_open      (syscall, run by userspace with BPF_PROG_TEST_RUN)
 *       admits one client connection: max_conns check, opened + 1 and the
 *       socket's tag, all in one program run;
 *   account          (syscall) adds one finished connection's bytes to the
 *       per-CPU datapath counters;
 *   sluice_sockmap_verdict (sk_skb/stream_verdict, on the sockmap_socks
 *       SOCKHASH) forwards the bytes of a sockmap pair to its peer, with
 *       the backlog caps (end of file); sluice_sockops also pauses a
 *       sockmap source whose direction passed the soft cap.
 *
 * Counters are monotonic (opened, closed; active = opened - closed) and a
 * close is counted at most once per socket, claimed with an atomic exchange
 * on the socket's own record (SK_STORAGE, freed with the socket).  Nothing
 * here depends on sluice being alive: the sockets of a killed sluice still
 * pass through TCP_CLOSE and are counted closed.
 *
 * Built with clang -target bpf -mcpu=v3 (atomic exchange and cmpxchg need
 * it; kernels >= 5.12).  Loads on 6.1 and 6.18. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "sluice_maps.h"

#define AF_INET   2
#define AF_INET6  10
#define TCP_CLOSE 7
#define EINVAL    22
#define EAGAIN    11
#define EDQUOT    122

char LICENSE[] SEC("license") = "GPL";

/* ---- maps ---------------------------------------------------------------- */

/* Upstream server address -> its slot in upstream_conns.  Filled by the
 * loader before the program is attached; the kernel only reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_BPF_MAX_SERVERS);
	__type(key, struct sluice_bpf_addr);
	__type(value, __u32);
} upstream_servers SEC(".maps");

/* Per upstream server: opened/established/closed.  mmap-able, so every
 * worker reads a server's count with two loads and no syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SLUICE_BPF_MAX_SERVERS);
	__type(key, __u32);
	__type(value, struct sluice_bpf_upstream);
} upstream_conns SEC(".maps");

/* Per client identity: opened/closed.  mmap-able as upstream_conns. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SLUICE_BPF_MAX_CLIENTS);
	__type(key, __u32);
	__type(value, struct sluice_bpf_client);
} client_conns SEC(".maps");

/* Per socket: which counter it was opened on and whether its close was
 * counted.  Lives and dies with the socket: no table to fill, no entry to
 * leak.  The key is a socket fd when written from userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sluice_bpf_sock);
} sock_tags SEC(".maps");

/* Finished connections and their bytes, per datapath, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_BPF_DP_MAX);
	__type(key, __u32);
	__type(value, struct sluice_bpf_dp_stats);
} datapath_stats SEC(".maps");

/* ---- sockmap maps (the datapath itself is at the end) -------------------- */

/* The kernel's own structures, only the fields read here: CO-RE relocates
 * their offsets for the running kernel. */
struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
	__u32 rcv_nxt;
} __attribute__((preserve_access_index));
/* An skb's control block starts with TCP's struct tcp_skb_cb, whose first
 * field is the skb's sequence number (include/net/tcp.h). */
struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

/* The sockets whose bytes are being redirected, keyed by socket cookie.
 * The verdict program is attached to this map; a paused source is out of
 * it (its data_ready is the plain TCP one again) but still in
 * sockmap_peers. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * SLUICE_BPF_MAX_PAIRS);
	__type(key, __u64);
	__type(value, __u64);
} sockmap_socks SEC(".maps");

/* Both sockets of every pair for the pair's whole life, no program.  Being
 * in a second map keeps a socket's psock (and the redirected bytes queued
 * on it for sending) when it leaves sockmap_socks: the kernel only drops a
 * psock with its last map link.  Redirect targets are looked up here, since
 * a paused destination is absent from sockmap_socks. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * SLUICE_BPF_MAX_PAIRS);
	__type(key, __u64);
	__type(value, __u64);
} sockmap_peers SEC(".maps");

/* Which sockets may be paused, so only they get the header-option
 * callback (it runs on every segment sent): key = local port of a sockmap
 * listener (its accepted sockets); key 0 present = upstream sockets too
 * (sluice cannot tell before connect which listener an upstream serves). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} sockmap_ports SEC(".maps");

/* Socket cookie -> its pair slot and side. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * SLUICE_BPF_MAX_PAIRS);
	__type(key, __u64);
	__type(value, struct sluice_bpf_pair_sock);
} sockmap_sock_pair SEC(".maps");

/* Per pair: cookies, per-direction counters and backlog, state.  mmap'ed
 * by userspace, readable with bpftool. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SLUICE_BPF_MAX_PAIRS);
	__type(key, __u32);
	__type(value, struct sluice_bpf_pair);
} sockmap_pairs SEC(".maps");

/* Totals; mmap'ed by userspace (it subtracts a closed pair's backlog). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_bpf_sockmap_global);
} sockmap_global SEC(".maps");

/* ---- sockops ------------------------------------------------------------- */

/* A socket that may join a sockmap pair (a sockmap listener's port, or
 * any upstream when key 0 is set): ask for BPF_SOCK_OPS_HDR_OPT_LEN_CB,
 * the only callback that userspace can make run synchronously under the
 * socket's lock (sockmap_pause).  It reserves no option space, so no
 * option is ever written and segments are unchanged. */
static __always_inline void sockmap_watch(struct bpf_sock_ops *ops, __u32 port)
{
	if (!bpf_map_lookup_elem(&sockmap_ports, &port))
		return;
	bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}


/* The peer of ops as an upstream_servers key.  remote_port is in network
 * order in the upper half of the word on little-endian, hence ntohl. */
static __always_inline void peer_key(const struct bpf_sock_ops *ops, struct sluice_bpf_addr *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->port = (__u16)bpf_ntohl(ops->remote_port);
	if (ops->family == AF_INET) {
		k->family = AF_INET;
		__builtin_memcpy(k->addr, &ops->remote_ip4, 4);
		return;
	}
	k->family = AF_INET6;
	if (ops->remote_ip6[0] == 0 && ops->remote_ip6[1] == 0 &&
	    ops->remote_ip6[2] == bpf_htonl(0x0000ffff)) {
		/* ::ffff:a.b.c.d is an IPv4 server reached from a v6 socket */
		__u32 v4 = ops->remote_ip6[3];

		k->family = AF_INET;
		__builtin_memcpy(k->addr, &v4, 4);
		return;
	}
	{
		__u32 a0 = ops->remote_ip6[0], a1 = ops->remote_ip6[1];
		__u32 a2 = ops->remote_ip6[2], a3 = ops->remote_ip6[3];

		__builtin_memcpy(k->addr, &a0, 4);
		__builtin_memcpy(k->addr + 4, &a1, 4);
		__builtin_memcpy(k->addr + 8, &a2, 4);
		__builtin_memcpy(k->addr + 12, &a3, 4);
	}
}

/* A connect is starting (SYN about to leave).  If the peer is a configured
 * upstream server, count it opened now, not at ESTABLISHED: a connect in
 * flight is load the least-connection choice must see, and failures end in
 * TCP_CLOSE like any other connection. */
static __always_inline void upstream_connect(struct bpf_sock_ops *ops)
{
	struct sluice_bpf_addr key;
	struct sluice_bpf_upstream *u;
	struct sluice_bpf_sock *st;
	struct bpf_sock *sk = ops->sk;
	__u32 *slot, s;

	if (!sk)
		return;
	peer_key(ops, &key);
	slot = bpf_map_lookup_elem(&upstream_servers, &key);
	if (!slot)
		return;
	s = *slot;
	u = bpf_map_lookup_elem(&upstream_conns, &s);
	if (!u)
		return;
	st = bpf_sk_storage_get(&sock_tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;     /* no memory for the record: not counted at all */
	/* Callbacks of one socket run under its lock, so this record is ours;
	 * a socket that connects again after a failure starts a new count. */
	st->kind = SLUICE_BPF_SOCK_UPSTREAM;
	st->slot = s;
	st->closed = 0;
	__sync_fetch_and_add(&u->opened, 1);
	if (bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG)) {
		/* Without the state callback the close would never be seen:
		 * count it closed now rather than leak it. */
		st->closed = 1;
		__sync_fetch_and_add(&u->closed, 1);
	}
}

static __always_inline void upstream_established(struct bpf_sock_ops *ops)
{
	struct sluice_bpf_upstream *u;
	struct sluice_bpf_sock *st;
	struct bpf_sock *sk = ops->sk;
	__u32 s;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sock_tags, sk, 0, 0);
	if (!st || st->kind != SLUICE_BPF_SOCK_UPSTREAM || st->closed)
		return;
	s = st->slot;
	u = bpf_map_lookup_elem(&upstream_conns, &s);
	if (u)
		__sync_fetch_and_add(&u->established, 1);
	sockmap_watch(ops, 0);
}

/* TCP_CLOSE: count the close on whatever the socket was opened on, once.
 * A client socket closing before userspace tagged it gets a record with
 * kind NONE: client_open then fails with EEXIST instead of counting an
 * open whose close has already gone by. */
static __always_inline void sock_closed(struct bpf_sock_ops *ops)
{
	struct sluice_bpf_sock *st;
	struct bpf_sock *sk = ops->sk;
	__u32 s;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&sock_tags, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	if (st->kind == SLUICE_BPF_SOCK_NONE) {
		st->closed = 1;
		return;
	}
	/* TCP_CLOSE can be entered twice (tcp_close then tcp_done): only
	 * the caller that flips closed 0 -> 1 counts. */
	if (__sync_lock_test_and_set(&st->closed, 1) != 0)
		return;
	s = st->slot;
	if (st->kind == SLUICE_BPF_SOCK_UPSTREAM) {
		struct sluice_bpf_upstream *u = bpf_map_lookup_elem(&upstream_conns, &s);

		if (u)
			__sync_fetch_and_add(&u->closed, 1);
	} else if (st->kind == SLUICE_BPF_SOCK_CLIENT) {
		struct sluice_bpf_client *c = bpf_map_lookup_elem(&client_conns, &s);

		if (c)
			__sync_fetch_and_add(&c->closed, 1);
	}
}

/* A watched socket is about to send a segment (HDR_OPT_LEN_CB): if its
 * direction asked for a pause, take the socket out of sockmap_socks.  That
 * stops its verdict (the kernel restores the plain data_ready), so its
 * bytes stay charged to its receive buffer and TCP closes its window: the
 * sender stops.  It stays in sockmap_peers, so its psock and what is
 * queued on it for sending live on.
 *
 * The delete must run under the socket's lock and outside tcp_read_skb():
 * the verdict reads the program per skb and drops the skb once it is gone,
 * so a delete from userspace (racing a read loop on another CPU) or from
 * inside the loop loses data.  HDR_OPT_LEN_CB always runs under the lock.
 * Two kinds of call qualify:
 *
 * - without an skb (args[0] CURRENT_MSS): tcp_current_mss() from
 *   tcp_sendmsg_locked(), while the worker's own zero-length send is under
 *   way (pause_req).  Never inside the read loop.  This is the fallback:
 *   it waits for the worker's wake-up.
 * - with an skb (args[0] 0): any segment the source sends, mostly the ACKs
 *   for the bytes it receives, so the pause follows the soft-cap crossing
 *   by one segment.  The read loop sends ACKs too (tcp_eat_skb ->
 *   __tcp_cleanup_rbuf, per skb), and there a delete is safe only at the
 *   loop's last skb.  The verdict records the source's rcv_nxt (rx_end):
 *   the loop ends when copied_seq reaches it, and outside a loop (the ACK
 *   that tcp_rcv_established sends before data_ready, the delayed-ACK
 *   timer) copied_seq equals the rx_end of the loop before.  So the pause
 *   is taken only when copied_seq == rx_end; an skb the loop has still to
 *   read lies beyond copied_seq and below rcv_nxt.
 *
 * soft goes 1 -> 2 first (cmpxchg), so userspace's "no pause needed after
 * all" (1 -> 0) and this pause cannot both win. */
static __always_inline void sockmap_pause(struct bpf_sock_ops *ops)
{
	struct sluice_bpf_pair_sock *me;
	struct sluice_bpf_pair_dir *d;
	struct sluice_bpf_pair *p;
	__u64 cookie;
	__u32 slot, by_segment;

	/* Only an ESTABLISHED source: one past it (FIN received, or shut
	 * down by sluice) could not be put back into sockmap_socks, and
	 * pausing one that sluice had shut down lost bytes in
	 * tests/net/sockmap.sh t_51 (docs/architecture.md). */
	if (ops->state != BPF_TCP_ESTABLISHED)
		return;
	if (ops->args[0] == 0)
		by_segment = 1;
	else if (ops->args[0] == BPF_WRITE_HDR_TCP_CURRENT_MSS)
		by_segment = 0;
	else
		return;
	cookie = bpf_get_socket_cookie(ops);
	me = bpf_map_lookup_elem(&sockmap_sock_pair, &cookie);
	if (!me)
		return;
	slot = me->slot;
	p = bpf_map_lookup_elem(&sockmap_pairs, &slot);
	if (!p)
		return;
	d = &p->dir[me->side & 1];
	if (p->cookie[me->side & 1] != cookie || p->state != SLUICE_BPF_PAIR_LIVE ||
	    *(volatile __u32 *)&d->soft != 1 || d->paused)
		return;
	if (by_segment) {
		struct bpf_sock *sk = ops->sk;
		struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;

		if (!tp || tp->copied_seq != d->rx_end)
			return;
	} else if (!d->pause_req) {
		/* tcp_current_mss() also runs in transmit paths the worker did
		 * not start; those pauses were a suspect for the two-way
		 * corruption (docs/architecture.md), ruled out since, and the
		 * segment path above now covers them. */
		return;
	}
	if (__sync_val_compare_and_swap(&d->soft, 1, 2) != 1)
		return;
	if (bpf_map_delete_elem(&sockmap_socks, &cookie) == 0) {
		d->pauses++;
		if (by_segment)
			d->kpauses++;
		*(volatile __u32 *)&d->paused = 1;
	} else {
		__sync_val_compare_and_swap(&d->soft, 2, 1);
	}
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		upstream_connect(ops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		upstream_established(ops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* An accepted client socket (sluice only accepts on its
		 * listeners): watch its state so a tagged one is counted
		 * closed whenever and however it dies. */
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		sockmap_watch(ops, ops->local_port);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		sockmap_pause(ops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == TCP_CLOSE)
			sock_closed(ops);
		break;
	}
	return 1;
}

/* ---- syscall programs ---------------------------------------------------- */

/* The leading fields of union bpf_attr for BPF_MAP_*_ELEM: bpf_sys_bpf()
 * takes a size, so the whole union need not sit on the stack. */
struct map_elem_attr {
	__u32 map_fd;
	__u32 pad;
	__u64 key;
	__u64 value;
	__u64 flags;
};

/* Admits one client connection.  In one program run, so a sluice killed
 * mid-call leaves either nothing or a counted, tagged socket:
 *   1. reserve: opened + 1 by compare-and-swap, refused at max_conns;
 *   2. tag: create the socket's record {CLIENT, slot} (BPF_NOEXIST);
 *   3. if the tag failed (the socket already closed, or was tagged), undo
 *      the reservation as a close: the counters stay monotonic.
 * Reserving before tagging means a close can never be counted for an open
 * that is not counted yet. */
SEC("syscall")
int client_open(struct sluice_bpf_client_open_ctx *ctx)
{
	struct sluice_bpf_sock tag;
	struct map_elem_attr attr;
	struct sluice_bpf_client *c;
	__u32 slot = ctx->slot, max = ctx->max_conns;
	int fd = ctx->sock_fd, i, err;

	c = bpf_map_lookup_elem(&client_conns, &slot);
	if (!c) {
		ctx->result = -EINVAL;
		return 0;
	}
	for (i = 0; i < 32; i++) {
		/* closed first: then opened >= closed, even under races */
		__u64 closed = *(volatile __u64 *)&c->closed;
		__u64 opened = *(volatile __u64 *)&c->opened;

		if (max && opened - closed >= max) {
			ctx->result = -EDQUOT;
			return 0;
		}
		if (__sync_val_compare_and_swap(&c->opened, opened, opened + 1) == opened)
			goto reserved;
	}
	ctx->result = -EAGAIN;
	return 0;
reserved:
	tag.kind = SLUICE_BPF_SOCK_CLIENT;
	tag.slot = slot;
	tag.closed = 0;
	tag.pad = 0;
	attr.map_fd = ctx->storage_fd;
	attr.pad = 0;
	attr.key = (__u64)(long)&fd;
	attr.value = (__u64)(long)&tag;
	attr.flags = BPF_NOEXIST;
	err = bpf_sys_bpf(BPF_MAP_UPDATE_ELEM, &attr, sizeof(attr));
	if (err) {
		__sync_fetch_and_add(&c->closed, 1);
		ctx->result = err;
		return 0;
	}
	ctx->result = 0;
	return 0;
}

/* One finished connection: conns + 1 and its bytes on this CPU's slot. */
SEC("syscall")
int account(struct sluice_bpf_account_ctx *ctx)
{
	__u32 dp = ctx->datapath;
	struct sluice_bpf_dp_stats *s = bpf_map_lookup_elem(&datapath_stats, &dp);

	if (!s)
		return -EINVAL;
	/* Sleepable programs can be preempted on their CPU: atomic adds. */
	__sync_fetch_and_add(&s->conns, 1);
	__sync_fetch_and_add(&s->bytes_in, ctx->bytes_in);
	__sync_fetch_and_add(&s->bytes_out, ctx->bytes_out);
	return 0;
}

/* ---- sockmap datapath ------------------------------------------------------
 *
 * See "sockmap datapath" in sluice_maps.h for the pair layout and the caps,
 * and docs/architecture.md for why it is built this way.  Every skb of a
 * pair's socket comes here; none is ever passed up to the socket (SK_PASS)
 * for userspace to copy: mixing the two paths is what reordered and once
 * duplicated bytes in the throwaway probe (design.md). */

/* Caps, set by the loader before load (bpf.sockmap_* in the config). */
const volatile __u32 sockmap_soft_cap = 4 << 20;
const volatile __u32 sockmap_hard_cap = 16 << 20;
const volatile __u64 sockmap_global_cap = 256 << 20;

/* One ring buffer per worker (filled in by the loader): an event wakes only
 * the worker that owns the pair, through its epoll. */
struct sockmap_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SLUICE_BPF_RING_SIZE);
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SLUICE_BPF_MAX_WORKERS);
	__type(key, __u32);
	__array(values, struct sockmap_ring);
} sockmap_rings SEC(".maps");

static __always_inline void sockmap_notify(struct sluice_bpf_pair *p, __u32 slot, __u32 kind, __u32 dir,
                                           __u32 backlog)
{
	struct sluice_bpf_event ev = {
		.kind = kind, .slot = slot, .gen = p->gen, .dir = dir, .backlog = backlog,
	};
	__u32 w = p->worker;
	void *ring = bpf_map_lookup_elem(&sockmap_rings, &w);

	/* Events are rare (a cap crossed), so always wake the worker.  A full
	 * ring loses the event, not data: a dead pair still drops every skb,
	 * and the worker also finds it dead when the peer resets. */
	if (ring)
		bpf_ringbuf_output(ring, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP);
}

/* Marks the pair dead (first caller wins) and tells its worker. */
static __always_inline void sockmap_kill(struct sluice_bpf_pair *p, __u32 slot, __u32 why, __u32 dir,
                                         __u32 backlog)
{
	__u32 zero = 0;
	struct sluice_bpf_sockmap_global *g;

	if (__sync_val_compare_and_swap(&p->state, SLUICE_BPF_PAIR_LIVE, SLUICE_BPF_PAIR_DEAD) !=
	    SLUICE_BPF_PAIR_LIVE)
		return;
	p->dead_why = why;
	p->dead_dir = dir;
	p->dead_backlog = backlog;
	g = bpf_map_lookup_elem(&sockmap_global, &zero);
	if (g)
		__sync_fetch_and_add(&g->dead_pairs, 1);
	sockmap_notify(p, slot, SLUICE_BPF_EV_DEAD, dir, backlog);
}

/* How many bytes at the head of skb the direction has already forwarded:
 * 0 normally, > 0 for an skb to cut, -1 if skb does not continue the
 * stream (a gap, or nothing new in it) or cannot be read.  *end: the
 * sequence number just past skb's bytes.
 *
 * Why: the kernel feeds the verdict whole skbs from the receive queue
 * (tcp_read_skb) and advances copied_seq by their full length
 * (tcp_eat_skb), but TCP queues a retransmitted segment that partly
 * overlaps bytes it already has as it is, seq < rcv_nxt (tcp_data_queue,
 * "Partial packet"); recvmsg() skips such a head, the verdict path does
 * not.  Forwarded whole, those bytes reach the peer twice: the two-way
 * corruption in docs/architecture.md.  So the verdict keeps the stream's
 * position itself (next_seq) rather than trusting the kernel's.
 *
 * The sequence number is read from TCP's control block in the skb; ctx is
 * the kernel's sk_buff, read with bpf_probe_read_kernel (CAP_PERFMON),
 * which works on 6.1 where bpf_cast_to_kern_ctx() does not exist yet. */
static __always_inline __s32 sockmap_overlap(struct __sk_buff *skb, const struct tcp_sock *src,
                                             struct sluice_bpf_pair_dir *d, __u32 *end)
{
	__u32 seq, over;

	if (bpf_probe_read_kernel(&seq, sizeof(seq), (char *)skb + bpf_core_field_offset(struct sk_buff, cb)) < 0)
		return -1;
	if (!d->next_inited) {
		/* The first skb the verdict sees: the stream is where the
		 * source's reader is (nothing read before the insert is
		 * forwarded). */
		d->next_seq = src->copied_seq;
		d->next_inited = 1;
	}
	*end = seq + skb->len;
	over = d->next_seq - seq;
	if ((__s32)over < 0 || over >= skb->len)
		return -1;
	return (__s32)over;
}

/* Cuts n bytes off skb's head: bpf_skb_adjust_room() on an sk_skb pulls at
 * most 0xfff bytes per call.  tcp_eat_skb() then advances copied_seq by
 * what is left, which is exactly the new bytes.  0, or -1. */
static __always_inline int sockmap_trim(struct __sk_buff *skb, __u32 n)
{
	int i;

	for (i = 0; i < 16 && n > 0; i++) {
		__u32 k = n > 0xfff ? 0xfff : n;

		if (bpf_skb_adjust_room(skb, -(__s32)k, 0, 0) < 0)
			return -1;
		n -= k;
	}
	return n ? -1 : 0;
}

SEC("sk_skb/stream_verdict")
int sluice_sockmap_verdict(struct __sk_buff *skb)
{
	struct sluice_bpf_sockmap_global *g;
	struct sluice_bpf_pair_sock *me;
	struct sluice_bpf_pair_dir *d;
	struct sluice_bpf_pair *p;
	struct tcp_sock *tp, *src;
	struct bpf_sock *peer;
	__u64 cookie, peer_cookie;
	__u32 len = skb->len, zero = 0, slot, dir, wseq, backlog, end;
	__s32 bl, over;
	__s64 delta;
	long ret;

	/* The skb that carries a bare FIN: redirecting a zero-length skb makes
	 * the peer's send fail with EPIPE (design.md pitfall 2).  The FIN is
	 * userspace's business (it watches EPOLLRDHUP). */
	if (len == 0)
		return SK_DROP;
	cookie = bpf_get_socket_cookie(skb);
	me = bpf_map_lookup_elem(&sockmap_sock_pair, &cookie);
	if (!me)
		return SK_DROP;     /* not a pair socket: cannot happen (inserted after its record) */
	slot = me->slot;
	dir = me->side & 1;
	p = bpf_map_lookup_elem(&sockmap_pairs, &slot);
	if (!p)
		return SK_DROP;
	d = &p->dir[dir];
	/* A slot is reused once its pair is gone: an skb of a socket whose
	 * record is stale must not reach the new pair's peer. */
	if (p->cookie[dir] != cookie)
		return SK_DROP;
	if (p->state != SLUICE_BPF_PAIR_LIVE) {
		/* Dead: the worker is about to reset both sockets, so these
		 * bytes are not lost silently (the peers see an RST). */
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	/* The source's own TCP state: where its stream and its read loop
	 * are (sockmap_overlap, rx_end below). */
	{
		struct bpf_sock *sk = skb->sk;

		src = sk ? bpf_skc_to_tcp_sock(sk) : 0;
	}
	over = src ? sockmap_overlap(skb, src, d, &end) : -1;
	if (over < 0 || (over > 0 && sockmap_trim(skb, (__u32)over) < 0)) {
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_SEQ, dir, d->backlog);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	if (over > 0) {
		d->trims++;
		d->trimmed += (__u32)over;
		len = skb->len;
	}
	/* Where this read loop ends (sockmap_pause): rcv_nxt does not move
	 * while the loop holds the socket's lock. */
	d->rx_end = src->rcv_nxt;
	peer_cookie = p->cookie[dir ^ 1];
	peer = bpf_map_lookup_elem(&sockmap_peers, &peer_cookie);
	if (!peer) {
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_PEER_GONE, dir, d->backlog);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	tp = bpf_skc_to_tcp_sock(peer);
	wseq = tp ? tp->write_seq : 0;
	bpf_sk_release(peer);
	if (!tp) {
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_PEER_GONE, dir, d->backlog);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	/* The verdict runs under the source socket's lock, so one direction's
	 * fields are only ever written by one program run at a time. */
	if (!d->seq_inited) {
		d->seq_base = wseq;     /* nothing redirected yet: the origin */
		d->seq_inited = 1;
	}
	/* Redirected but not yet in the peer's TCP write queue: the psock
	 * backlog, which the kernel does not bound.  32-bit sequence space;
	 * the backlog is far below 2 GiB by the caps. */
	bl = (__s32)((__u32)d->redirected - (wseq - d->seq_base));
	backlog = (bl > 0 ? (__u32)bl : 0) + len;
	if (backlog > sockmap_hard_cap) {
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_HARD_CAP, dir, backlog - len);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	g = bpf_map_lookup_elem(&sockmap_global, &zero);
	if (!g)
		return SK_DROP;
	delta = (__s64)backlog - (__s64)d->backlog;
	if (backlog > sockmap_soft_cap && delta > 0 &&
	    *(volatile __s64 *)&g->backlog + delta > (__s64)sockmap_global_cap) {
		/* Memory as a whole is short and this direction is one of those
		 * holding it (over the soft cap, still growing). */
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_GLOBAL_CAP, dir, backlog - len);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	ret = bpf_sk_redirect_hash(skb, &sockmap_peers, &peer_cookie, 0);
	if (ret != SK_PASS) {
		sockmap_kill(p, slot, SLUICE_BPF_DEAD_PEER_GONE, dir, backlog - len);
		__sync_fetch_and_add(&d->dropped, len);
		return SK_DROP;
	}
	/* Counted before the skb is queued on the peer: userspace's drain
	 * check (written == redirected) can only wait longer, never less. */
	__sync_fetch_and_add(&d->redirected, len);
	d->next_seq = end;
	__sync_fetch_and_add(&g->backlog, delta);
	d->backlog = backlog;
	if (backlog > d->max_backlog)
		d->max_backlog = backlog;
	if (backlog > sockmap_soft_cap &&
	    __sync_val_compare_and_swap(&d->soft, 0, 1) == 0)
		sockmap_notify(p, slot, SLUICE_BPF_EV_SOFT, dir, backlog);
	return SK_PASS;
}
