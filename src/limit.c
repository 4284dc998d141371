/* Per-client limits.  Owns the token bucket arithmetic and the table of
 * (clients[] index, identity name) -> {active connections, bucket} shared by
 * every worker.
 *
 * The table is a chained hash table behind one mutex, touched twice per
 * connection (acquire, release) and never per byte.  Entries exist only
 * while they carry state: one with no active connection and a full bucket is
 * indistinguishable from a new one, so it is freed, at release when that is
 * already true, else later by an incremental sweep that every acquire
 * advances by a couple of chains (Redis-style active expiry: the cost is
 * bounded per call, and reclamation keeps pace with creation).
 *
 * Names can be chosen by clients (a tcp "*" entry keys on the source address,
 * and an IPv6 /64 holds plenty), so chains are placed with SipHash under a
 * random key, and the table refuses to grow past SLUICE_LIMITS_MAX_ENTRIES:
 * a new name is then refused as MAX_CONNS (fail closed) while names already
 * present keep working. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bpf.h"
#include "limit.h"

#define TABLE_MIN_BUCKETS 64
#define SWEEP_CHAINS      2     /* chains examined per acquire */
#define TAG_RETRIES       8     /* client_open runs after an EAGAIN */

struct sluice_limit_ref {
	struct sluice_limit_ref *next;  /* hash chain */
	uint64_t hash;
	unsigned client_idx;
	uint32_t active;                /* connections holding this ref */
	bool has_slot;                  /* BPF: bpf_slot is this entry's counter */
	uint32_t bpf_slot;
	struct sluice_bucket bucket;
	char name[];
};

struct sluice_limits {
	pthread_mutex_t lock;
	struct sluice_limit_ref **buckets;
	size_t n_buckets;               /* a power of two */
	size_t n_entries;
	size_t sweep_cursor;
	uint64_t now_ms;                /* latest clock seen; release has none */
	uint64_t key[2];                /* SipHash key */
	struct sluice_bpf *bpf;         /* kernel-kept max_conns counts, or NULL */
};

static uint64_t siphash24(const uint64_t key[2], const void *data, size_t len);
static uint64_t bucket_level(const struct sluice_bucket *b, uint64_t now_ms);
static uint64_t entry_hash(const struct sluice_limits *l, unsigned client_idx, const char *name);
static struct sluice_limit_ref *entry_find(struct sluice_limits *l, uint64_t h,
                                           unsigned client_idx, const char *name);
static void entry_unlink(struct sluice_limits *l, struct sluice_limit_ref *e);
static bool entry_retire(struct sluice_limits *l, struct sluice_limit_ref *e);
static void table_grow(struct sluice_limits *l);
static void table_sweep(struct sluice_limits *l, size_t chains);

/* --- token bucket ------------------------------------------------------ */

/* Tokens (x1000) the bucket holds at now_ms.  A clock behind last_ms counts
 * as no time passed (workers read the clock before taking the lock, so
 * small steps back are normal); last_ms is not moved back either, or the
 * same interval would be credited twice. */
static uint64_t bucket_level(const struct sluice_bucket *b, uint64_t now_ms)
{
	uint64_t cap = (uint64_t)b->burst * 1000;
	uint64_t need, elapsed;

	if (b->tokens_milli >= cap)
		return cap;
	if (now_ms <= b->last_ms)
		return b->tokens_milli;
	elapsed = now_ms - b->last_ms;
	need = cap - b->tokens_milli;
	/* Compare before multiplying: elapsed * rate may overflow after a long
	 * idle period; need / rate bounds it (and rate > 0 here). */
	if (elapsed >= need / b->rate + 1)
		return cap;
	return b->tokens_milli + elapsed * b->rate;
}

/* burst 0 means "same as rate", as conn_burst does in the config: a bucket
 * that can hold nothing would refuse everyone. */
void sluice_bucket_init(struct sluice_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms)
{
	b->rate = rate;
	b->burst = burst != 0 ? burst : rate;
	b->tokens_milli = (uint64_t)b->burst * 1000;
	b->last_ms = now_ms;
}

bool sluice_bucket_take(struct sluice_bucket *b, uint64_t now_ms)
{
	if (b->rate == 0)
		return true;
	b->tokens_milli = bucket_level(b, now_ms);
	if (now_ms > b->last_ms)
		b->last_ms = now_ms;
	if (b->tokens_milli < 1000)
		return false;
	b->tokens_milli -= 1000;
	return true;
}

bool sluice_bucket_full(const struct sluice_bucket *b, uint64_t now_ms)
{
	if (b->rate == 0)
		return true;
	return bucket_level(b, now_ms) >= (uint64_t)b->burst * 1000;
}

