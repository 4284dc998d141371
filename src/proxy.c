/* The proxy: workers, their listeners, accept, and the drain on stop.
 *
 * One worker thread per core, each with its own epoll loop and its own
 * SO_REUSEPORT listening socket per listener, so the kernel spreads new
 * connections across workers and no lock sits on the accept path.  Shared
 * state (config, SSL_CTX, pool counters, limits) is either immutable or
 * atomic/locked in its own module. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sluice/sluice.h>

#include "common.h"
#include "bpf.h"
#include "sockmap.h"
#include "log.h"
#include "proxy.h"
#include "tls.h"

#define ACCEPT_BATCH 64          /* accepts per wakeup before yielding to I/O */
#define FDLIMIT_PAUSE_MS 100     /* accept pause when out of fds */
#define FDLIMIT_LOG_MS 10000     /* one "out of fds" line per interval */
/* fds kept free for connections already accepted: each needs one for its
 * upstream and up to four for pipes while bytes are in flight.  Accepting
 * into the last fds would admit a connection that then fails its connect. */
#define FD_RESERVE 16
#define MAX_FREE_PIPES 64        /* per worker */

const char *sluice_version(void)
{
	return SLUICE_VERSION;
}

int sluice_config_check(const char *config_path, char *err, size_t errlen)
{
	struct sluice_config *cfg;

	if (sluice_config_load(config_path, &cfg, err, errlen) < 0)
		return -1;
	sluice_config_free(cfg);
	return 0;
}

/* ---- listeners ---- */

