/* The event loop: epoll (edge-triggered) + a min-heap of timers + a list of
 * deferred callbacks.  One loop per worker thread; nothing is shared.
 *
 * Edge-triggered registration means a handler must work until EAGAIN or ask
 * to be called again with sluice_loop_defer() (used when a handler stops
 * early to be fair to other connections). */
#ifndef SLUICE_LOOP_H
#define SLUICE_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct sluice_loop;
struct sluice_io;
struct sluice_timer;

typedef void (*sluice_io_fn)(struct sluice_io *io, uint32_t events);
typedef void (*sluice_timer_fn)(struct sluice_timer *t);

/* Embedded in whatever owns an fd; epoll's data.ptr points here. */
struct sluice_io {
	int fd;
	sluice_io_fn fn;
	struct sluice_io *defer_next;
	bool deferred;
};

/* Embedded in its owner; heap_idx < 0 when not armed. */
struct sluice_timer {
	uint64_t deadline_ms;
	int heap_idx;
	sluice_timer_fn fn;
};

struct sluice_loop *sluice_loop_new(void);
void sluice_loop_free(struct sluice_loop *l);

int sluice_loop_add(struct sluice_loop *l, struct sluice_io *io, uint32_t events);
/* Unregisters an fd that stays open (handed to the linger list, or a
 * listener being paused). */
void sluice_loop_del(struct sluice_loop *l, struct sluice_io *io);
/* For an fd about to be closed (and never dup'ed): close() removes it from
 * epoll, so this only drops it from the deferred list. */
void sluice_loop_forget(struct sluice_loop *l, struct sluice_io *io);
/* Calls io->fn(io, 0) on the next iteration, before waiting. */
void sluice_loop_defer(struct sluice_loop *l, struct sluice_io *io);
/* Forgets a pending defer (the owner is going away). */
void sluice_loop_undefer(struct sluice_loop *l, struct sluice_io *io);

void sluice_timer_init(struct sluice_timer *t, sluice_timer_fn fn);
int sluice_timer_set(struct sluice_loop *l, struct sluice_timer *t, uint64_t deadline_ms);
void sluice_timer_cancel(struct sluice_loop *l, struct sluice_timer *t);

/* One iteration: deferred callbacks, then wait (at most max_wait_ms, and no
 * later than the next timer), dispatch events, fire due timers.  Returns 0,
 * or -1 if epoll_wait failed for a reason other than EINTR. */
int sluice_loop_run_once(struct sluice_loop *l, int max_wait_ms);
/* The time (sluice_now_ms) read when the current wakeup began: the clock
 * for anything that only needs millisecond accuracy inside a handler. */
uint64_t sluice_loop_now(const struct sluice_loop *l);

#endif
