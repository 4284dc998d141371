/* Kernel-kept connection counters (bpf/sluice.bpf.c) and their loader.
 *
 * Upstream connections are counted by a sockops program on sluice's own
 * cgroup v2 from connect to TCP_CLOSE, per server; client connections are
 * counted opened when sluice admits them (sluice_bpf_client_tag, which
 * also enforces max_conns) and closed by the kernel when the socket dies,
 * so a killed sluice leaks nothing.  Maps are pinned under pin_path for
 * bpftool; the counters are read through mmap, without syscalls.
 *
 * Only src/bpf.c knows the skeleton.  Without BPF (no privileges, no bpffs,
 * no cgroup v2) sluice_bpf_open() fails with the reason and the caller
 * keeps its atomics. */
#ifndef SLUICE_BPF_H
#define SLUICE_BPF_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common.h"
#include "config.h"
#include "../bpf/sluice_maps.h"

#define SLUICE_BPF_PIN_PATH "/sys/fs/bpf/sluice"
#define SLUICE_BPF_FS       "/sys/fs/bpf"

struct sluice_bpf;

/* Loads the object, fills the upstream server table from cfg, pins every
 * map under pin_path (NULL = SLUICE_BPF_PIN_PATH), moves the calling
 * process into the cgroup (NULL = a new child "sluice-<pid>" of the cgroup
 * it runs in; else that cgroup v2 directory, created if missing) and
 * attaches the sockops program there.
 *
 * Call it before any listening or upstream socket exists: a socket belongs
 * to the cgroup of the process that created it, and accepted sockets to
 * their listener's.
 *
 * Pinned maps left by a sluice that died (kill -9) are removed and made
 * anew, as are its empty "sluice-<pid>" cgroups; a pin path held by a live
 * sluice (flock on the directory) is refused.
 *
 * Returns 0, or -1 with a one-line reason in err ("no CAP_BPF ...",
 * "bpffs not mounted at /sys/fs/bpf", "cgroup v2 not mounted", ...) for
 * the caller's single start-up warning. */
int sluice_bpf_open(const struct sluice_config *cfg, const char *pin_path, const char *cgroup,
                    struct sluice_bpf **out, char *err, size_t errlen);
/* Detaches, moves the process back to its cgroup, removes a cgroup it
 * created and the pins.  NULL is a no-op. */
void sluice_bpf_close(struct sluice_bpf *b);

/* ---- counters ---- */

/* active = opened - closed from two monotonic counters written by the
 * kernel.  closed is loaded first: every close is counted after its open,
 * so the difference read this way is never negative. */
static inline uint64_t sluice_bpf_active(const __u64 *opened, const __u64 *closed)
{
	uint64_t c = __atomic_load_n(closed, __ATOMIC_ACQUIRE);
	uint64_t o = __atomic_load_n(opened, __ATOMIC_ACQUIRE);

	return o >= c ? o - c : 0;
}

/* Active connections to server `server` of pool `pool`: connects in flight
 * and established ones, until TCP_CLOSE.  Two loads, no syscall: cheap
 * enough for every least-connection pick.  0 for an unknown index. */
uint32_t sluice_bpf_upstream_active(const struct sluice_bpf *b, unsigned pool, unsigned server);
/* The raw counters of that server (a copy), for metrics and tests; -1 for
 * an unknown index. */
int sluice_bpf_upstream_read(const struct sluice_bpf *b, unsigned pool, unsigned server,
                             struct sluice_bpf_upstream *out);

/* ---- clients ---- */

/* A counter slot for one limit entry (clients[] index + identity name):
 * taken when the entry gets its first connection, returned with
 * sluice_bpf_client_put() once its active count is back to 0.  The name is
 * shown (truncated) by bpftool.  SLUICE_ERR with errno ENOSPC when every
 * slot is held. */
int sluice_bpf_client_get(struct sluice_bpf *b, unsigned entry, const char *name, uint32_t *slot);
/* SLUICE_OK, or SLUICE_AGAIN (slot kept) while connections counted on it
 * are still alive in the kernel: try again later (limit.c's sweep). */
int sluice_bpf_client_put(struct sluice_bpf *b, uint32_t slot);

/* Admits the accepted socket fd on slot: if fewer than max_conns (0 = no
 * limit) connections are active there, counts it opened and tags the
 * socket, so the kernel counts it closed when it dies.  Atomic across
 * workers and processes, and against a crash.
 *   SLUICE_OK       admitted; nothing to release later (close(fd) is all)
 *   SLUICE_DECLINED max_conns reached
 *   SLUICE_ERR      errno: EEXIST the socket is already closed (the
 *                   client went away before admission) or already tagged;
 *                   EAGAIN heavy contention on this slot; else the bpf()
 *                   error. */
int sluice_bpf_client_tag(struct sluice_bpf *b, int fd, uint32_t slot, uint32_t max_conns);
uint32_t sluice_bpf_client_active(const struct sluice_bpf *b, uint32_t slot);

/* ---- per-datapath totals ---- */

/* Adds one finished connection and its bytes to datapath dp (enum
 * sluice_bpf_datapath) on this CPU.  One syscall per connection. */
int sluice_bpf_account(struct sluice_bpf *b, unsigned dp, uint64_t bytes_in, uint64_t bytes_out);
/* The sum over CPUs. */
int sluice_bpf_datapath_read(const struct sluice_bpf *b, unsigned dp, struct sluice_bpf_dp_stats *out);

/* ---- sockmap datapath (used by src/sockmap.c) ---- */

/* What src/sockmap.c needs of the object: the SOCKHASH the verdict is
 * attached to, the prog-less SOCKHASH of every pair socket, the ports whose
 * sockets may be paused, the cookie -> pair map, the per-worker ring
 * buffers (an ARRAY_OF_MAPS to fill) and the mmap'ed pair array and
 * totals. */
struct sluice_bpf_sockmap_handles {
	int socks_fd, peers_fd, ports_fd, sock_pair_fd, rings_fd;
	struct sluice_bpf_pair *pairs;
	uint32_t n_pairs;
	struct sluice_bpf_sockmap_global *global;
};
/* SLUICE_OK, or SLUICE_ERR with the reason in why (the verdict program
 * could not be attached on this kernel). */
int sluice_bpf_sockmap_handles(const struct sluice_bpf *b, struct sluice_bpf_sockmap_handles *out,
                               char *why, size_t whylen);

/* ---- helpers (exposed for tests) ---- */

/* An upstream_servers key for sa (AF_INET, AF_INET6; a v4-mapped v6
 * address becomes AF_INET).  -1 with errno EAFNOSUPPORT otherwise. */
int sluice_bpf_addr_from_sockaddr(const struct sockaddr *sa, struct sluice_bpf_addr *out);
/* The cgroup v2 directory of process "self" given the text of
 * /proc/self/cgroup and /proc/self/mountinfo: mount point + path.  -1 when
 * there is no cgroup2 mount or no "0::" line. */
int sluice_bpf_cgroup_dir(const char *proc_cgroup, const char *mountinfo, char *out, size_t outlen);
/* The cgroup this process runs in and the pins it owns, for tests. */
const char *sluice_bpf_cgroup_path(const struct sluice_bpf *b);
const char *sluice_bpf_pin_path(const struct sluice_bpf *b);

#endif