static int listener_socket(const struct sluice_listener_cfg *lc, char *err, size_t errlen)
{
	int one = 1;
	int fd = socket(lc->sa.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		goto fail;
	/* REUSEPORT: every worker binds its own socket; the kernel balances. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	/* A "[::]" listener serves IPv6 only, so "0.0.0.0" can sit beside it. */
	if (lc->sa.ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)&lc->sa.ss, lc->sa.len) < 0)
		goto fail;
	if (listen(fd, SOMAXCONN) < 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "listener %s (%s): %s", lc->name, lc->listen, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

static void listener_close(struct sluice_listener *l)
{
	if (l->io.fd < 0)
		return;
	sluice_loop_del(l->w->loop, &l->io);
	sluice_timer_cancel(l->w->loop, &l->retry);
	close(l->io.fd);
	l->io.fd = -1;
}

void sluice_listener_fdlimit(struct sluice_listener *l, int err)
{
	uint64_t now = sluice_now_ms();

	/* Out of fds: the pending connection stays in the backlog.  Pause
	 * accepting instead of spinning on an accept that keeps failing, and
	 * say so once per interval, not once per attempt. */
	l->fdlimit_refusals++;
	if (now - l->last_fdlimit_log_ms >= FDLIMIT_LOG_MS) {
		sluice_log(SLUICE_LOG_WARN, "accept_paused",
		           "listener %s: %s; pausing accepts for %d ms (%llu times since last report)",
		           l->cfg->name, strerror(err), FDLIMIT_PAUSE_MS,
		           (unsigned long long)l->fdlimit_refusals);
		l->last_fdlimit_log_ms = now;
		l->fdlimit_refusals = 0;
	}
	if (sluice_timer_set(l->w->loop, &l->retry, now + FDLIMIT_PAUSE_MS) < 0)
		sluice_loop_defer(l->w->loop, &l->io);
}

static void listener_on_accept(struct sluice_io *io, uint32_t events)
{
	struct sluice_listener *l = (struct sluice_listener *)io;
	int i;

	(void)events;
	if (l->retry.heap_idx >= 0)
		return; /* paused after EMFILE; the retry timer resumes */
	for (i = 0; i < ACCEPT_BATCH; i++) {
		struct sluice_sockaddr peer;
		int fd;

		peer.len = sizeof(peer.ss);
		fd = accept4(l->io.fd, (struct sockaddr *)&peer.ss, &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			/* fds are handed out lowest first, so a high one means the
			 * table is nearly full: serve this one, then pause. */
			bool near_limit = l->w->proxy->fd_limit > 0 &&
			                  fd >= l->w->proxy->fd_limit - FD_RESERVE;

			sluice_conn_accept(l, fd, &peer);
			if (near_limit) {
				sluice_listener_fdlimit(l, EMFILE);
				return;
			}
			continue;
		}
		switch (errno) {
		case EAGAIN:       /* backlog empty: wait for the next edge */
			return;
		case EINTR:
		case ECONNABORTED: /* the client gave up while queued: next one */
		case EPROTO:
			continue;
		case EMFILE:
		case ENFILE:
		case ENOBUFS:
		case ENOMEM:
			sluice_listener_fdlimit(l, errno);
			return;
		default:
			sluice_log(SLUICE_LOG_ERROR, "accept", "listener %s: accept: %s", l->cfg->name,
			           strerror(errno));
			sluice_listener_fdlimit(l, errno);
			return;
		}
	}
	/* Batch spent with connections maybe still queued: the edge will not
	 * come again for them, so come back after serving I/O once. */
	sluice_loop_defer(l->w->loop, &l->io);
}

static void listener_on_retry(struct sluice_timer *t)
{
	struct sluice_listener *l = (struct sluice_listener *)((char *)t - offsetof(struct sluice_listener, retry));

	listener_on_accept(&l->io, 0);
}

/* ---- workers ---- */

static void worker_close_all(struct sluice_worker *w, const char *result)
{
	while (w->conns)
		sluice_conn_close(w->conns, result, NULL);
}

void sluice_worker_conn_gone(struct sluice_worker *w)
{
	if (w->draining && w->n_conns == 0)
		w->exit = true;
}

static void worker_on_drain_deadline(struct sluice_timer *t)
{
	struct sluice_worker *w = (struct sluice_worker *)((char *)t - offsetof(struct sluice_worker, drain_timer));

	worker_close_all(w, "drain_timeout");
	w->exit = true;
}

static void worker_on_stop(struct sluice_io *io, uint32_t events)
{
	struct sluice_worker *w = (struct sluice_worker *)((char *)io - offsetof(struct sluice_worker, stop_io));
	const struct sluice_config *cfg = w->proxy->cfg;
	uint64_t v;
	unsigned i;

	(void)events;
	while (read(w->stop_io.fd, &v, sizeof(v)) > 0)
		;
	if (w->draining) {
		/* A second stop request: no more patience. */
		worker_close_all(w, "drain_timeout");
		w->exit = true;
		return;
	}
	w->draining = true;
	for (i = 0; i < cfg->n_listeners; i++)
		listener_close(&w->listeners[i]);
	if (w->n_conns == 0) {
		w->exit = true;
		return;
	}
	if (sluice_timer_set(w->loop, &w->drain_timer, sluice_now_ms() + cfg->drain_ms) < 0) {
		worker_close_all(w, "drain_timeout");
		w->exit = true;
	}
}

static void worker_free_graveyard(struct sluice_worker *w)
{
	while (w->graveyard) {
		struct sluice_conn *c = w->graveyard;

		w->graveyard = c->next;
		free(c);
	}
}

static void *worker_main(void *arg)
{
	struct sluice_worker *w = arg;
	unsigned i;

	for (i = 0; i < w->proxy->cfg->n_listeners; i++) {
		if (sluice_loop_add(w->loop, &w->listeners[i].io, EPOLLIN | EPOLLET) < 0) {
			sluice_log(SLUICE_LOG_ERROR, "worker", "worker %u: epoll_ctl: %s", w->id, strerror(errno));
			return (void *)1;
		}
		/* Connections queued before the first edge would otherwise wait. */
		sluice_loop_defer(w->loop, &w->listeners[i].io);
	}
	while (!w->exit) {
		if (sluice_loop_run_once(w->loop, 1000) < 0) {
			sluice_log(SLUICE_LOG_ERROR, "worker", "worker %u: epoll_wait: %s", w->id, strerror(errno));
			worker_close_all(w, "internal");
			w->exit = true;
		}
		worker_free_graveyard(w);
	}
	return NULL;
}

static void worker_destroy(struct sluice_worker *w, unsigned n_listeners)
{
	unsigned i;

	if (w->listeners) {
		for (i = 0; i < n_listeners; i++)
			if (w->listeners[i].io.fd >= 0) {
				if (w->loop)
					listener_close(&w->listeners[i]);
				else
					close(w->listeners[i].io.fd);
			}
		free(w->listeners);
	}
	if (w->loop) {
		worker_close_all(w, "shutdown");
		worker_free_graveyard(w);
		sluice_linger_free_all(w);
	}
	if (w->stop_io.fd >= 0)
		close(w->stop_io.fd);
	if (w->loop)
		sluice_sockmap_worker_fini(w);
	sluice_worker_pools_free(w);
	sluice_loop_free(w->loop);
}

static int worker_init(struct sluice_proxy *p, struct sluice_worker *w, unsigned id, char *err, size_t errlen)
{
	const struct sluice_config *cfg = p->cfg;
	unsigned i;

	w->proxy = p;
	w->id = id;
	/* Cached pipes hold two fds each: the cache may take a 32nd of the
	 * fd table per worker, at most 64 pipes, so it never starves accepts. */
	w->max_free_pipes = MAX_FREE_PIPES;
	if (p->fd_limit > 0 && (unsigned)p->fd_limit / 64 / p->n_workers < MAX_FREE_PIPES)
		w->max_free_pipes = (unsigned)p->fd_limit / 64 / p->n_workers;
	w->stop_io.fd = -1;
	sluice_timer_init(&w->drain_timer, worker_on_drain_deadline);
	w->listeners = calloc(cfg->n_listeners, sizeof(*w->listeners));
	if (!w->listeners)
		goto nomem;
	for (i = 0; i < cfg->n_listeners; i++)
		w->listeners[i].io.fd = -1;
	w->loop = sluice_loop_new();
	if (!w->loop)
		goto nomem;
	w->stop_io.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->stop_io.fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return -1;
	}
	w->stop_io.fn = worker_on_stop;
	if (sluice_loop_add(w->loop, &w->stop_io, EPOLLIN) < 0) {
		snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
		return -1;
	}
	for (i = 0; i < cfg->n_listeners; i++) {
		struct sluice_listener *l = &w->listeners[i];

		l->w = w;
		l->cfg = &cfg->listeners[i];
		l->io.fn = listener_on_accept;
		sluice_timer_init(&l->retry, listener_on_retry);
		l->io.fd = listener_socket(l->cfg, err, errlen);
		if (l->io.fd < 0)
			return -1;
	}
	if (p->sockmap && sluice_sockmap_worker_init(p->sockmap, w) != SLUICE_OK) {
		snprintf(err, errlen, "sockmap ring buffer for worker %u: %s", id, strerror(errno));
		return -1;
	}
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

/* ---- the proxy ---- */

static bool config_has_mtls(const struct sluice_config *cfg)
{
	unsigned i;

	for (i = 0; i < cfg->n_listeners; i++)
		if (cfg->listeners[i].mode == SLUICE_MODE_MTLS)
			return true;
	return false;
}

static bool config_has_sockmap(const struct sluice_config *cfg)
{
	unsigned i;

	for (i = 0; i < cfg->n_listeners; i++)
		if (cfg->listeners[i].datapath == SLUICE_DATAPATH_SOCKMAP)
			return true;
	return false;
}

void sluice_proxy_destroy(struct sluice_proxy *p)
{
	unsigned i;

	if (!p)
		return;
	if (p->workers) {
		for (i = 0; i < p->n_workers; i++)
			worker_destroy(&p->workers[i], p->cfg->n_listeners);
		free(p->workers);
	}
	if (p->pools) {
		for (i = 0; i < p->cfg->n_upstreams; i++)
			sluice_pool_destroy(&p->pools[i]);
		free(p->pools);
	}
	sluice_limits_free(p->limits);
	sluice_sockmap_close(p->sockmap);
	/* Last: the limits above give their slots back to it. */
	sluice_bpf_close(p->bpf);
	SSL_CTX_free(p->ssl_ctx);
	sluice_config_free(p->cfg);
	free(p);
}

int sluice_proxy_create(const char *config_path, struct sluice_proxy **out, char *err, size_t errlen)
{
	struct sluice_proxy *p = calloc(1, sizeof(*p));
	const struct sluice_config *cfg;
	unsigned i;

	*out = NULL;
	if (!p) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (sluice_config_load(config_path, &p->cfg, err, errlen) < 0)
		goto fail;
	cfg = p->cfg;
	sluice_log_setup(cfg->log_level, cfg->log_format);

	if (config_has_mtls(cfg)) {
		char why[160];

		p->ssl_ctx = sluice_tls_server_ctx(&cfg->tls, sluice_conn_verify_cb, sluice_conn_resume_admit,
		                                   err, errlen);
		if (!p->ssl_ctx)
			goto fail;
		if (cfg->tls.ktls != SLUICE_KTLS_OFF) {
			if (sluice_ktls_available(why, sizeof(why))) {
				if (sluice_ktls_init() < 0) {
					snprintf(err, errlen, "kTLS: cannot allocate SSL ex_data index");
					goto fail;
				}
				sluice_ktls_ctx_enable(p->ssl_ctx);
				p->ktls = true;
				p->ktls_rekey = sluice_ktls_can_rekey();
			} else if (cfg->tls.ktls == SLUICE_KTLS_REQUIRE) {
				snprintf(err, errlen, "tls.ktls is require but kTLS is unavailable: %s", why);
				goto fail;
			} else {
				snprintf(p->ktls_why, sizeof(p->ktls_why), "%s", why);
			}
		}
	}
	p->limits = sluice_limits_new();
	p->pools = calloc(cfg->n_upstreams, sizeof(*p->pools));
	if (!p->limits || !p->pools) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (i = 0; i < cfg->n_upstreams; i++) {
		if (sluice_pool_init(&p->pools[i], &cfg->upstreams[i]) < 0) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
	}
	/* Before any socket exists: sockets belong to the cgroup of the
	 * process that made them, and the sockops program watches sluice's. */
	if (cfg->bpf.mode != SLUICE_BPF_OFF) {
		char why[sizeof(p->bpf_why)];

		if (sluice_bpf_open(cfg, cfg->bpf.pin_path, cfg->bpf.cgroup, &p->bpf, why, sizeof(why)) == 0) {
			sluice_limits_use_bpf(p->limits, p->bpf);
			for (i = 0; i < cfg->n_upstreams; i++)
				sluice_pool_use_bpf(&p->pools[i], p->bpf, i);
		} else if (cfg->bpf.mode == SLUICE_BPF_REQUIRE) {
			snprintf(err, errlen, "bpf.mode is require but BPF is unavailable: %s", why);
			goto fail;
		} else {
			snprintf(p->bpf_why, sizeof(p->bpf_why), "%s", why);
		}
	}
	/* datapath: sockmap needs the BPF object; without it those listeners
	 * splice (one warning at start-up) or, under bpf.mode require, sluice
	 * does not start. */
	if (config_has_sockmap(cfg)) {
		char why[sizeof(p->sockmap_why)];

		if (!p->bpf)
			snprintf(why, sizeof(why), "BPF unavailable%s%.200s", p->bpf_why[0] ? ": " : "", p->bpf_why);
		if (!p->bpf || sluice_sockmap_open(p->bpf, cfg, &p->sockmap, why, sizeof(why)) != SLUICE_OK) {
			if (cfg->bpf.mode == SLUICE_BPF_REQUIRE) {
				snprintf(err, errlen, "datapath sockmap with bpf.mode require, but: %s", why);
				goto fail;
			}
			snprintf(p->sockmap_why, sizeof(p->sockmap_why), "%s", why);
		}
	}
	{
		struct rlimit rl;

		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < INT_MAX)
			p->fd_limit = (int)rl.rlim_cur;
	}
	p->n_workers = cfg->workers;
	p->workers = calloc(p->n_workers, sizeof(*p->workers));
	if (!p->workers) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (i = 0; i < p->n_workers; i++)
		p->workers[i].stop_io.fd = -1;
	for (i = 0; i < p->n_workers; i++)
		if (worker_init(p, &p->workers[i], i, err, errlen) < 0)
			goto fail;
	*out = p;
	return 0;
fail:
	sluice_proxy_destroy(p);
	return -1;
}

