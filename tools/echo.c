/* echo — the upstream test server for sluice's tests and demo.
 *
 *   echo --listen ADDR [--name NAME] [--prefix | --sink | --source BYTES [--seed S]]
 *
 * ADDR is "1.2.3.4:port" or "[::1]:port" (port 0 = any; the chosen address is
 * printed).  Plain TCP, one epoll loop, non-blocking sockets, any number of
 * connections, 64 KiB per buffer per connection.  Modes:
 *
 *   (default)  echo every byte back.  Reads stop while echo data is unsent
 *              (backpressure); on EOF from the peer the rest is written, then
 *              shutdown(SHUT_WR) and close.
 *   --prefix   like echo, but "[NAME] " is written before every line.
 *   --sink     read and discard; on EOF write "<bytes> <sha256hex>\n", close.
 *   --source N on connect send N bytes of the deterministic stream (seed from
 *              --seed, default 1; the same stream as client --send), then
 *              shutdown(SHUT_WR); read and discard until EOF, close.
 *
 * Prints "listening ADDR" on stdout once ready; exits 0 on SIGTERM/SIGINT.
 * With --verbose, one line per connection error on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "toolkit.h"

#define BUF_CAP   (64 * 1024)
#define MAX_NAME  200
#define RUN_SLICE 64        /* syscalls per connection per wakeup, for fairness */

enum mode { MODE_ECHO, MODE_PREFIX, MODE_SINK, MODE_SOURCE };

struct conn {
	int fd;
	uint32_t events;           /* epoll interest currently registered */
	bool rd_eof;               /* peer sent FIN */
	bool wr_shut;              /* we sent FIN */
	uint8_t *out;              /* bytes to send: out[out_off..out_len) */
	size_t out_off, out_len;
	uint8_t *in;               /* --prefix only: read, not yet transformed */
	size_t in_off, in_len;
	bool line_start;           /* --prefix: next byte starts a line */
	uint64_t total;            /* --sink: bytes read */
	EVP_MD_CTX *sha;           /* --sink */
	uint64_t remaining;        /* --source: bytes still to generate */
	struct tk_prng prng;       /* --source */
	struct conn *prev, *next;
};

static enum mode g_mode = MODE_ECHO;
static char g_prefix[MAX_NAME + 4];
static size_t g_prefix_len;
static uint64_t g_source_bytes;
static uint64_t g_seed = 1;
static bool g_verbose;
static int g_ep = -1;
static struct conn *g_conns;
static uint8_t g_scratch[BUF_CAP];   /* discarded reads (sink, source) */
static unsigned long g_nconns;

/* Tags for the two non-connection fds in epoll. */
static int g_tag_listen, g_tag_signal;

static void usage(void)
{
	fprintf(stderr,
	        "usage: echo --listen ADDR [--name NAME] [--prefix | --sink | --source BYTES [--seed S]] [--verbose]\n"
	        "  ADDR: 1.2.3.4:port or [::1]:port\n");
	exit(2);
}

static void conn_log(const struct conn *c, const char *what, int err)
{
	if (g_verbose)
		fprintf(stderr, "echo: fd %d: %s: %s\n", c->fd, what, strerror(err));
}

static void conn_close(struct conn *c)
{
	/* close() drops the fd from epoll too. */
	if (close(c->fd) < 0 && g_verbose)
		fprintf(stderr, "echo: close: %s\n", strerror(errno));
	if (c->prev)
		c->prev->next = c->next;
	else
		g_conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->sha)
		EVP_MD_CTX_free(c->sha);
	free(c->out);
	free(c->in);
	free(c);
	g_nconns--;
}

static void out_compact(struct conn *c)
{
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
	} else if (c->out_off > 0 && c->out_len == BUF_CAP) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
}

