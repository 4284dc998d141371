/* Weighted least-connection balancing.  Owns the per-server active
 * connection counters of a pool, shared by every worker.
 *
 * Laid out as nginx's ngx_stream_upstream_least_conn_module: helpers first,
 * then the hooks in the order a connection uses them (init, pick, release).
 *
 * Pick reads the counters and then increments the chosen one; another worker
 * may pick between the read and the increment, so two simultaneous picks can
 * both land on the server that was least loaded a moment ago.  That is
 * accepted, as in nginx (per-worker state) and HAProxy (counted at
 * assignment): every counter change is a single atomic operation, so counts
 * stay exact and only the choice is momentarily off by a connection.  Relaxed
 * ordering suffices: the counters publish no other data. */
#include <errno.h>
#include <stdlib.h>

#include "balance.h"
#include "bpf.h"
#include "log.h"

static unsigned server_weight(const struct sluice_pool *p, unsigned i);

/* The config guarantees weight >= 1; 0 is read as 1 so a hand-built config
 * cannot make every comparison with this server a tie. */
static unsigned server_weight(const struct sluice_pool *p, unsigned i)
{
	unsigned w = p->cfg->servers[i].weight;

	return w != 0 ? w : 1;
}

int sluice_pool_init(struct sluice_pool *p, const struct sluice_upstream_cfg *cfg)
{
	unsigned i;

	p->cfg = cfg;
	p->active = NULL;
	p->bpf = NULL;
	p->bpf_pool = 0;
	atomic_init(&p->rr, 0);
	if (cfg->n_servers == 0 || cfg->n_servers > SLUICE_MAX_SERVERS) {
		errno = EINVAL;
		return -1;
	}
	p->active = malloc(cfg->n_servers * sizeof(*p->active));
	if (p->active == NULL)
		return -1;
	for (i = 0; i < cfg->n_servers; i++)
		atomic_init(&p->active[i], 0);
	return 0;
}

void sluice_pool_use_bpf(struct sluice_pool *p, const struct sluice_bpf *bpf, unsigned index)
{
	p->bpf = bpf;
	p->bpf_pool = index;
}

void sluice_pool_destroy(struct sluice_pool *p)
{
	free(p->active);
	p->active = NULL;
}

/* Minimal active/weight, compared as a.active * b.weight < b.active * a.weight
 * in 64 bits (32-bit counts times 32-bit weights cannot overflow).  The scan
 * starts at a rotating index and keeps the first minimum it meets, so equal
 * servers take new connections in turn. */
int sluice_pool_pick(struct sluice_pool *p, uint64_t tried_mask)
{
	unsigned n = p->cfg->n_servers, start, k;
	uint64_t best_active = 0, best_weight = 1;
	int best = -1;

	if (n == 0 || p->active == NULL)
		return -1;
	start = atomic_fetch_add_explicit(&p->rr, 1, memory_order_relaxed) % n;
	for (k = 0; k < n; k++) {
		unsigned i = (start + k) % n;
		uint64_t a, w;

		if (tried_mask & (UINT64_C(1) << i))
			continue;
		a = sluice_pool_active(p, i);
		w = server_weight(p, i);
		if (best < 0 || a * best_weight < best_active * w) {
			best = (int)i;
			best_active = a;
			best_weight = w;
		}
	}
	if (best >= 0 && p->bpf == NULL)
		atomic_fetch_add_explicit(&p->active[best], 1, memory_order_relaxed);
	return best;
}

/* Never takes a counter below zero: a release without a pick is a caller
 * bug, and wrapping to 4 billion would starve that server for good.  The
 * CAS loop refuses the decrement instead and logs the bug. */
void sluice_pool_release(struct sluice_pool *p, unsigned server)
{
	_Atomic uint32_t *c;
	uint32_t cur;

	if (p->active == NULL || server >= p->cfg->n_servers || p->bpf != NULL)
		return;
	c = &p->active[server];
	cur = atomic_load_explicit(c, memory_order_relaxed);
	do {
		if (cur == 0) {
			sluice_log(SLUICE_LOG_ERROR, "bug",
			           "upstream %s server %u released with no active connection",
			           p->cfg->name != NULL ? p->cfg->name : "?", server);
			return;
		}
	} while (!atomic_compare_exchange_weak_explicit(c, &cur, cur - 1, memory_order_relaxed,
	                                                memory_order_relaxed));
}

uint32_t sluice_pool_active(const struct sluice_pool *p, unsigned server)
{
	if (p->active == NULL || server >= p->cfg->n_servers)
		return 0;
	if (p->bpf != NULL)
		return sluice_bpf_upstream_active(p->bpf, p->bpf_pool, server);
	return atomic_load_explicit(&p->active[server], memory_order_relaxed);
}
