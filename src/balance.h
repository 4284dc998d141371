/* Weighted least-connection choice over an upstream pool.
 *
 * Active counts are shared by every worker: C11 atomics, or the kernel's
 * per-server counters (bpf.h) behind the same calls.  Weighted comparison
 * by cross-multiplication, a.active * b.weight < b.active * a.weight, as
 * nginx does, so no division and no rounding.  Ties are broken by rotating
 * the starting point, so equal servers share new connections in turn. */
#ifndef SLUICE_BALANCE_H
#define SLUICE_BALANCE_H

#include <stdatomic.h>
#include <stdint.h>

#include "config.h"

struct sluice_bpf;

struct sluice_pool {
	const struct sluice_upstream_cfg *cfg;
	_Atomic uint32_t *active;   /* per server, when not counted by the kernel */
	_Atomic uint32_t rr;        /* tie rotation */
	const struct sluice_bpf *bpf; /* kernel-kept counts, or NULL */
	unsigned bpf_pool;          /* this pool's index in the config, for bpf */
};

int sluice_pool_init(struct sluice_pool *p, const struct sluice_upstream_cfg *cfg);
void sluice_pool_destroy(struct sluice_pool *p);

/* Picks the least-loaded server not in tried_mask and counts the connection
 * on it at once (so two workers picking at the same moment see each other's
 * choice, as HAProxy counts at assignment); -1 if every server was tried.
 * Every successful pick is balanced by exactly one sluice_pool_release(),
 * whether the connect then failed or the relay ended. */
int sluice_pool_pick(struct sluice_pool *p, uint64_t tried_mask);
/* From now on the active counts are the kernel's (bpf.h: counted from the
 * connect() that sends the SYN until TCP_CLOSE, by every worker and across
 * a crash): pick reads them, pick and release count nothing.  Between a
 * pick and its connect() (a few microseconds) another worker does not see
 * the choice; the atomics' count-at-pick closes that window, the kernel's
 * count is the truth.  index = this pool's place in cfg->upstreams[]. */
void sluice_pool_use_bpf(struct sluice_pool *p, const struct sluice_bpf *bpf, unsigned index);
void sluice_pool_release(struct sluice_pool *p, unsigned server);
uint32_t sluice_pool_active(const struct sluice_pool *p, unsigned server);

#endif