/* Where the next recv() goes and how much fits; 0 = don't read now. */
static size_t read_room(struct conn *c, uint8_t **dst)
{
	switch (g_mode) {
	case MODE_ECHO:
		out_compact(c);
		*dst = c->out + c->out_len;
		return BUF_CAP - c->out_len;
	case MODE_PREFIX:
		if (c->in_off == c->in_len) {
			c->in_off = c->in_len = 0;
		} else if (c->in_off > 0 && c->in_len == BUF_CAP) {
			memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
			c->in_len -= c->in_off;
			c->in_off = 0;
		}
		*dst = c->in + c->in_len;
		return BUF_CAP - c->in_len;
	case MODE_SINK:
	case MODE_SOURCE:
		*dst = g_scratch;
		return sizeof(g_scratch);
	}
	return 0;
}

/* --prefix: move bytes from in[] to out[], "[NAME] " at each line start.
 * Returns true if anything moved. */
static bool prefix_pump(struct conn *c)
{
	bool moved = false;
	while (c->in_off < c->in_len) {
		out_compact(c);
		size_t room = BUF_CAP - c->out_len;
		if (c->line_start) {
			if (room < g_prefix_len)
				break;
			memcpy(c->out + c->out_len, g_prefix, g_prefix_len);
			c->out_len += g_prefix_len;
			room -= g_prefix_len;
			c->line_start = false;
			moved = true;
		}
		size_t n = c->in_len - c->in_off;
		const uint8_t *src = c->in + c->in_off;
		const uint8_t *nl = memchr(src, '\n', n);
		if (nl)
			n = (size_t)(nl - src) + 1;
		if (n > room)
			n = room;
		if (n == 0)
			break;
		memcpy(c->out + c->out_len, src, n);
		c->out_len += n;
		c->in_off += n;
		c->line_start = (src[n - 1] == '\n');
		moved = true;
	}
	return moved;
}

static void on_data(struct conn *c, size_t n)
{
	switch (g_mode) {
	case MODE_ECHO:
		c->out_len += n;
		break;
	case MODE_PREFIX:
		c->in_len += n;
		prefix_pump(c);
		break;
	case MODE_SINK:
		c->total += n;
		tk_sha_update(c->sha, g_scratch, n);
		break;
	case MODE_SOURCE:
		break;   /* discard */
	}
}

static void on_eof(struct conn *c)
{
	c->rd_eof = true;
	if (g_mode == MODE_SINK) {
		char hex[65];
		tk_sha_hex(c->sha, hex);
		out_compact(c);
		int n = snprintf((char *)c->out + c->out_len, BUF_CAP - c->out_len,
		                 "%llu %s\n", (unsigned long long)c->total, hex);
		if (n > 0 && (size_t)n < BUF_CAP - c->out_len)
			c->out_len += (size_t)n;
	}
}

/* Everything the connection can do now, without blocking.  Returns false if
 * the connection was closed (c is freed). */
