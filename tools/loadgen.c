/* loadgen — load generators and a light upstream for tools/bench.
 *
 *   loadgen server --listen ADDR --mode sink|source|echo
 *   loadgen bulk   --connect ADDR [TLS] --dir up|down --conns N --seconds S
 *   loadgen hs     --connect ADDR  TLS  --conns N --seconds S [--resume] [--max N]
 *   loadgen lat    --connect ADDR [TLS] --conns N --rate R --seconds S [--size B]
 *   loadgen idle   --connect ADDR [TLS] --conns N --hold S [--parallel P]
 *
 *   TLS = --tls --ca F --cert F --key F [--tls-version 1.2|1.3]
 *
 * Every command prints one JSON line on stdout and exits 0 on success.
 * Every loop is bounded by --seconds/--hold (and hs by --max), so a stuck
 * proxy can never hang the benchmark: sockets carry SO_RCVTIMEO/SO_SNDTIMEO.
 *
 * Why a separate upstream (`server`) instead of tools/echo: echo --sink hashes
 * every byte (SHA-256) and echo --source generates a PRNG stream; both are
 * checks the tests need, but here they would spend the load core's cycles and
 * cap throughput below what the proxies can do.  This server only copies a
 * static buffer or discards, so core 1 stays the cheap side.
 *
 * Why blocking threads on the client side: one thread per connection keeps
 * each loop obvious; with at most 8 busy connections (and `idle` doing its
 * handshakes from a few threads, then only holding fds) the thread cost is
 * irrelevant next to the crypto. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "toolkit.h"

#define CHUNK (64 * 1024)

static struct {
	const char *connect, *listen, *mode, *dir, *ca, *cert, *key;
	bool tls, resume;
	int tls_version;            /* 0 = any of 1.2/1.3 */
	int conns, parallel, size;
	double seconds, hold, rate;
	long max;
} o = { .conns = 1, .parallel = 4, .size = 64, .seconds = 5, .hold = 5, .rate = 1000,
	.max = 10000000 };

static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static SSL_CTX *g_ctx;
static double g_t0, g_deadline;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noreturn)) static void die(const char *msg)
{
	fprintf(stderr, "loadgen: %s: %s\n", msg, errno ? strerror(errno) : "");
	ERR_print_errors_fp(stderr);
	exit(1);
}

/* ---- client side -------------------------------------------------------- */

static void client_ctx(void)
{
	if (!o.tls)
		return;
	g_ctx = SSL_CTX_new(TLS_client_method());
	if (!g_ctx)
		die("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
	if (o.tls_version == 12)
		SSL_CTX_set_max_proto_version(g_ctx, TLS1_2_VERSION);
	else if (o.tls_version == 13)
		SSL_CTX_set_min_proto_version(g_ctx, TLS1_3_VERSION);
	/* The client verifies the server too: a real mTLS client would. */
	if (!o.ca || SSL_CTX_load_verify_locations(g_ctx, o.ca, NULL) != 1)
		die("--ca");
	SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
	if (!o.cert || SSL_CTX_use_certificate_chain_file(g_ctx, o.cert) != 1 ||
	    !o.key || SSL_CTX_use_PrivateKey_file(g_ctx, o.key, SSL_FILETYPE_PEM) != 1)
		die("--cert/--key");
	/* Keeps `idle` from measuring its own buffers; harmless elsewhere. */
	SSL_CTX_set_mode(g_ctx, SSL_MODE_RELEASE_BUFFERS);
	/* Resumption is driven by hand (SSL_set_session) in `hs --resume`. */
	SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
}

static void set_timeouts(int fd, double s)
{
	struct timeval tv = { .tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - (time_t)s) * 1e6) };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

struct cconn {
	int fd;
	SSL *ssl;
};

