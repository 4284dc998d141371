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

#endif
