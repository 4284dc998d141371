/* Types shared by the BPF object (bpf/sluice.bpf.c) and its loader
 * (src/bpf.c): map keys and values, and the context of the syscall
 * programs.  Types only, in kernel __u types, so both sides include it.
 *
 * Every field has a name because bpftool prints these through BTF: an
 * operator reads `bpftool map dump pinned /sys/fs/bpf/sluice/upstream_conns`
 * as {"server": {"family": 2, "port": 9001, "addr": [127,0,0,1,…]},
 * "opened": 12, "closed": 9}.
 *
 * Counters are monotonic: opened and closed only ever grow, each by one
 * atomic add; active = opened - closed.  Read closed before opened and the
 * difference can never be negative (a close is always counted after its
 * open). */
#ifndef SLUICE_BPF_MAPS_H
#define SLUICE_BPF_MAPS_H

#include <linux/types.h>

/* Slots of upstream_conns: servers are deduplicated by address across
 * pools (two pools naming one server share its count: the load is one
 * server's).  64 pools x 64 servers is the config's ceiling. */
#define SLUICE_BPF_MAX_SERVERS 4096
/* Slots of client_conns: one per clients[] identity with at least one live
 * connection (a slot is reused once its active count is back to 0).
 * Connections are bounded by the 20,000-fd limit, so this is plenty. */
#define SLUICE_BPF_MAX_CLIENTS 65536
#define SLUICE_BPF_CLIENT_NAME 48

/* An upstream server's address as the kernel sees it at connect.  port in
 * host order, IPv4 in addr[0..4) with the rest zero (an IPv4-mapped IPv6
 * peer is stored as IPv4). */
struct sluice_bpf_addr {
	__u16 family;               /* AF_INET (2) or AF_INET6 (10) */
	__u16 port;
	__u8 addr[16];
};

/* upstream_conns[slot]: written by the sockops program (opened/closed) and,
 * once before attach, by the loader (server).  Read by userspace through
 * mmap (BPF_F_MMAPABLE), no syscall. */
struct sluice_bpf_upstream {
	struct sluice_bpf_addr server;
	__u32 pad;
	__u64 opened;               /* connects started to this server (SYN sent) */
	__u64 established;          /* of those, how many reached ESTABLISHED */
	__u64 closed;               /* of those, how many reached TCP_CLOSE */
};

/* client_conns[slot]: opened by the client_open syscall program (with the
 * max_conns check), closed by the sockops program; entry and name are
 * written by the loader through mmap for operators. */
struct sluice_bpf_client {
	__u64 opened;
	__u64 closed;
	__u32 entry;                /* clients[] index */
	char name[SLUICE_BPF_CLIENT_NAME - 4]; /* identity name, truncated */
};

/* Per-socket record (SK_STORAGE), freed with the socket. */
enum sluice_bpf_sock_kind {
	SLUICE_BPF_SOCK_NONE = 0,   /* closed before anyone counted it */
	SLUICE_BPF_SOCK_UPSTREAM = 1,
	SLUICE_BPF_SOCK_CLIENT = 2,
};
struct sluice_bpf_sock {
	__u32 kind;                 /* enum sluice_bpf_sock_kind */
	__u32 slot;                 /* in upstream_conns or client_conns */
	__u32 closed;               /* 1 once the close was counted */
	__u32 pad;
};

/* datapath_stats (per CPU), indexed by datapath.  Same order as
 * enum sluice_datapath in src/proxy.h, plus the kernel datapaths. */
enum sluice_bpf_datapath {
	SLUICE_BPF_DP_NONE = 0,     /* closed before relaying */
	SLUICE_BPF_DP_SPLICE = 1,
	SLUICE_BPF_DP_USERSPACE = 2,
	SLUICE_BPF_DP_KTLS = 3,
	SLUICE_BPF_DP_SOCKMAP = 4,
	SLUICE_BPF_DP_MAX = 8,
};
struct sluice_bpf_dp_stats {
	__u64 conns;                /* connections that ended on this datapath */
	__u64 bytes_in;             /* client -> upstream */
	__u64 bytes_out;            /* upstream -> client */
};

/* Context of SEC("syscall") client_open, run with BPF_PROG_TEST_RUN. */
struct sluice_bpf_client_open_ctx {
	__s32 sock_fd;              /* in: the accepted client socket */
	__s32 storage_fd;           /* in: fd of the sock_tags map */
	__u32 slot;                 /* in: client_conns slot */
	__u32 max_conns;            /* in: 0 = unlimited */
	__s32 result;               /* out: 0, -EDQUOT (at max_conns), -EEXIST
	                               (already tagged or already closed),
	                               -EAGAIN (contended), or -errno */
	__u32 pad;
};

/* Context of SEC("syscall") account. */
struct sluice_bpf_account_ctx {
	__u32 datapath;             /* enum sluice_bpf_datapath */
	__u32 pad;
	__u64 bytes_in;
	__u64 bytes_out;
};