/* Connect (and handshake).  0 on success. */
static int cconn_open(struct cconn *c, SSL_SESSION *sess, bool nodelay)
{
	c->ssl = NULL;
	c->fd = socket(g_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	set_timeouts(c->fd, 5);
	if (nodelay) {
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (connect(c->fd, (struct sockaddr *)&g_addr, g_addrlen) < 0)
		goto fail;
	if (!o.tls)
		return 0;
	c->ssl = SSL_new(g_ctx);
	if (!c->ssl)
		goto fail;
	SSL_set_fd(c->ssl, c->fd);
	if (sess)
		SSL_set_session(c->ssl, sess);
	if (SSL_connect(c->ssl) != 1)
		goto fail;
	return 0;
fail:
	if (c->ssl)
		SSL_free(c->ssl);
	c->ssl = NULL;
	close(c->fd);
	c->fd = -1;
	return -1;
}

static void cconn_close(struct cconn *c, bool quiet)
{
	if (c->ssl) {
		if (!quiet)
			SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->ssl = NULL;
}

static ssize_t cwrite(struct cconn *c, const void *b, size_t n)
{
	if (c->ssl) {
		int r = SSL_write(c->ssl, b, (int)n);
		return r > 0 ? r : -1;
	}
	return send(c->fd, b, n, MSG_NOSIGNAL);
}

static ssize_t cread(struct cconn *c, void *b, size_t n)
{
	if (c->ssl) {
		int r = SSL_read(c->ssl, b, (int)n);
		return r > 0 ? r : -1;
	}
	ssize_t r = recv(c->fd, b, n, 0);
	return r > 0 ? r : -1;
}

/* ---- bulk --------------------------------------------------------------- */

static atomic_ullong g_bytes;
static atomic_int g_errors;

static void *bulk_thread(void *arg)
{
	(void)arg;
	static _Thread_local unsigned char buf[CHUNK];
	struct cconn c;
	if (cconn_open(&c, NULL, false) < 0) {
		atomic_fetch_add(&g_errors, 1);
		return NULL;
	}
	bool up = strcmp(o.dir, "up") == 0;
	/* 16 KiB writes: one full TLS record each, what a TLS app typically does. */
	size_t n = o.tls ? 16384 : sizeof(buf);
	unsigned long long local = 0;
	while (now() < g_deadline) {
		ssize_t r = up ? cwrite(&c, buf, n) : cread(&c, buf, sizeof(buf));
		if (r <= 0) {
			atomic_fetch_add(&g_errors, 1);
			break;
		}
		local += (unsigned long long)r;
	}
	atomic_fetch_add(&g_bytes, local);
	/* Abortive close: the upstream source would otherwise keep sending. */
	cconn_close(&c, true);
	return NULL;
}

static int cmd_bulk(void)
{
	pthread_t th[256];
	if (o.conns < 1 || o.conns > 256)
		die("--conns 1..256");
	g_t0 = now();
	g_deadline = g_t0 + o.seconds;
	for (int i = 0; i < o.conns; i++)
		pthread_create(&th[i], NULL, bulk_thread, NULL);
	for (int i = 0; i < o.conns; i++)
		pthread_join(th[i], NULL);
	double el = now() - g_t0;
	unsigned long long b = atomic_load(&g_bytes);
	printf("{\"bytes\":%llu,\"seconds\":%.4f,\"MBps\":%.1f,\"errors\":%d}\n", b, el,
	       (double)b / el / 1e6, atomic_load(&g_errors));
	return atomic_load(&g_errors) && b == 0 ? 1 : 0;
}

/* ---- hs: new connections per second ------------------------------------- */

static atomic_long g_hs, g_resumed, g_budget;

static void *hs_thread(void *arg)
{
	(void)arg;
	SSL_SESSION *sess = NULL;
	unsigned char b = 'x';
	while (now() < g_deadline && atomic_fetch_sub(&g_budget, 1) > 0) {
		struct cconn c;
		if (cconn_open(&c, o.resume ? sess : NULL, true) < 0) {
			atomic_fetch_add(&g_errors, 1);
			continue;
		}
		/* One byte each way: the proxy must reach the upstream, and under
		 * TLS 1.3 the tickets (sent after the handshake) get read. */
		if (cwrite(&c, &b, 1) != 1 || cread(&c, &b, 1) != 1) {
			atomic_fetch_add(&g_errors, 1);
			cconn_close(&c, true);
			continue;
		}
		atomic_fetch_add(&g_hs, 1);
		if (SSL_session_reused(c.ssl))
			atomic_fetch_add(&g_resumed, 1);
		if (o.resume) {
			SSL_SESSION *s = SSL_get1_session(c.ssl);
			if (s && SSL_SESSION_is_resumable(s)) {
				if (sess)
					SSL_SESSION_free(sess);
				sess = s;
			} else if (s) {
				SSL_SESSION_free(s);
			}
		}
		cconn_close(&c, false);
	}
	if (sess)
		SSL_SESSION_free(sess);
	return NULL;
}

static int cmd_hs(void)
{
	pthread_t th[256];
	if (!o.tls)
		die("hs needs --tls");
	if (o.conns < 1 || o.conns > 256)
		die("--conns 1..256");
	atomic_store(&g_budget, o.max);
	g_t0 = now();
	g_deadline = g_t0 + o.seconds;
	for (int i = 0; i < o.conns; i++)
		pthread_create(&th[i], NULL, hs_thread, NULL);
	for (int i = 0; i < o.conns; i++)
		pthread_join(th[i], NULL);
	double el = now() - g_t0;
	long n = atomic_load(&g_hs);
	printf("{\"handshakes\":%ld,\"resumed\":%ld,\"seconds\":%.4f,\"per_s\":%.1f,\"errors\":%d}\n",
	       n, atomic_load(&g_resumed), el, (double)n / el, atomic_load(&g_errors));
	return n == 0 ? 1 : 0;
}

/* ---- lat: request/response at a fixed rate ------------------------------ */

static double *g_lat;          /* microseconds, one slot per request */
static atomic_long g_nlat;
static long g_latcap;

static void sleep_until(double t)
{
	struct timespec ts = { .tv_sec = (time_t)t, .tv_nsec = (long)((t - (time_t)t) * 1e9) };
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static void *lat_thread(void *arg)
{
	long idx = (long)(intptr_t)arg;
	unsigned char buf[4096];
	struct cconn c;
	if (cconn_open(&c, NULL, true) < 0) {
		atomic_fetch_add(&g_errors, 1);
		return NULL;
	}
	memset(buf, 'q', sizeof(buf));
	double period = o.conns / o.rate;
	/* Stagger the connections so requests arrive evenly, not in bursts. */
	double next = now() + 0.05 + period * (double)idx / o.conns;
	while (next < g_deadline) {
		sleep_until(next);
		/* Measured from the scheduled send time, so a stall that delays
		 * later requests is counted too (no coordinated omission). */
		double t = next;
		if (cwrite(&c, buf, (size_t)o.size) != o.size)
			goto err;
		int got = 0;
		while (got < o.size) {
			ssize_t r = cread(&c, buf + got, (size_t)(o.size - got));
			if (r <= 0)
				goto err;
			got += (int)r;
		}
		long k = atomic_fetch_add(&g_nlat, 1);
		if (k < g_latcap)
			g_lat[k] = (now() - t) * 1e6;
		next += period;
		double n = now();
		if (next < n - 1.0) /* hopelessly behind: skip, but the latency already says so */
			next = n;
	}
	cconn_close(&c, false);
	return NULL;
err:
	atomic_fetch_add(&g_errors, 1);
	cconn_close(&c, true);
	return NULL;
}

static int dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int cmd_lat(void)
{
	pthread_t th[256];
	if (o.conns < 1 || o.conns > 256 || o.size < 1 || o.size > 4096 || o.rate <= 0)
		die("--conns 1..256, --size 1..4096, --rate > 0");
	g_latcap = (long)(o.rate * (o.seconds + 2)) + 1024;
	g_lat = calloc((size_t)g_latcap, sizeof(double));
	if (!g_lat)
		die("calloc");
	g_t0 = now();
	g_deadline = g_t0 + o.seconds;
	for (long i = 0; i < o.conns; i++)
		pthread_create(&th[i], NULL, lat_thread, (void *)(intptr_t)i);
	for (int i = 0; i < o.conns; i++)
		pthread_join(th[i], NULL);
	long n = atomic_load(&g_nlat);
	if (n > g_latcap)
		n = g_latcap;
	qsort(g_lat, (size_t)n, sizeof(double), dcmp);
#define PCT(p) (n ? g_lat[(long)((double)(n - 1) * (p))] : 0.0)
	printf("{\"requests\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
	       "\"errors\":%d}\n",
	       n, PCT(0.5), PCT(0.99), PCT(0.999), n ? g_lat[n - 1] : 0.0, atomic_load(&g_errors));
	return n == 0 ? 1 : 0;
}

/* ---- idle: hold N connections ------------------------------------------- */

static struct cconn *g_idle;
static atomic_int g_next_idle, g_open;

static void *idle_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int i = atomic_fetch_add(&g_next_idle, 1);
		if (i >= o.conns || now() > g_deadline)
			break;
		if (cconn_open(&g_idle[i], NULL, false) < 0) {
			atomic_fetch_add(&g_errors, 1);
			continue;
		}
		atomic_fetch_add(&g_open, 1);
	}
	return NULL;
}

static int cmd_idle(void)
{
	pthread_t th[64];
	if (o.conns < 1 || o.parallel < 1 || o.parallel > 64)
		die("--conns >= 1, --parallel 1..64");
	g_idle = calloc((size_t)o.conns, sizeof(*g_idle));
	for (int i = 0; i < o.conns; i++)
		g_idle[i].fd = -1;
	g_t0 = now();
	/* Opening is bounded by --seconds; holding by --hold. */
	g_deadline = g_t0 + o.seconds;
	for (int i = 0; i < o.parallel; i++)
		pthread_create(&th[i], NULL, idle_thread, NULL);
	for (int i = 0; i < o.parallel; i++)
		pthread_join(th[i], NULL);
	/* The driver waits for this line, then samples the proxy's memory. */
	printf("{\"open\":%d,\"errors\":%d,\"open_seconds\":%.2f}\n", atomic_load(&g_open),
	       atomic_load(&g_errors), now() - g_t0);
	fflush(stdout);
	/* Hold until --hold passes or stdin closes (the driver is done). */
	struct pollfd p = { .fd = 0, .events = POLLIN };
	double end = now() + o.hold;
	while (now() < end) {
		int r = poll(&p, 1, 200);
		if (r > 0) {
			char b[64];
			if (read(0, b, sizeof(b)) <= 0)
				break;
		}
	}
	for (int i = 0; i < o.conns; i++)
		cconn_close(&g_idle[i], true);
	return 0;
}

/* ---- server: the upstream ----------------------------------------------- */

static volatile sig_atomic_t g_stop;
static void on_sig(int s) { (void)s; g_stop = 1; }

static int cmd_server(void)
{
	static unsigned char buf[256 * 1024];
	int mode = strcmp(o.mode, "sink") == 0 ? 0 : strcmp(o.mode, "source") == 0 ? 1 :
	           strcmp(o.mode, "echo") == 0 ? 2 : -1;
	if (mode < 0 || !o.listen)
		die("server --listen ADDR --mode sink|source|echo");
	struct sockaddr_storage ss;
	socklen_t sl;
	if (tk_parse_addr(o.listen, &ss, &sl) < 0)
		die("bad --listen");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_sig);
	signal(SIGINT, on_sig);
	memset(buf, 's', sizeof(buf));
	int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&ss, sl) < 0 || listen(lfd, 4096) < 0)
		die("bind/listen");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = lfd };
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	printf("listening %s\n", o.listen);
	fflush(stdout);
	struct epoll_event evs[256];
	while (!g_stop) {
		int n = epoll_wait(ep, evs, 256, 500);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == lfd) {
				int c;
				while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					/* Level-triggered: a source connection stays writable. */
					struct epoll_event ce = { .events = EPOLLIN | EPOLLRDHUP |
					                          (mode == 1 ? EPOLLOUT : 0), .data.fd = c };
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
				}
				continue;
			}
			bool dead = (evs[i].events & (EPOLLERR | EPOLLHUP)) != 0;
			if (!dead && (evs[i].events & EPOLLIN)) {
				ssize_t r = recv(fd, buf, sizeof(buf), 0);
				if (r == 0 || (r < 0 && errno != EAGAIN))
					dead = true;
				else if (r > 0 && mode == 2 && send(fd, buf, (size_t)r, MSG_NOSIGNAL) != r)
					dead = true; /* small messages only: a short write is a failure */
			}
			if (!dead && mode == 1 && (evs[i].events & EPOLLOUT)) {
				ssize_t r = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
				if (r < 0 && errno != EAGAIN)
					dead = true;
			}
			if (dead) {
				epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
				close(fd);
			}
		}
	}
	return 0;
}

