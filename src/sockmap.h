/* The sockmap datapath: a mode tcp connection whose bytes the kernel
 * forwards (listeners[].datapath: sockmap).
 *
 * After the upstream connect both sockets go into the SOCKHASH of
 * bpf/sluice.bpf.c, whose sk_skb verdict program redirects each socket's
 * bytes to its peer and keeps every direction's backlog under the caps of
 * the bpf: section.  Userspace only:
 *   - watches each socket for the end (FIN, RST) and passes a FIN on once
 *     the kernel has moved every byte that came before it;
 *   - pauses a source when its direction's backlog passes the soft cap
 *     (woken by the worker's ring buffer; the sockops program takes it out
 *     of the verdict's SOCKHASH, so TCP flow control stops its sender),
 *     and resumes it once the backlog is back under half of it; a source
 *     that cannot go back (a FIN came while paused) has its tail copied;
 *   - resets a pair the verdict declared dead (hard or global cap) and
 *     logs result "sockmap_backlog".
 * docs/architecture.md has the reasoning and the kernel facts behind it. */
#ifndef SLUICE_SOCKMAP_H
#define SLUICE_SOCKMAP_H

#include <stddef.h>

#include "bpf.h"
#include "proxy.h"

struct sluice_sockmap;           /* proxy-wide: maps, slot allocator */
struct sluice_sockmap_worker;    /* per worker: its ring buffer, its pairs */
struct sluice_sockmap_pair;      /* per connection */

/* Whether the datapath runs on a kernel of this release (uname -r): 1, or
 * 0 with the reason in why.  Pure: unit-tested with release strings. */
int sluice_sockmap_kernel_ok(const char *release, char *why, size_t whylen);

/* Prepares the datapath on a loaded BPF object.  SLUICE_OK, or SLUICE_ERR
 * with the reason in why: the verdict could not be attached, or the kernel
 * is refused (sluice_sockmap_kernel_ok). */
int sluice_sockmap_open(struct sluice_bpf *b, const struct sluice_config *cfg, struct sluice_sockmap **out,
                        char *why, size_t whylen);
void sluice_sockmap_close(struct sluice_sockmap *sm);

/* A worker's ring buffer and pair table, added to its loop (w->sockmap). */
int sluice_sockmap_worker_init(struct sluice_sockmap *sm, struct sluice_worker *w);
void sluice_sockmap_worker_fini(struct sluice_worker *w);

/* Relay start of a connection on a sockmap listener.
 *   SLUICE_OK        the kernel forwards now (c->sockmap set)
 *   SLUICE_DECLINED  not possible for this connection (no free slot, a
 *                    map update failed): nothing changed, use splice
 *   SLUICE_ERR       bytes may already have been forwarded or dropped:
 *                    close the connection (c->result set) */
int sluice_sockmap_start(struct sluice_conn *c);
/* An event on one of the sockets (or a check asked by the pair's own
 * timer): FIN and RST handling, dead pairs.  Same contract as
 * sluice_relay_pump. */
enum sluice_relay_rc sluice_sockmap_pump(struct sluice_conn *c);
/* Idle deadline: moves c->last_active_ms if the kernel forwarded bytes
 * since the last look. */
void sluice_sockmap_touch(struct sluice_conn *c);
/* At close, before the log line: the byte counts, out of the maps, RST on
 * both sockets if the pair died or failed. */
void sluice_sockmap_release(struct sluice_conn *c);

#endif
