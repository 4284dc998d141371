/* tests/bpf/counters.c — the BPF counters against a real kernel.
 *
 *   counters run PIN        the whole scenario below; exit 0 when all passed
 *   counters hold PIN N     open N upstream and N client connections, print
 *                           "ready PID CGROUP" and wait to be killed
 *   counters restart PIN    open again after a killed holder: every counter
 *                           starts at zero (the script checks that the
 *                           holder's cgroup is gone)
 *
 * Run as root in a fresh network and mount namespace with bpffs mounted at
 * PIN's parent (tests/bpf/counters.sh does that).  It loads the object
 * through src/bpf.c exactly as sluice does, so sockets made after
 * sluice_bpf_open() are in sluice's cgroup; servers are forked before, so
 * theirs are not (as real upstreams are not).
 *
 * At every checkpoint each upstream server's active count (mmap read, and
 * bpftool's JSON dump of the pinned map) equals the connections this
 * process holds to it and the sockets `ss` sees towards it; each client
 * slot's count equals the accepted sockets tagged with it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf.h"
#include "log.h"

#define N_SERVERS 4          /* 3 live (two v4, one v6) + 1 refusing */
#define MAX_HELD  1024

static int failures, checks;

#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		checks++;                                                             \
		if (!(cond)) {                                                        \
			failures++;                                                   \
			printf("FAIL %s:%d: ", __func__, __LINE__);                   \
			printf(__VA_ARGS__);                                          \
			printf("\n");                                                 \
		}                                                                     \
	} while (0)

static const char *pin;
static struct sluice_bpf *bpf;
static struct sluice_server_cfg servers[N_SERVERS];
static struct sluice_server_cfg servers2[1];
static struct sluice_upstream_cfg pools[2];
static struct sluice_config cfg;
static uint16_t server_port[N_SERVERS];

/* What this process holds. */
struct up_conn { int fd; int server; };
struct cl_conn { int fd, peer; uint32_t slot; };
static struct up_conn ups[MAX_HELD];
static int n_ups;
static struct cl_conn cls[MAX_HELD];
static int n_cls;
static int listen_fd;
static uint16_t listen_port;

static pid_t servers_pid;   /* killed on every exit of ours */

static void die(const char *what)
{
	perror(what);
	if (servers_pid > 0)
		kill(servers_pid, SIGKILL);
	exit(2);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static int listen_on(int family, const char *host, uint16_t *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		in->sin_family = AF_INET;
		inet_pton(AF_INET, host, &in->sin_addr);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, host, &in6->sin6_addr);
		len = sizeof(*in6);
	}
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 1024) < 0)
		die("bind/listen");
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		die("getsockname");
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
	                                : ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

static void set_server(struct sluice_server_cfg *s, int family, const char *host, uint16_t port)
{
	char buf[80];
	const char *why;

	snprintf(buf, sizeof(buf), family == AF_INET ? "%s:%u" : "[%s]:%u", host, port);
	s->address = strdup(buf);
	s->weight = 1;
	if (sluice_addr_parse(buf, &s->sa, &why) < 0) {
		fprintf(stderr, "parse %s: %s\n", buf, why);
		exit(2);
	}
}

/* Upstream servers in a child that stays in the original cgroup.  Each
 * closes a connection when it reads EOF or an error, and closes it first
 * when it reads 'q' (a server-initiated close). */
static pid_t start_servers(void)
{
	static const struct { int family; const char *host; } where[3] = {
		{ AF_INET, "127.0.0.1" }, { AF_INET, "127.0.0.2" }, { AF_INET6, "::1" },
	};
	int fds[3], i, ep;
	uint16_t refused;
	pid_t pid;

	for (i = 0; i < 3; i++) {
		fds[i] = listen_on(where[i].family, where[i].host, &server_port[i]);
		set_server(&servers[i], where[i].family, where[i].host, server_port[i]);
	}
	/* A port nothing listens on: connects to it are refused. */
	close(listen_on(AF_INET, "127.0.0.1", &refused));
	server_port[3] = refused;
	set_server(&servers[3], AF_INET, "127.0.0.1", refused);

	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid > 0) {
		for (i = 0; i < 3; i++)
			close(fds[i]);
		servers_pid = pid;
		return pid;
	}
	/* Not the test's output: a killed parent must not leave us holding
	 * the pipe a caller reads to EOF. */
	i = open("/dev/null", O_WRONLY);
	dup2(i, 1);
	dup2(i, 2);
	close(i);
	ep = epoll_create1(0);
	for (i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)(1000000 + fds[i]) };

		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, -1);

		for (i = 0; i < n; i++) {
			if (evs[i].data.u64 >= 1000000) {
				int c = accept4((int)(evs[i].data.u64 - 1000000), NULL, NULL, SOCK_CLOEXEC);
				struct epoll_event ev = { .events = EPOLLIN };

				if (c < 0)
					continue;
				ev.data.u64 = (uint64_t)c;
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
			} else {
				int c = (int)evs[i].data.u64;
				char buf[256];
				ssize_t r = read(c, buf, sizeof(buf));

				if (r <= 0 || memchr(buf, 'q', (size_t)r)) {
					epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL);
					close(c);
				}
			}
		}
	}
}

