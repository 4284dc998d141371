/* TLS session cache (session.h says why it exists instead of stateless
 * tickets).
 *
 * OpenSSL's own cache is switched off for store and lookup
 * (SSL_SESS_CACHE_NO_INTERNAL) and drives this one through its three
 * callbacks:
 *   new_cb     a handshake made a session (TLS 1.2 full handshake; every
 *              TLS 1.3 ticket): insert it, dropping expired and, when full,
 *              the oldest entries;
 *   get_cb     a client offered a session ID or a stateful ticket: look it
 *              up, and hand it back only if admit() says this connection
 *              would be admitted with it now;
 *   remove_cb  OpenSSL declared a session unusable (an alert on it): drop.
 * OpenSSL's internal cache has no hook between "found" and "resumed", which
 * is the point where admission must run; that is why this is ours.
 *
 * One mutex for the table: every critical section is a few pointer moves
 * (admission and SSL_SESSION_free run outside it), and handshakes, not
 * lookups, bound the rate.  Entries are kept oldest to newest on a list;
 * all sessions share one timeout, so that order is also expiry order and
 * purging stops at the first live entry. */
#include "session.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct entry {
	struct entry *hnext;            /* bucket chain */
	struct entry *older, *newer;    /* age list */
	SSL_SESSION *sess;              /* one reference, ours */
	time_t expires;
	unsigned id_len;
	unsigned char id[SSL_MAX_SSL_SESSION_ID_LENGTH];
};

struct cache {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t mask;                    /* buckets - 1, a power of two minus one */
	size_t count, max;
	struct entry *oldest, *newest;
	sluice_session_admit_fn admit;
};

static int cache_idx = -1;
static pthread_once_t cache_idx_once = PTHREAD_ONCE_INIT;

static void cache_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp);

static void cache_idx_init(void)
{
	cache_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, cache_free);
}

static struct cache *cache_of(SSL_CTX *ctx)
{
	return cache_idx < 0 ? NULL : SSL_CTX_get_ex_data(ctx, cache_idx);
}

/* Session IDs are 32 random bytes made by OpenSSL (a client cannot choose
 * the ID of a session we store), so their first bytes hash well enough. */
static size_t bucket_of(const struct cache *k, const unsigned char *id, unsigned len)
{
	uint64_t h = 0;

	memcpy(&h, id, len < sizeof(h) ? len : sizeof(h));
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 32;
	return (size_t)h & k->mask;
}

static struct entry **find_slot(struct cache *k, const unsigned char *id, unsigned len)
{
	struct entry **pp = &k->buckets[bucket_of(k, id, len)];

	while (*pp && ((*pp)->id_len != len || memcmp((*pp)->id, id, len) != 0))
		pp = &(*pp)->hnext;
	return pp;
}

/* Unlinks e from its bucket and the age list; the caller frees it (after
 * dropping the lock). */
static void unlink_entry(struct cache *k, struct entry *e)
{
	struct entry **pp = find_slot(k, e->id, e->id_len);

	if (*pp == e)
		*pp = e->hnext;
	if (e->older)
		e->older->newer = e->newer;
	else
		k->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		k->newest = e->older;
	e->hnext = e->older = NULL;
	e->newer = NULL;
	k->count--;
}

static void free_entries(struct entry *list)
{
	while (list) {
		struct entry *next = list->hnext;

		SSL_SESSION_free(list->sess);
		free(list);
		list = next;
	}
}

static int new_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct cache *k = cache_of(SSL_get_SSL_CTX(ssl));
	struct entry *e, **pp, *dead = NULL;
	const unsigned char *id;
	unsigned len;
	time_t now = time(NULL);

	id = SSL_SESSION_get_id(sess, &len);
	if (!k || len == 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return 0;   /* not kept: OpenSSL drops the reference it gave us */
	e = calloc(1, sizeof(*e));
	if (!e)
		return 0;   /* no resumption for this one; nothing else is lost */
	e->sess = sess;
	e->expires = (time_t)SSL_SESSION_get_time(sess) + (time_t)SSL_SESSION_get_timeout(sess);
	e->id_len = len;
	memcpy(e->id, id, len);

	pthread_mutex_lock(&k->lock);
	while (k->oldest && (k->oldest->expires <= now || k->count >= k->max)) {
		struct entry *old = k->oldest;

		unlink_entry(k, old);
		old->hnext = dead;
		dead = old;
	}
	pp = find_slot(k, id, len);
	if (*pp) {      /* the same ID again (OpenSSL re-caching a session) */
		struct entry *old = *pp;

		unlink_entry(k, old);
		old->hnext = dead;
		dead = old;
		pp = find_slot(k, id, len);
	}
	*pp = e;
	e->older = k->newest;
	if (k->newest)
		k->newest->newer = e;
	else
		k->oldest = e;
	k->newest = e;
	k->count++;
	pthread_mutex_unlock(&k->lock);

	free_entries(dead);
	return 1;       /* we keep the reference */
}