static void log_startup(const struct sluice_proxy *p)
{
	const struct sluice_config *cfg = p->cfg;
	unsigned i;

	sluice_log(SLUICE_LOG_INFO, "start",
	           "sluice %s: config %s: %u listeners, %u upstream pools, %u client entries, %u workers",
	           SLUICE_VERSION, cfg->path, cfg->n_listeners, cfg->n_upstreams, cfg->n_clients,
	           p->n_workers);
	for (i = 0; i < cfg->n_listeners; i++) {
		const struct sluice_listener_cfg *l = &cfg->listeners[i];

		sluice_log(SLUICE_LOG_INFO, "listen", "listener %s on %s mode %s -> upstream %s (datapath %s)",
		           l->name, l->listen, l->mode == SLUICE_MODE_MTLS ? "mtls" : "tcp",
		           cfg->upstreams[l->upstream].name,
		           l->mode == SLUICE_MODE_TCP ? (l->datapath == SLUICE_DATAPATH_SOCKMAP && p->sockmap ? "sockmap" : "splice")
		           : p->ktls ? "ktls" : "userspace");
	}
	if (p->sockmap_why[0])
		sluice_log(SLUICE_LOG_WARN, "sockmap", "datapath sockmap unavailable: %s; those listeners use splice",
		           p->sockmap_why);
	else if (p->sockmap)
		sluice_log(SLUICE_LOG_INFO, "sockmap",
		           "datapath sockmap: backlog caps %llu bytes per direction (source paused), %llu (reset), "
		           "%llu in all", (unsigned long long)cfg->bpf.sockmap_pair_cap,
		           (unsigned long long)cfg->bpf.sockmap_hard_cap, (unsigned long long)cfg->bpf.sockmap_global_cap);
	/* Said once so operators know what the kernel is or is not doing. */
	if (p->ktls)
		sluice_log(SLUICE_LOG_INFO, "ktls",
		           "kTLS available: TLS 1.2 offloaded both ways by OpenSSL, TLS 1.3 receive key "
		           "installed by sluice; %s",
		           p->ktls_rekey ? "a client KeyUpdate rekeys the kernel (TlsRxRekeyOk in /proc/net/tls_stat)"
		                         : "a client KeyUpdate closes the connection (this kernel cannot rekey: "
		                           "no TlsRxRekeyOk in /proc/net/tls_stat)");
	else if (p->ssl_ctx && cfg->tls.ktls == SLUICE_KTLS_OFF)
		sluice_log(SLUICE_LOG_INFO, "ktls", "kTLS off by configuration: TLS records in userspace");
	else if (p->ssl_ctx)
		sluice_log(SLUICE_LOG_WARN, "ktls", "kTLS unavailable: %s; TLS records in userspace",
		           p->ktls_why);
	if (p->bpf)
		sluice_log(SLUICE_LOG_INFO, "bpf",
		           "BPF counters on: upstream and client connections counted by the kernel in "
		           "cgroup %s, maps pinned under %s",
		           sluice_bpf_cgroup_path(p->bpf), sluice_bpf_pin_path(p->bpf));
	else if (cfg->bpf.mode == SLUICE_BPF_OFF)
		sluice_log(SLUICE_LOG_INFO, "bpf", "BPF off by configuration: connection counters in atomics");
	else
		sluice_log(SLUICE_LOG_WARN, "bpf", "BPF unavailable: %s; connection counters in atomics",
		           p->bpf_why);
}