static void setup_config(void)
{
	pools[0].name = "main";
	pools[0].servers = servers;
	pools[0].n_servers = N_SERVERS;
	/* A second pool naming main's first server again: one count. */
	servers2[0] = servers[0];
	pools[1].name = "alias";
	pools[1].servers = servers2;
	pools[1].n_servers = 1;
	cfg.upstreams = pools;
	cfg.n_upstreams = 2;
	cfg.path = "counters-test";
}

static void open_bpf(void)
{
	char err[256];

	if (sluice_bpf_open(&cfg, pin, NULL, &bpf, err, sizeof(err)) < 0) {
		fprintf(stderr, "sluice_bpf_open: %s\n", err);
		if (servers_pid > 0)
			kill(servers_pid, SIGKILL);
		exit(2);
	}
}

/* ---- connections ---- */

static int connect_to(int server)
{
	const struct sluice_sockaddr *sa = &servers[server].sa;
	int fd = socket(sa->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("socket");
	if (connect(fd, (const struct sockaddr *)&sa->ss, sa->len) < 0) {
		if (errno != ECONNREFUSED)
			die("connect");
		close(fd);
		return -1;
	}
	return fd;
}

static void up_open(int server)
{
	int fd = connect_to(server);

	if (fd < 0)
		return;
	if (n_ups == MAX_HELD) {
		close(fd);
		return;
	}
	ups[n_ups].fd = fd;
	ups[n_ups].server = server;
	n_ups++;
}

static void rst_close(int fd)
{
	struct linger lg = { 1, 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* How: 0 our FIN, 1 our RST, 2 the server closes first, then we do. */
static void up_close(int i, int how)
{
	int fd = ups[i].fd;

	if (how == 1) {
		rst_close(fd);
	} else if (how == 2) {
		char b;

		if (write(fd, "q", 1) != 1)
			die("write");
		(void)read(fd, &b, 1);  /* 0: the server's FIN arrived */
		close(fd);
	} else {
		close(fd);
	}
	ups[i] = ups[--n_ups];
}

/* A client connects to our listener and we accept: the pair's two ends. */
static int accept_pair(int *peer)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(listen_port) };
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), a;

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("client connect");
	a = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (a < 0)
		die("accept");
	*peer = c;
	return a;
}

static int cl_open(uint32_t slot, uint32_t max_conns)
{
	int peer, a = accept_pair(&peer), rc;

	rc = sluice_bpf_client_tag(bpf, a, slot, max_conns);
	if (rc != SLUICE_OK || n_cls == MAX_HELD) {
		close(a);
		close(peer);
		return rc;
	}
	cls[n_cls].fd = a;
	cls[n_cls].peer = peer;
	cls[n_cls].slot = slot;
	n_cls++;
	return rc;
}

/* How: 0 we close first, 1 the client closes first, 2 we reset,
 * 3 the client resets. */
static void cl_close(int i, int how)
{
	switch (how) {
	case 0: close(cls[i].fd); close(cls[i].peer); break;
	case 1: close(cls[i].peer); close(cls[i].fd); break;
	case 2: rst_close(cls[i].fd); close(cls[i].peer); break;
	default: rst_close(cls[i].peer); close(cls[i].fd); break;
	}
	cls[i] = cls[--n_cls];
}

/* ---- what the kernel and ss say ---- */

static unsigned held_to(int server)
{
	unsigned n = 0;
	int i;

	for (i = 0; i < n_ups; i++)
		n += ups[i].server == server;
	return n;
}