/* ---- main --------------------------------------------------------------- */

__attribute__((noreturn)) static void usage(void)
{
	fprintf(stderr, "usage: loadgen server|bulk|hs|lat|idle [options] (see tools/loadgen.c)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *cmd = argv[1];
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (i++, 1))
		if (strcmp(a, "--tls") == 0) o.tls = true;
		else if (strcmp(a, "--resume") == 0) o.resume = true;
		else if (ARG("--connect")) o.connect = v;
		else if (ARG("--listen")) o.listen = v;
		else if (ARG("--mode")) o.mode = v;
		else if (ARG("--dir")) o.dir = v;
		else if (ARG("--ca")) o.ca = v;
		else if (ARG("--cert")) o.cert = v;
		else if (ARG("--key")) o.key = v;
		else if (ARG("--tls-version")) o.tls_version = strcmp(v, "1.2") == 0 ? 12 : 13;
		else if (ARG("--conns")) o.conns = atoi(v);
		else if (ARG("--parallel")) o.parallel = atoi(v);
		else if (ARG("--size")) o.size = atoi(v);
		else if (ARG("--seconds")) o.seconds = atof(v);
		else if (ARG("--hold")) o.hold = atof(v);
		else if (ARG("--rate")) o.rate = atof(v);
		else if (ARG("--max")) o.max = atol(v);
		else {
			fprintf(stderr, "loadgen: unknown or incomplete option %s\n", a);
			usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);
	/* Idle runs hold thousands of sockets; take whatever the hard limit allows. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (strcmp(cmd, "server") == 0)
		return cmd_server();
	if (!o.connect || tk_parse_addr(o.connect, &g_addr, &g_addrlen) < 0)
		die("--connect ADDR");
	client_ctx();
	if (strcmp(cmd, "bulk") == 0) {
		if (!o.dir || (strcmp(o.dir, "up") && strcmp(o.dir, "down")))
			die("--dir up|down");
		return cmd_bulk();
	}
	if (strcmp(cmd, "hs") == 0)
		return cmd_hs();
	if (strcmp(cmd, "lat") == 0)
		return cmd_lat();
	if (strcmp(cmd, "idle") == 0)
		return cmd_idle();
	usage();
}