static SSL_SESSION *get_cb(SSL *ssl, const unsigned char *id, int len, int *copy)
{
	struct cache *k = cache_of(SSL_get_SSL_CTX(ssl));
	struct entry *e, *dead = NULL;
	SSL_SESSION *sess = NULL;

	/* We take the reference ourselves, under the lock, so an eviction on
	 * another worker cannot free the session between lookup and use. */
	*copy = 0;
	if (!k || len <= 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return NULL;
	pthread_mutex_lock(&k->lock);
	e = *find_slot(k, id, (unsigned)len);
	if (e && e->expires <= time(NULL)) {
		unlink_entry(k, e);
		dead = e;
	} else if (e && SSL_SESSION_up_ref(e->sess)) {
		sess = e->sess;
	}
	pthread_mutex_unlock(&k->lock);
	free_entries(dead);

	if (sess && k->admit(ssl, sess) < 0) {
		SSL_SESSION_free(sess);
		sess = NULL;
	}
	return sess;
}

static void remove_cb(SSL_CTX *ctx, SSL_SESSION *sess)
{
	struct cache *k = cache_of(ctx);
	struct entry *e;
	const unsigned char *id;
	unsigned len;

	id = SSL_SESSION_get_id(sess, &len);
	if (!k || len == 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return;
	pthread_mutex_lock(&k->lock);
	e = *find_slot(k, id, len);
	if (e && e->sess == sess)
		unlink_entry(k, e);
	else
		e = NULL;
	pthread_mutex_unlock(&k->lock);
	free_entries(e);
}

void sluice_session_forget(SSL_CTX *ctx, const unsigned char *id, unsigned len)
{
	struct cache *k = cache_of(ctx);
	struct entry *e;

	if (!k || len == 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return;
	pthread_mutex_lock(&k->lock);
	e = *find_slot(k, id, len);
	if (e)
		unlink_entry(k, e);
	pthread_mutex_unlock(&k->lock);
	free_entries(e);
}

static void cache_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct cache *k = ptr;
	struct entry *e;

	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (!k)
		return;
	e = k->oldest;
	while (e) {
		struct entry *next = e->newer;

		SSL_SESSION_free(e->sess);
		free(e);
		e = next;
	}
	free(k->buckets);
	pthread_mutex_destroy(&k->lock);
	free(k);
}

int sluice_session_cache_attach(SSL_CTX *ctx, size_t max_entries, sluice_session_admit_fn admit,
                                char *err, size_t errlen)
{
	struct cache *k;
	size_t n = 16;

	pthread_once(&cache_idx_once, cache_idx_init);
	if (cache_idx < 0) {
		snprintf(err, errlen, "tls: no SSL_CTX ex_data index for the session cache");
		return -1;
	}
	if (max_entries == 0 || max_entries > ((size_t)1 << 28)) {
		snprintf(err, errlen, "tls: session cache size %zu out of range", max_entries);
		return -1;
	}
	while (n < max_entries)
		n <<= 1;
	k = calloc(1, sizeof(*k));
	if (!k)
		goto oom;
	k->buckets = calloc(n, sizeof(*k->buckets));
	if (!k->buckets)
		goto oom;
	k->mask = n - 1;
	k->max = max_entries;
	k->admit = admit;
	if (pthread_mutex_init(&k->lock, NULL) != 0)
		goto oom;
	if (!SSL_CTX_set_ex_data(ctx, cache_idx, k)) {
		pthread_mutex_destroy(&k->lock);
		goto oom;
	}
	/* NO_AUTO_CLEAR: OpenSSL's periodic flush walks its own (empty)
	 * cache; ours purges expired entries on insert. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL |
	                                    SSL_SESS_CACHE_NO_AUTO_CLEAR);
	SSL_CTX_sess_set_new_cb(ctx, new_cb);
	SSL_CTX_sess_set_get_cb(ctx, get_cb);
	SSL_CTX_sess_set_remove_cb(ctx, remove_cb);
	return 0;
oom:
	if (k)
		free(k->buckets);
	free(k);
	snprintf(err, errlen, "tls: out of memory for the session cache");
	return -1;
}

size_t sluice_session_cache_count(SSL_CTX *ctx)
{
	struct cache *k = cache_of(ctx);
	size_t n;

	if (!k)
		return 0;
	pthread_mutex_lock(&k->lock);
	n = k->count;
	pthread_mutex_unlock(&k->lock);
	return n;
}