static unsigned held_on(uint32_t slot)
{
	unsigned n = 0;
	int i;

	for (i = 0; i < n_cls; i++)
		n += cls[i].slot == slot;
	return n;
}

/* Sockets ss sees with the given filter, not yet at TIME-WAIT. */
static int ss_count(const char *filter)
{
	char cmd[512], line[512];
	FILE *f;
	int n = 0;

	snprintf(cmd, sizeof(cmd),
	         "ss -Htan state syn-sent state established state fin-wait-1 state close-wait "
	         "state last-ack state closing '%s' 2>/dev/null", filter);
	f = popen(cmd, "r");
	if (!f)
		die("popen ss");
	while (fgets(line, sizeof(line), f))
		n++;
	pclose(f);
	return n;
}

/* The operator's view: bpftool's JSON dump of the pinned upstream_conns,
 * one "port opened closed" line per configured server. */
static int bpftool_active(uint16_t port, uint64_t *active)
{
	char cmd[1024], line[256];
	FILE *f;
	int found = 0;

	snprintf(cmd, sizeof(cmd),
	         "bpftool -j map dump pinned %s/upstream_conns | jq -r '.[] | .formatted.value "
	         "| select(.server.port == %u) | \"\\(.opened) \\(.closed)\"'", pin, port);
	f = popen(cmd, "r");
	if (!f)
		die("popen bpftool");
	while (fgets(line, sizeof(line), f)) {
		unsigned long long o, c;

		if (sscanf(line, "%llu %llu", &o, &c) == 2) {
			*active = o - c;
			found++;
		}
	}
	pclose(f);
	return found == 1 ? 0 : -1;
}

static bool counts_agree(bool report)
{
	bool ok = true;
	uint32_t slot;
	int s;

	for (s = 0; s < N_SERVERS; s++) {
		char filter[64];
		uint32_t k = sluice_bpf_upstream_active(bpf, 0, (unsigned)s);
		int seen;

		snprintf(filter, sizeof(filter), "dport = :%u", server_port[s]);
		seen = ss_count(filter);
		if (k != held_to(s) || seen != (int)held_to(s)) {
			ok = false;
			if (report)
				CHECK(0, "server %d (port %u): kernel %u, held %u, ss %d", s, server_port[s], k,
				      held_to(s), seen);
		}
	}
	for (slot = 0; slot < 3; slot++) {
		uint32_t k = sluice_bpf_client_active(bpf, slot);

		if (k != held_on(slot)) {
			ok = false;
			if (report)
				CHECK(0, "client slot %u: kernel %u, held %u", slot, k, held_on(slot));
		}
	}
	{
		char filter[64];
		int seen;

		snprintf(filter, sizeof(filter), "sport = :%u", listen_port);
		seen = ss_count(filter);
		if (seen != n_cls) {
			ok = false;
			if (report)
				CHECK(0, "client sockets: ss %d, held %d", seen, n_cls);
		}
	}
	return ok;
}

/* Closes finish in softirq and the FIN exchange takes a moment: poll. */
static void checkpoint(const char *label)
{
	uint64_t until = now_ms() + 5000;
	int s;

	while (!counts_agree(false) && now_ms() < until)
		sleep_ms(20);
	checks++;
	if (!counts_agree(true)) {
		printf("FAIL checkpoint %s\n", label);
		failures++;
		return;
	}
	for (s = 0; s < N_SERVERS; s++) {
		uint64_t a = ~0ULL;

		CHECK(bpftool_active(server_port[s], &a) == 0 && a == held_to(s),
		      "bpftool: server port %u active %llu, held %u", server_port[s], (unsigned long long)a,
		      held_to(s));
	}
	CHECK(sluice_bpf_upstream_active(bpf, 1, 0) == sluice_bpf_upstream_active(bpf, 0, 0),
	      "pool alias shares server 0's count");
	printf("ok checkpoint %s: upstream %d, clients %d\n", label, n_ups, n_cls);
}

/* ---- scenarios ---- */

static void random_round(unsigned opens, unsigned closes)
{
	unsigned i;

	for (i = 0; i < opens; i++) {
		if (rand() % 3 == 0)
			cl_open((uint32_t)(rand() % 3), 0);
		else
			up_open(rand() % N_SERVERS);
	}
	for (i = 0; i < closes; i++) {
		if (n_cls && (rand() % 3 == 0 || !n_ups))
			cl_close(rand() % n_cls, rand() % 4);
		else if (n_ups)
			up_close(rand() % n_ups, rand() % 3);
	}
}