/* ---- sockmap datapath ------------------------------------------------------
 *
 * A pair is the client socket (side 0) and its upstream socket (side 1),
 * keyed by socket cookie in two SOCKHASHes: sockmap_peers (no program) holds
 * both for the pair's whole life, which keeps each socket's psock and its
 * queued egress alive; sockmap_socks (the verdict program) holds a socket
 * while its bytes are being redirected.  Direction d moves the bytes side d
 * receives to side d ^ 1 (0: client -> upstream).
 *
 * The verdict program redirects to the peer's egress; the kernel parks
 * redirected bytes in the peer's psock queue until its TCP send buffer takes
 * them, without any limit of its own (design.md: no backpressure).  So each
 * direction's backlog = bytes redirected - bytes that reached the peer's TCP
 * write queue (the peer's write_seq moved by that much since the first
 * redirect) is computed on every skb and capped:
 *   soft cap  the verdict flags the direction (pause requested) and wakes
 *             the owning worker (ring buffer), which makes the sockops
 *             program run under the source's socket lock (a zero-length
 *             send); it takes the source out of sockmap_socks, so its bytes
 *             stay in its receive queue and TCP flow control stops its
 *             sender.  The worker puts it back once the backlog is under
 *             half the soft cap;
 *   hard cap  the pair is marked dead and every later skb is dropped: the
 *             worker resets both sockets (so nothing is lost silently) and
 *             logs result "sockmap_backlog".
 *   global    the sum of every direction's last backlog; above it a
 *             direction that is itself over the soft cap dies the same way. */
#define SLUICE_BPF_MAX_PAIRS   16384    /* 2 sockets each: the 20,000-fd limit is lower */
#define SLUICE_BPF_MAX_WORKERS 256      /* config's ceiling on workers */
#define SLUICE_BPF_RING_SIZE   (64 * 1024)

enum sluice_bpf_pair_state {
	SLUICE_BPF_PAIR_FREE = 0,
	SLUICE_BPF_PAIR_LIVE = 1,
	SLUICE_BPF_PAIR_DEAD = 2,   /* over a cap: skbs dropped, reset pending */
};
enum sluice_bpf_pair_why {         /* sluice_bpf_pair.dead_why */
	SLUICE_BPF_DEAD_NONE = 0,
	SLUICE_BPF_DEAD_HARD_CAP = 1,   /* the direction's backlog passed the hard cap */
	SLUICE_BPF_DEAD_GLOBAL_CAP = 2, /* the global backlog passed its cap */
	SLUICE_BPF_DEAD_PEER_GONE = 3,  /* the peer socket left the SOCKHASH */
	SLUICE_BPF_DEAD_SEQ = 4,        /* an skb did not continue the stream: a gap, or a
	                                   repeat that could not be cut off */
};

struct sluice_bpf_pair_dir {
	__u64 redirected;           /* BPF: bytes redirected to the peer */
	__u64 dropped;              /* BPF: bytes dropped once the pair was dead */
	__u32 seq_base;             /* BPF: peer write_seq before the first redirect */
	__u32 seq_inited;           /* BPF: seq_base is set */
	__u32 backlog;              /* BPF: backlog after the last skb (bytes) */
	__u32 max_backlog;          /* BPF: the largest backlog seen */
	__u32 soft;                 /* BPF 0->1 past the soft cap (pause requested); sockops 1->2
	                               while it pauses (2 stays while paused); userspace -> 0
	                               on resume, or 1->0 (cmpxchg) when no pause is needed */
	__u32 paused;               /* sockops 0->1 when it took the source out of sockmap_socks;
	                               userspace 1->0 just before it puts it back */
	__u32 pauses;               /* sockops: times the source was paused */
	__u32 pause_req;            /* userspace 0->1->0 around its zero-length send: only
	                               then may sockops pause (sockmap_pause says why) */
	__u32 next_seq;             /* BPF: TCP sequence number of the source's next new byte */
	__u32 next_inited;          /* BPF: next_seq is set */
	__u32 trims;                /* BPF: skbs whose head repeated bytes already forwarded */
	__u32 rx_end;               /* BPF: the source's rcv_nxt when its verdict last ran: the
	                               end of the read loop under way (sockmap_pause) */
	__u64 trimmed;              /* BPF: bytes cut off those heads (never forwarded twice) */
	__u32 kpauses;              /* sockops: pauses taken at a segment the source sent, with
	                               no userspace involved (part of pauses) */
	__u32 pad;
};

/* sockmap_pairs[slot]: mmap'ed by userspace (BPF_F_MMAPABLE). */
struct sluice_bpf_pair {
	__u64 cookie[2];            /* userspace: socket cookies, client and upstream */
	struct sluice_bpf_pair_dir dir[2];
	__u32 state;                /* enum sluice_bpf_pair_state */
	__u32 dead_why;             /* enum sluice_bpf_pair_why */
	__u32 dead_dir;             /* direction that died */
	__u32 dead_backlog;         /* its backlog (bytes) at that moment */
	__u32 worker;               /* userspace: owning worker, picks the ring */
	__u32 gen;                  /* userspace: bumped per use of the slot */
};

/* sockmap_sock_pair[cookie]: which pair and side a socket is. */
struct sluice_bpf_pair_sock {
	__u32 slot;
	__u32 side;                 /* 0 client, 1 upstream */
};

/* sockmap_global[0] */
struct sluice_bpf_sockmap_global {
	__s64 backlog;              /* sum of every live direction's last backlog */
	__u64 dead_pairs;           /* pairs the verdict marked dead */
};

/* What the verdict tells the owning worker through its ring buffer. */
enum sluice_bpf_event_kind {
	SLUICE_BPF_EV_SOFT = 1,     /* direction passed the soft cap: pause its source */
	SLUICE_BPF_EV_DEAD = 2,     /* pair dead: reset it */
};
struct sluice_bpf_event {
	__u32 kind;
	__u32 slot;
	__u32 gen;
	__u32 dir;
	__u32 backlog;
	__u32 pad;
};

#endif
