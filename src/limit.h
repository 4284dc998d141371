/* Per-client limits: concurrent connections and a token bucket of new
 * connections per second, shared by every worker.
 *
 * Limits are kept per (clients[] entry, identity name): two clients that
 * match the same "*" entry each get the entry's limits.  The table is shared
 * by all workers behind one mutex; acquire/release are per connection, not per
 * byte.  The BPF issue swaps the concurrent-connection counter for a kernel
 * map behind the same calls. */
#ifndef SLUICE_LIMIT_H
#define SLUICE_LIMIT_H

#include <stdint.h>

#include "config.h"

/* Token bucket with an injected clock (milliseconds), for unit tests. */
struct sluice_bucket {
	uint32_t rate;        /* tokens per second, 0 = unlimited */
	uint32_t burst;       /* capacity */
	uint64_t tokens_milli;/* tokens * 1000, so sub-token refill is exact */
	uint64_t last_ms;
};
void sluice_bucket_init(struct sluice_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms);
/* true and one token taken, or false (nothing taken). */
bool sluice_bucket_take(struct sluice_bucket *b, uint64_t now_ms);
/* true once the bucket has refilled to burst (the entry can be forgotten). */
bool sluice_bucket_full(const struct sluice_bucket *b, uint64_t now_ms);

struct sluice_limits;
struct sluice_bpf;
struct sluice_limit_ref;    /* one per admitted connection; released exactly once */

/* ERROR: the kernel could not count the connection (errno: EEXIST the
 * client socket is already closed, EAGAIN heavy contention, or the bpf()
 * error); the connection is refused, as an uncounted one would bypass the
 * limit. */
enum sluice_limit_result { SLUICE_LIMIT_OK, SLUICE_LIMIT_MAX_CONNS, SLUICE_LIMIT_RATE,
                           SLUICE_LIMIT_ERROR };

/* Past this many (client, name) entries a new name is refused with
 * SLUICE_LIMIT_MAX_CONNS rather than grow the table: about 100 MB with
 * short names (addresses, CNs), more with names near the 1 KiB limit. */
#define SLUICE_LIMITS_MAX_ENTRIES 1000000

/* NULL on failure (errno set). */
struct sluice_limits *sluice_limits_new(void);
void sluice_limits_free(struct sluice_limits *l);
/* From now on max_conns is counted by the kernel (bpf.h): acquire tags the
 * client socket fd on the entry's slot, and the kernel counts its close
 * whenever and however it dies.  Call before the first acquire. */
void sluice_limits_use_bpf(struct sluice_limits *l, struct sluice_bpf *bpf);

/* Checks the rate first, then max_conns: an attempt refused by the rate
 * costs nothing; an attempt that got a token and is then refused by
 * max_conns keeps the token spent (it was a new connection attempt, as
 * HAProxy's conn_rate counts attempts).  On OK, *ref must later go to
 * sluice_limits_release() exactly once. */
enum sluice_limit_result sluice_limits_acquire(struct sluice_limits *l, unsigned client_idx,
                                               const struct sluice_client_cfg *c, const char *name,
                                               int fd, uint64_t now_ms, struct sluice_limit_ref **ref);
void sluice_limits_release(struct sluice_limits *l, struct sluice_limit_ref *ref);
/* Active connections of (client_idx, name), for tests and metrics (with
 * BPF: the kernel's count). */
uint32_t sluice_limits_active(struct sluice_limits *l, unsigned client_idx, const char *name);
/* Entries held (idle ones not yet reclaimed included), for tests and metrics. */
size_t sluice_limits_count(struct sluice_limits *l);

#endif