static void test_refused_counts_zero(void)
{
	struct sluice_bpf_upstream u;

	CHECK(sluice_bpf_upstream_read(bpf, 0, 3, &u) == 0, "read refused server");
	CHECK(u.opened > 0 && u.opened == u.closed && u.established == 0,
	      "refused server: opened %llu established %llu closed %llu", (unsigned long long)u.opened,
	      (unsigned long long)u.established, (unsigned long long)u.closed);
}

static void test_max_conns(void)
{
	uint32_t slot;
	int i, base = n_cls;

	CHECK(sluice_bpf_client_get(bpf, 7, "CN=limited", &slot) == SLUICE_OK, "slot");
	for (i = 0; i < 3; i++)
		CHECK(cl_open(slot, 3) == SLUICE_OK, "admission %d of 3", i + 1);
	CHECK(cl_open(slot, 3) == SLUICE_DECLINED, "4th refused at max_conns 3");
	CHECK(sluice_bpf_client_active(bpf, slot) == 3, "active 3, got %u", sluice_bpf_client_active(bpf, slot));
	CHECK(sluice_bpf_client_put(bpf, slot) == SLUICE_AGAIN, "slot busy while active");
	for (i = n_cls - 1; i >= base; i--)
		if (cls[i].slot == slot) {
			cl_close(i, 1);
			break;
		}
	for (i = 0; i < 250 && sluice_bpf_client_active(bpf, slot) != 2; i++)
		sleep_ms(20);
	CHECK(cl_open(slot, 3) == SLUICE_OK, "admitted again after a close");
	for (i = n_cls - 1; i >= 0; i--)
		if (cls[i].slot == slot)
			cl_close(i, 2);
	for (i = 0; i < 250 && sluice_bpf_client_active(bpf, slot) != 0; i++)
		sleep_ms(20);
	CHECK(sluice_bpf_client_put(bpf, slot) == SLUICE_OK, "slot returned at active 0");
	printf("ok max_conns\n");
}

/* The client resets before sluice admits it: the tag must fail, and the
 * counters must not move (an open whose close already went by). */
static void test_tag_after_close(void)
{
	int peer, a = accept_pair(&peer), rc, i;
	uint32_t before = sluice_bpf_client_active(bpf, 0);
	char b;

	rst_close(peer);
	for (i = 0; i < 100 && read(a, &b, 1) != -1; i++)
		sleep_ms(10);
	rc = sluice_bpf_client_tag(bpf, a, 0, 0);
	CHECK(rc == SLUICE_ERR && errno == EEXIST, "tag of a reset socket: rc %d errno %d", rc, errno);
	CHECK(sluice_bpf_client_active(bpf, 0) == before, "active unchanged");
	close(a);

	/* Tagging twice: the second fails, and counts nothing. */
	a = accept_pair(&peer);
	CHECK(sluice_bpf_client_tag(bpf, a, 1, 0) == SLUICE_OK, "first tag");
	rc = sluice_bpf_client_tag(bpf, a, 1, 0);
	CHECK(rc == SLUICE_ERR && errno == EEXIST, "second tag: rc %d errno %d", rc, errno);
	cls[n_cls].fd = a;
	cls[n_cls].peer = peer;
	cls[n_cls].slot = 1;
	n_cls++;
	printf("ok tag after close / twice\n");
}