static bool conn_run(struct conn *c)
{
	for (int slice = 0; slice < RUN_SLICE; slice++) {
		bool progress = false;

		/* 1. flush pending output */
		while (c->out_off < c->out_len) {
			ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
			if (n > 0) {
				c->out_off += (size_t)n;
				progress = true;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;                   /* signal: retry */
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;                      /* send buffer full: wait for EPOLLOUT */
			conn_log(c, "send", n < 0 ? errno : EIO);   /* EPIPE/ECONNRESET: peer gone */
			conn_close(c);
			return false;
		}
		out_compact(c);

		/* 2. --prefix: output space may have freed up for held input */
		if (g_mode == MODE_PREFIX && prefix_pump(c))
			progress = true;

		/* 3. --source: generate the next chunk once the last one is out */
		if (g_mode == MODE_SOURCE && c->out_len == 0 && c->remaining > 0) {
			size_t n = c->remaining < BUF_CAP ? (size_t)c->remaining : BUF_CAP;
			tk_prng_fill(&c->prng, c->out, n);
			c->out_len = n;
			c->remaining -= n;
			continue;
		}
		if (g_mode == MODE_SOURCE && c->remaining == 0 && c->out_len == 0 && !c->wr_shut) {
			if (shutdown(c->fd, SHUT_WR) < 0) {
				conn_log(c, "shutdown", errno);
				conn_close(c);
				return false;
			}
			c->wr_shut = true;
			progress = true;
		}

		/* 4. read, if there is room (no room = backpressure) */
		uint8_t *dst = NULL;
		size_t room = c->rd_eof ? 0 : read_room(c, &dst);
		if (room > 0) {
			ssize_t n = recv(c->fd, dst, room, 0);
			if (n > 0) {
				on_data(c, (size_t)n);
				progress = true;
			} else if (n == 0) {
				on_eof(c);
				progress = true;
			} else if (errno == EINTR) {
				progress = true;            /* retry */
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_log(c, "recv", errno);   /* ECONNRESET etc.: peer gone */
				conn_close(c);
				return false;
			}
		}
		if (!progress)
			break;
	}

	/* Finished: peer done, everything written (and transformed). */
	bool drained = c->out_off == c->out_len && c->in_off == c->in_len && c->remaining == 0;
	if (c->rd_eof && drained) {
		if (!c->wr_shut && shutdown(c->fd, SHUT_WR) < 0)
			conn_log(c, "shutdown", errno);
		conn_close(c);
		return false;
	}

	uint32_t want = 0;
	uint8_t *dst;
	if (!c->rd_eof && read_room(c, &dst) > 0)
		want |= EPOLLIN;
	if (c->out_off < c->out_len)
		want |= EPOLLOUT;
	if (want != c->events) {
		struct epoll_event ev = { .events = want, .data.ptr = c };
		if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
			conn_log(c, "epoll_ctl", errno);
			conn_close(c);
			return false;
		}
		c->events = want;
	}
	return true;
}

static void conn_new(int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		goto err;
	c->fd = fd;
	c->line_start = true;
	c->out = malloc(BUF_CAP);
	if (!c->out)
		goto err;
	if (g_mode == MODE_PREFIX && !(c->in = malloc(BUF_CAP)))
		goto err;
	if (g_mode == MODE_SINK)
		c->sha = tk_sha_new();
	if (g_mode == MODE_SOURCE) {
		c->remaining = g_source_bytes;
		tk_prng_init(&c->prng, g_seed);
	}
	c->events = EPOLLIN | EPOLLOUT;
	struct epoll_event ev = { .events = c->events, .data.ptr = c };
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		fprintf(stderr, "echo: epoll_ctl add: %s\n", strerror(errno));
		goto err;
	}
	c->next = g_conns;
	if (g_conns)
		g_conns->prev = c;
	g_conns = c;
	g_nconns++;
	conn_run(c);
	return;
err:
	if (c) {
		free(c->out);
		free(c->in);
		if (c->sha)
			EVP_MD_CTX_free(c->sha);
		free(c);
	}
	close(fd);
}