int sluice_proxy_run(struct sluice_proxy *p)
{
	sigset_t all, old;
	unsigned i, started = 0;
	int rc = 0;

	log_startup(p);
	/* Workers never take signals: the caller's thread handles them and
	 * calls sluice_proxy_stop(). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (i = 0; i < p->n_workers; i++) {
		if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
			sluice_log(SLUICE_LOG_ERROR, "start", "cannot start worker %u: %s", i, strerror(errno));
			rc = -1;
			break;
		}
		started++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0)
		sluice_proxy_stop(p);
	for (i = 0; i < started; i++) {
		void *ret = NULL;

		pthread_join(p->workers[i].thread, &ret);
		if (ret)
			rc = -1;
	}
	sluice_log(SLUICE_LOG_INFO, "stop", "all workers stopped");
	return rc;
}

void sluice_proxy_stop(struct sluice_proxy *p)
{
	uint64_t one = 1;
	unsigned i;

	atomic_store(&p->stopping, true);
	for (i = 0; i < p->n_workers; i++) {
		/* write(2) on an eventfd is async-signal-safe; EAGAIN only means
		 * the counter is already huge, i.e. stop was asked many times. */
		ssize_t n = write(p->workers[i].stop_io.fd, &one, sizeof(one));
		(void)n;
	}
}