static void test_datapath_account(void)
{
	struct sluice_bpf_dp_stats st;

	CHECK(sluice_bpf_account(bpf, SLUICE_BPF_DP_SPLICE, 100, 200) == SLUICE_OK, "account");
	CHECK(sluice_bpf_account(bpf, SLUICE_BPF_DP_SPLICE, 1, 2) == SLUICE_OK, "account");
	CHECK(sluice_bpf_account(bpf, SLUICE_BPF_DP_MAX, 1, 2) == SLUICE_ERR, "bad datapath refused");
	CHECK(sluice_bpf_datapath_read(bpf, SLUICE_BPF_DP_SPLICE, &st) == SLUICE_OK, "read");
	CHECK(st.conns == 2 && st.bytes_in == 101 && st.bytes_out == 202, "splice totals %llu %llu %llu",
	      (unsigned long long)st.conns, (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out);
	printf("ok datapath totals\n");
}

/* A child of ours (same cgroup, same maps) holds connections and is
 * killed with -9: the kernel counts their closes. */
static void test_child_killed(void)
{
	int pfd[2], i;
	pid_t pid;
	char c;

	if (pipe(pfd) < 0)
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(pfd[0]);
		for (i = 0; i < 30; i++) {
			up_open(i % 3);
			cl_open((uint32_t)(i % 3), 0);
		}
		if (write(pfd[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pfd[1]);
	if (read(pfd[0], &c, 1) != 1)
		die("child ready");
	CHECK(sluice_bpf_upstream_active(bpf, 0, 0) >= held_to(0) + 10, "child's connections counted: %u",
	      sluice_bpf_upstream_active(bpf, 0, 0));
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(pfd[0]);
	checkpoint("after kill -9 of a child holding 30+30 connections");
}

static int cmd_run(void)
{
	pid_t srv;
	uint32_t slot;
	int r;

	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	srv = start_servers();
	setup_config();
	open_bpf();
	/* After open: the listener is in sluice's cgroup, as sluice's are. */
	listen_fd = listen_on(AF_INET, "127.0.0.1", &listen_port);
	for (r = 0; r < 3; r++) {
		CHECK(sluice_bpf_client_get(bpf, (unsigned)r, r == 0 ? "CN=alice" : r == 1 ? "CN=bob" : "10.0.0.1",
		                            &slot) == SLUICE_OK && slot == (uint32_t)r, "slot %d", r);
	}
	printf("cgroup %s\n", sluice_bpf_cgroup_path(bpf));

	checkpoint("start");
	for (r = 0; r < 6; r++) {
		char label[32];

		random_round(80, 50);
		snprintf(label, sizeof(label), "round %d", r + 1);
		checkpoint(label);
	}
	test_refused_counts_zero();
	test_max_conns();
	test_tag_after_close();
	checkpoint("after tag tests");
	test_child_killed();
	test_datapath_account();
	while (n_ups || n_cls)
		random_round(0, 10);
	checkpoint("all closed");

	sluice_bpf_close(bpf);
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
	printf("%s: %d checks, %d failed\n", failures ? "FAIL" : "PASS", checks, failures);
	return failures ? 1 : 0;
}

static int cmd_hold(int n)
{
	uint32_t slot;
	pid_t srv;
	int i;

	srv = start_servers();
	setup_config();
	open_bpf();
	listen_fd = listen_on(AF_INET, "127.0.0.1", &listen_port);
	if (sluice_bpf_client_get(bpf, 0, "CN=holder", &slot) != SLUICE_OK)
		die("client slot");
	for (i = 0; i < n; i++) {
		up_open(i % 3);
		cl_open(slot, 0);
	}
	printf("ready %d %d %s\n", (int)getpid(), (int)srv, sluice_bpf_cgroup_path(bpf));
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

static int cmd_restart(void)
{
	struct sluice_bpf_upstream u;
	struct stat st;
	char path[512];
	pid_t srv;
	int s;

	srv = start_servers();
	setup_config();
	open_bpf();
	for (s = 0; s < N_SERVERS; s++) {
		CHECK(sluice_bpf_upstream_read(bpf, 0, (unsigned)s, &u) == 0 && u.opened == 0 && u.closed == 0,
		      "fresh counters for server %d", s);
	}
	CHECK(sluice_bpf_client_active(bpf, 0) == 0, "fresh client counters");
	snprintf(path, sizeof(path), "%s/upstream_conns", pin);
	CHECK(stat(path, &st) == 0, "pinned again");
	sluice_bpf_close(bpf);
	CHECK(stat(path, &st) < 0 && errno == ENOENT, "unpinned on close");
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
	printf("%s: %d checks, %d failed\n", failures ? "FAIL" : "PASS", checks, failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	sluice_log_setup(SLUICE_LOG_WARN, SLUICE_LOG_TEXT);
	if (argc < 3) {
		fprintf(stderr, "usage: %s run|hold N|restart PIN\n", argv[0]);
		return 2;
	}
	pin = argv[2];
	if (strcmp(argv[1], "run") == 0)
		return cmd_run();
	if (strcmp(argv[1], "hold") == 0 && argc > 3)
		return cmd_hold(atoi(argv[3]));
	if (strcmp(argv[1], "restart") == 0)
		return cmd_restart();
	fprintf(stderr, "usage: %s run|hold PIN N|restart PIN\n", argv[0]);
	return 2;
}
