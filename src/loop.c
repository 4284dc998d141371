/* Event loop: epoll + timer heap + defer list, for one worker thread.
 *
 * Deliberately small (Redis's ae.c is the model): the clever parts of sluice
 * live in the relay and TLS code, not here. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "loop.h"

#define LOOP_EVENTS 256

struct sluice_loop {
	int epfd;
	struct sluice_timer **heap;
	int heap_len, heap_cap;
	struct sluice_io *defer_head, **defer_tail;
	struct epoll_event events[LOOP_EVENTS];
	uint64_t now_ms;               /* read once per wakeup (sluice_loop_now) */
};

uint64_t sluice_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct sluice_loop *sluice_loop_new(void)
{
	struct sluice_loop *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		free(l);
		return NULL;
	}
	l->defer_tail = &l->defer_head;
	l->now_ms = sluice_now_ms();
	return l;
}

void sluice_loop_free(struct sluice_loop *l)
{
	if (!l)
		return;
	close(l->epfd);
	free(l->heap);
	free(l);
}

int sluice_loop_add(struct sluice_loop *l, struct sluice_io *io, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = io };

	return epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev);
}

void sluice_loop_del(struct sluice_loop *l, struct sluice_io *io)
{
	/* ENOENT/EBADF here only mean it was never added; nothing to undo. */
	(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
	sluice_loop_undefer(l, io);
}

void sluice_loop_forget(struct sluice_loop *l, struct sluice_io *io)
{
	sluice_loop_undefer(l, io);
}

void sluice_loop_defer(struct sluice_loop *l, struct sluice_io *io)
{
	if (io->deferred)
		return;
	io->deferred = true;
	io->defer_next = NULL;
	*l->defer_tail = io;
	l->defer_tail = &io->defer_next;
}

void sluice_loop_undefer(struct sluice_loop *l, struct sluice_io *io)
{
	struct sluice_io **pp;

	if (!io->deferred)
		return;
	for (pp = &l->defer_head; *pp; pp = &(*pp)->defer_next) {
		if (*pp == io) {
			*pp = io->defer_next;
			if (l->defer_tail == &io->defer_next)
				l->defer_tail = pp;
			break;
		}
	}
	io->deferred = false;
}

/* ---- timers: a binary min-heap keyed by deadline ---- */

static void heap_swap(struct sluice_loop *l, int a, int b)
{
	struct sluice_timer *t = l->heap[a];

	l->heap[a] = l->heap[b];
	l->heap[b] = t;
	l->heap[a]->heap_idx = a;
	l->heap[b]->heap_idx = b;
}

static void heap_up(struct sluice_loop *l, int i)
{
	while (i > 0) {
		int p = (i - 1) / 2;

		if (l->heap[p]->deadline_ms <= l->heap[i]->deadline_ms)
			break;
		heap_swap(l, i, p);
		i = p;
	}
}

static void heap_down(struct sluice_loop *l, int i)
{
	for (;;) {
		int c = 2 * i + 1, m = i;

		if (c < l->heap_len && l->heap[c]->deadline_ms < l->heap[m]->deadline_ms)
			m = c;
		if (c + 1 < l->heap_len && l->heap[c + 1]->deadline_ms < l->heap[m]->deadline_ms)
			m = c + 1;
		if (m == i)
			break;
		heap_swap(l, i, m);
		i = m;
	}
}

void sluice_timer_init(struct sluice_timer *t, sluice_timer_fn fn)
{
	t->deadline_ms = 0;
	t->heap_idx = -1;
	t->fn = fn;
}

int sluice_timer_set(struct sluice_loop *l, struct sluice_timer *t, uint64_t deadline_ms)
{
	if (t->heap_idx >= 0) {
		uint64_t old = t->deadline_ms;

		t->deadline_ms = deadline_ms;
		if (deadline_ms < old)
			heap_up(l, t->heap_idx);
		else
			heap_down(l, t->heap_idx);
		return 0;
	}
	if (l->heap_len == l->heap_cap) {
		int cap = l->heap_cap ? l->heap_cap * 2 : 64;
		struct sluice_timer **h = realloc(l->heap, (size_t)cap * sizeof(*h));

		if (!h)
			return -1;
		l->heap = h;
		l->heap_cap = cap;
	}
	t->deadline_ms = deadline_ms;
	t->heap_idx = l->heap_len;
	l->heap[l->heap_len++] = t;
	heap_up(l, t->heap_idx);
	return 0;
}

void sluice_timer_cancel(struct sluice_loop *l, struct sluice_timer *t)
{
	int i = t->heap_idx;

	if (i < 0)
		return;
	t->heap_idx = -1;
	l->heap_len--;
	if (i == l->heap_len)
		return;
	l->heap[i] = l->heap[l->heap_len];
	l->heap[i]->heap_idx = i;
	heap_up(l, i);
	heap_down(l, l->heap[i]->heap_idx);
}

uint64_t sluice_loop_now(const struct sluice_loop *l)
{
	return l->now_ms;
}

static void fire_timers(struct sluice_loop *l)
{
	uint64_t now = l->now_ms;

	while (l->heap_len > 0 && l->heap[0]->deadline_ms <= now) {
		struct sluice_timer *t = l->heap[0];

		sluice_timer_cancel(l, t);
		t->fn(t);
	}
}

static void run_deferred(struct sluice_loop *l)
{
	/* Take the current list only: handlers that defer again run next
	 * iteration, after the loop has looked at the sockets once more. */
	struct sluice_io *io = l->defer_head;

	l->defer_head = NULL;
	l->defer_tail = &l->defer_head;
	while (io) {
		struct sluice_io *next = io->defer_next;

		io->deferred = false;
		io->fn(io, 0);
		io = next;
	}
}

int sluice_loop_run_once(struct sluice_loop *l, int max_wait_ms)
{
	int timeout = max_wait_ms, n, i;

	run_deferred(l);
	if (l->defer_head) {
		timeout = 0;
	} else if (l->heap_len > 0) {
		uint64_t now = sluice_now_ms(), d = l->heap[0]->deadline_ms;
		int until = d <= now ? 0 : (d - now > (uint64_t)max_wait_ms ? max_wait_ms : (int)(d - now));

		if (until < timeout)
			timeout = until;
	}
	n = epoll_wait(l->epfd, l->events, LOOP_EVENTS, timeout);
	if (n < 0) {
		if (errno == EINTR)
			n = 0;
		else
			return -1;
	}
	/* One clock read per wakeup for everything it dispatches (idle
	 * accounting, timers), as nginx caches ngx_current_msec: a pump per
	 * event each reading the clock was a third of the syscalls per MiB
	 * where the clock is not in the vDSO (the kTLS VM). */
	l->now_ms = sluice_now_ms();
	for (i = 0; i < n; i++) {
		struct sluice_io *io = l->events[i].data.ptr;

		io->fn(io, l->events[i].events);
	}
	fire_timers(l);
	return 0;
}