int main(int argc, char **argv)
{
	const char *listen_addr = NULL, *name = "echo";
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "name", required_argument, NULL, 'n' },
		{ "prefix", no_argument, NULL, 'p' },
		{ "sink", no_argument, NULL, 'k' },
		{ "source", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0, 0, 0, 0 },
	};
	int modes = 0, o;
	while ((o = getopt_long(argc, argv, "l:n:pks:S:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'l': listen_addr = optarg; break;
		case 'n': name = optarg; break;
		case 'p': g_mode = MODE_PREFIX; modes++; break;
		case 'k': g_mode = MODE_SINK; modes++; break;
		case 's':
			if (tk_parse_u64(optarg, &g_source_bytes) < 0)
				usage();
			g_mode = MODE_SOURCE;
			modes++;
			break;
		case 'S':
			if (tk_parse_u64(optarg, &g_seed) < 0)
				usage();
			break;
		case 'v': g_verbose = true; break;
		default: usage();
		}
	}
	if (!listen_addr || optind != argc || modes > 1 || strlen(name) > MAX_NAME)
		usage();
	g_prefix_len = (size_t)snprintf(g_prefix, sizeof(g_prefix), "[%s] ", name);

	struct sockaddr_storage ss;
	socklen_t sslen;
	if (tk_parse_addr(listen_addr, &ss, &sslen) < 0) {
		fprintf(stderr, "echo: bad address '%s' (want 1.2.3.4:port or [::1]:port)\n", listen_addr);
		return 2;
	}

	/* Many connections: lift the soft fd limit to the hard one. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			fprintf(stderr, "echo: setrlimit: %s (continuing)\n", strerror(errno));
	}
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
		perror("echo: signal");
		return 1;
	}

	int lfd = -1, sfd = -1, rc = 1;
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
		perror("echo: sigprocmask");
		goto out;
	}
	if ((sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
		perror("echo: signalfd");
		goto out;
	}
	lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		perror("echo: socket");
		goto out;
	}
	int one = 1;
	if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
		perror("echo: SO_REUSEADDR");
		goto out;
	}
	if (ss.ss_family == AF_INET6 &&
	    setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) {
		perror("echo: IPV6_V6ONLY");
		goto out;
	}
	if (bind(lfd, (struct sockaddr *)&ss, sslen) < 0) {
		fprintf(stderr, "echo: bind %s: %s\n", listen_addr, strerror(errno));
		goto out;
	}
	if (listen(lfd, 4096) < 0) {
		perror("echo: listen");
		goto out;
	}
	sslen = sizeof(ss);
	if (getsockname(lfd, (struct sockaddr *)&ss, &sslen) < 0) {
		perror("echo: getsockname");
		goto out;
	}
	if ((g_ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		perror("echo: epoll_create1");
		goto out;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &g_tag_listen };
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		perror("echo: epoll_ctl");
		goto out;
	}
	ev.data.ptr = &g_tag_signal;
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, sfd, &ev) < 0) {
		perror("echo: epoll_ctl");
		goto out;
	}

	char shown[INET6_ADDRSTRLEN + 16];
	tk_format_addr(&ss, shown, sizeof(shown), 1);
	printf("listening %s\n", shown);
	if (fflush(stdout) == EOF) {
		perror("echo: stdout");
		goto out;
	}

	bool accept_paused = false;
	uint64_t resume_at = 0;
	for (;;) {
		struct epoll_event evs[256];
		int timeout = accept_paused ? 100 : -1;
		int n = epoll_wait(g_ep, evs, 256, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("echo: epoll_wait");
			goto out;
		}
		if (accept_paused && tk_now_ms() >= resume_at) {
			struct epoll_event lev = { .events = EPOLLIN, .data.ptr = &g_tag_listen };
			if (epoll_ctl(g_ep, EPOLL_CTL_MOD, lfd, &lev) == 0)
				accept_paused = false;
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &g_tag_signal) {
				struct signalfd_siginfo si;
				ssize_t r = read(sfd, &si, sizeof(si));
				if (r == (ssize_t)sizeof(si)) {
					rc = 0;
					goto out;
				}
				continue;   /* EAGAIN: spurious */
			}
			if (p == &g_tag_listen) {
				for (;;) {
					int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd >= 0) {
						conn_new(fd);
						continue;
					}
					if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
						continue;   /* that one connection died before accept: next */
					if (errno == EAGAIN || errno == EWOULDBLOCK)
						break;      /* backlog empty */
					/* EMFILE/ENFILE/ENOBUFS/ENOMEM: out of resources; stop
					 * accepting for 100 ms instead of spinning on a
					 * level-triggered listener. */
					fprintf(stderr, "echo: accept: %s (%lu connections; pausing accepts)\n",
					        strerror(errno), g_nconns);
					struct epoll_event lev = { .events = 0, .data.ptr = &g_tag_listen };
					if (epoll_ctl(g_ep, EPOLL_CTL_MOD, lfd, &lev) == 0) {
						accept_paused = true;
						resume_at = tk_now_ms() + 100;
					}
					break;
				}
				continue;
			}
			conn_run((struct conn *)p);
		}
	}
out:
	while (g_conns)
		conn_close(g_conns);
	if (g_ep >= 0)
		close(g_ep);
	if (lfd >= 0)
		close(lfd);
	if (sfd >= 0)
		close(sfd);
	return rc;
}