/* --- hashing ----------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                              \
	do {                                                                  \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);     \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                        \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                        \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);     \
	} while (0)

/* SipHash-2-4 (Aumasson & Bernstein), little-endian word reads. */
static uint64_t siphash24(const uint64_t key[2], const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
	uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
	uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
	uint64_t v3 = 0x7465646279746573ULL ^ key[1];
	uint64_t m, b = (uint64_t)len << 56;
	size_t i, left = len & 7;

	for (; len >= 8; len -= 8, p += 8) {
		m = 0;
		for (i = 0; i < 8; i++)
			m |= (uint64_t)p[i] << (8 * i);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (i = 0; i < left; i++)
		b |= (uint64_t)p[i] << (8 * i);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The client index goes into the key rather than the data, so the name is
 * hashed in place without building a composite buffer. */
static uint64_t entry_hash(const struct sluice_limits *l, unsigned client_idx, const char *name)
{
	uint64_t key[2] = { l->key[0] ^ (uint64_t)client_idx, l->key[1] };

	return siphash24(key, name, strlen(name));
}

/* --- table ------------------------------------------------------------- */

static struct sluice_limit_ref *entry_find(struct sluice_limits *l, uint64_t h,
                                           unsigned client_idx, const char *name)
{
	struct sluice_limit_ref *e;

	for (e = l->buckets[h & (l->n_buckets - 1)]; e != NULL; e = e->next)
		if (e->hash == h && e->client_idx == client_idx && strcmp(e->name, name) == 0)
			return e;
	return NULL;
}

static void entry_unlink(struct sluice_limits *l, struct sluice_limit_ref *e)
{
	struct sluice_limit_ref **pp = &l->buckets[e->hash & (l->n_buckets - 1)];

	while (*pp != NULL && *pp != e)
		pp = &(*pp)->next;
	if (*pp == e) {     /* else not ours to free (a double release) */
		*pp = e->next;
		l->n_entries--;
		free(e);
	}
}

/* true when the entry carries no state and may be freed; with BPF it has
 * then also given its kernel slot back (not a pure test: callers free the
 * entry on true).  The slot must be back at 0 active first: a closed
 * connection reaches TCP_CLOSE a round trip after sluice let go of it, and
 * until then the slot is kept (the sweep comes back for it). */
static bool entry_retire(struct sluice_limits *l, struct sluice_limit_ref *e)
{
	if (e->active != 0 || !sluice_bucket_full(&e->bucket, l->now_ms))
		return false;
	if (e->has_slot) {
		if (sluice_bpf_client_put(l->bpf, e->bpf_slot) == SLUICE_AGAIN)
			return false;
		e->has_slot = false;
	}
	return true;
}

/* Doubles the bucket array at load factor 1.  Failure to allocate is not an
 * error: the table keeps working with longer chains. */
static void table_grow(struct sluice_limits *l)
{
	size_t n = l->n_buckets * 2, i;
	struct sluice_limit_ref **nb = calloc(n, sizeof(*nb));

	if (nb == NULL)
		return;
	for (i = 0; i < l->n_buckets; i++) {
		struct sluice_limit_ref *e = l->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			e->next = nb[e->hash & (n - 1)];
			nb[e->hash & (n - 1)] = e;
		}
	}
	free(l->buckets);
	l->buckets = nb;
	l->n_buckets = n;
	l->sweep_cursor &= n - 1;
}

/* Frees idle entries in the next `chains` chains. */
static void table_sweep(struct sluice_limits *l, size_t chains)
{
	while (chains-- > 0 && l->n_entries > 0) {
		struct sluice_limit_ref **pp = &l->buckets[l->sweep_cursor];

		while (*pp != NULL) {
			struct sluice_limit_ref *e = *pp;

			if (entry_retire(l, e)) {
				*pp = e->next;
				l->n_entries--;
				free(e);
			} else {
				pp = &e->next;
			}
		}
		l->sweep_cursor = (l->sweep_cursor + 1) & (l->n_buckets - 1);
	}
}

struct sluice_limits *sluice_limits_new(void)
{
	struct sluice_limits *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	if (getrandom(l->key, sizeof(l->key), 0) != (ssize_t)sizeof(l->key))
		goto err;
	l->n_buckets = TABLE_MIN_BUCKETS;
	l->buckets = calloc(l->n_buckets, sizeof(*l->buckets));
	if (l->buckets == NULL)
		goto err;
	if ((errno = pthread_mutex_init(&l->lock, NULL)) != 0)
		goto err;
	return l;
err:
	free(l->buckets);
	free(l);
	return NULL;
}

void sluice_limits_use_bpf(struct sluice_limits *l, struct sluice_bpf *bpf)
{
	l->bpf = bpf;
}

void sluice_limits_free(struct sluice_limits *l)
{
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < l->n_buckets; i++) {
		struct sluice_limit_ref *e = l->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(l->buckets);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/* An allocation failure is refused as MAX_CONNS: an admission that cannot
 * be counted must not bypass the limit. */
enum sluice_limit_result sluice_limits_acquire(struct sluice_limits *l, unsigned client_idx,
                                               const struct sluice_client_cfg *c, const char *name,
                                               int fd, uint64_t now_ms, struct sluice_limit_ref **ref)
{
	enum sluice_limit_result rc = SLUICE_LIMIT_OK;
	bool tag = false;
	uint32_t slot = 0;
	int r, err, tries;
	uint32_t burst = c->conn_burst != 0 ? c->conn_burst : c->conn_rate;
	uint64_t h = entry_hash(l, client_idx, name);
	struct sluice_limit_ref *e;

	*ref = NULL;
	pthread_mutex_lock(&l->lock);
	if (now_ms > l->now_ms)
		l->now_ms = now_ms;
	table_sweep(l, SWEEP_CHAINS);

	e = entry_find(l, h, client_idx, name);
	if (e == NULL) {
		size_t len = strlen(name);

		if (l->n_entries >= SLUICE_LIMITS_MAX_ENTRIES) {
			rc = SLUICE_LIMIT_MAX_CONNS;
			goto out;
		}
		e = malloc(sizeof(*e) + len + 1);
		if (e == NULL) {
			rc = SLUICE_LIMIT_MAX_CONNS;
			goto out;
		}
		e->hash = h;
		e->client_idx = client_idx;
		e->active = 0;
		e->has_slot = false;
		e->bpf_slot = 0;
		sluice_bucket_init(&e->bucket, c->conn_rate, burst, now_ms);
		memcpy(e->name, name, len + 1);
		e->next = l->buckets[h & (l->n_buckets - 1)];
		l->buckets[h & (l->n_buckets - 1)] = e;
		l->n_entries++;
		if (l->n_entries > l->n_buckets)
			table_grow(l);
	} else if (e->bucket.rate != c->conn_rate || e->bucket.burst != burst) {
		/* A different config for the same key (a reload sharing the
		 * table): adopt its limits, keeping no more than the new burst. */
		uint64_t tokens = e->bucket.tokens_milli, last = e->bucket.last_ms;

		sluice_bucket_init(&e->bucket, c->conn_rate, burst, last);
		if (tokens < e->bucket.tokens_milli)
			e->bucket.tokens_milli = tokens;
	}

	if (!sluice_bucket_take(&e->bucket, now_ms))
		rc = SLUICE_LIMIT_RATE;
	else if (l->bpf != NULL) {
		/* The kernel counts and decides max_conns (tag below); the
		 * table only keeps the bucket and the slot.  Every slot held
		 * fails closed, like a full table. */
		if (!e->has_slot) {
			if (sluice_bpf_client_get(l->bpf, client_idx, name, &e->bpf_slot) < 0) {
				rc = SLUICE_LIMIT_MAX_CONNS;
				goto out;
			}
			e->has_slot = true;
		}
		e->active++;    /* holds e (and its slot) while unlocked */
		slot = e->bpf_slot;
		tag = true;
	} else if (c->max_conns != 0 && e->active >= c->max_conns)
		rc = SLUICE_LIMIT_MAX_CONNS;
	else if (e->active == UINT32_MAX)
		rc = SLUICE_LIMIT_MAX_CONNS;    /* the counter cannot count it */
	else {
		e->active++;
		*ref = e;
	}
out:
	pthread_mutex_unlock(&l->lock);
	if (!tag)
		return rc;
	/* A syscall: made outside the lock the other workers need.  EAGAIN
	 * is transient: the program's compare-and-swap lost its retries to
	 * other CPUs, or the kernel was creating the socket's storage at the
	 * same moment (a close racing the tag; seen once in ~3,500 soak
	 * connections, and the retry then says EEXIST).  Try again a few
	 * times before refusing. */
	for (tries = 0;; tries++) {
		r = sluice_bpf_client_tag(l->bpf, fd, slot, c->max_conns);
		if (r != SLUICE_ERR || errno != EAGAIN || tries == TAG_RETRIES)
			break;
	}
	if (r == SLUICE_OK) {
		*ref = e;
		return SLUICE_LIMIT_OK;
	}
	err = errno;
	pthread_mutex_lock(&l->lock);
	e->active--;
	if (entry_retire(l, e))
		entry_unlink(l, e);
	pthread_mutex_unlock(&l->lock);
	if (r == SLUICE_DECLINED)
		return SLUICE_LIMIT_MAX_CONNS;
	errno = err;
	return SLUICE_LIMIT_ERROR;
}

/* A second release of the same ref is a caller bug; the active==0 guard
 * keeps the counter from wrapping only if the entry still exists. */
void sluice_limits_release(struct sluice_limits *l, struct sluice_limit_ref *ref)
{
	if (ref == NULL)
		return;
	pthread_mutex_lock(&l->lock);
	if (ref->active > 0)
		ref->active--;
	if (entry_retire(l, ref))
		entry_unlink(l, ref);
	pthread_mutex_unlock(&l->lock);
}

uint32_t sluice_limits_active(struct sluice_limits *l, unsigned client_idx, const char *name)
{
	uint64_t h = entry_hash(l, client_idx, name);
	struct sluice_limit_ref *e;
	uint32_t n;

	pthread_mutex_lock(&l->lock);
	e = entry_find(l, h, client_idx, name);
	if (e != NULL && e->has_slot)
		n = sluice_bpf_client_active(l->bpf, e->bpf_slot);
	else
		n = e != NULL ? e->active : 0;
	pthread_mutex_unlock(&l->lock);
	return n;
}

size_t sluice_limits_count(struct sluice_limits *l)
{
	size_t n;

	pthread_mutex_lock(&l->lock);
	n = l->n_entries;
	pthread_mutex_unlock(&l->lock);
	return n;
}
