/* The loaded configuration: immutable after sluice_config_load() returns.
 *
 * The YAML is read by libcyaml against a schema (src/config.c); this header
 * holds the validated, resolved form every other subsystem uses (names turned
 * into indices, durations into milliseconds, addresses into sockaddrs). */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"

enum sluice_log_level { SLUICE_LOG_DEBUG, SLUICE_LOG_INFO, SLUICE_LOG_WARN, SLUICE_LOG_ERROR };
enum sluice_log_format { SLUICE_LOG_JSON, SLUICE_LOG_TEXT };
enum sluice_listener_mode { SLUICE_MODE_MTLS, SLUICE_MODE_TCP };
enum sluice_balance { SLUICE_BALANCE_LEAST_CONN };
/* tls.ktls: auto = use kernel TLS where it engages, else userspace;
 * off = always userspace; require = refuse to start without the tls ULP and
 * refuse connections where it does not engage both ways. */
enum sluice_ktls_mode { SLUICE_KTLS_AUTO, SLUICE_KTLS_OFF, SLUICE_KTLS_REQUIRE };

/* bpf.mode: auto = kernel-kept counters where BPF loads (else atomics, with
 * one warning saying why); off = atomics; require = refuse to start
 * without BPF. */
enum sluice_bpf_mode { SLUICE_BPF_AUTO, SLUICE_BPF_OFF, SLUICE_BPF_REQUIRE };

/* listeners[].datapath (mode tcp only): splice (default) or sockmap, the
 * in-kernel redirect (src/sockmap.c), which needs BPF. */
enum sluice_datapath_cfg { SLUICE_DATAPATH_SPLICE, SLUICE_DATAPATH_SOCKMAP };

/* Defaults of the sockmap backlog caps (bytes). */
#define SLUICE_SOCKMAP_PAIR_CAP   (4ULL << 20)
#define SLUICE_SOCKMAP_HARD_CAP   (16ULL << 20)
#define SLUICE_SOCKMAP_GLOBAL_CAP (256ULL << 20)

struct sluice_bpf_cfg {
	enum sluice_bpf_mode mode;  /* default auto */
	char *pin_path;             /* NULL = /sys/fs/bpf/sluice */
	char *cgroup;               /* NULL = a child of the cgroup sluice runs in */
	uint64_t sockmap_pair_cap;  /* per direction: above it the source's window is clamped */
	uint64_t sockmap_hard_cap;  /* per direction: above it the pair is reset */
	uint64_t sockmap_global_cap; /* all pairs together */
};

/* How a clients[] entry names who it applies to. */
enum sluice_id_kind {
	SLUICE_ID_ANY,  /* "*": any verified client (mtls) or any source (tcp) */
	SLUICE_ID_CN,   /* "CN=alice": certificate subject common name, exact */
	SLUICE_ID_URI,  /* "URI=spiffe://td/x": a SAN URI, exact; a trailing '*' matches a prefix */
	SLUICE_ID_DNS,  /* "DNS=host": a SAN dNSName, exact, case-insensitive */
	SLUICE_ID_IP,   /* "IP=10.0.0.0/8": tcp listeners, the source address */
};

#define SLUICE_MAX_SERVERS 64   /* per pool: a 64-bit "tried" mask in connect retry */
#define SLUICE_MAX_POOLS   64   /* clients[].allow is a 64-bit mask of pools */

struct sluice_timeouts {
	uint64_t handshake_ms;  /* 0 = none */
	uint64_t connect_ms;
	uint64_t idle_ms;
	uint64_t lifetime_ms;
};

struct sluice_server_cfg {
	char *address;              /* as written, for logs */
	struct sluice_sockaddr sa;
	unsigned weight;            /* >= 1, default 1 */
};

struct sluice_upstream_cfg {
	char *name;
	enum sluice_balance balance;
	struct sluice_server_cfg *servers;
	unsigned n_servers;         /* 1..SLUICE_MAX_SERVERS */
};

struct sluice_listener_cfg {
	char *name;
	char *listen;               /* as written */
	struct sluice_sockaddr sa;
	enum sluice_listener_mode mode;
	unsigned upstream;          /* index into config.upstreams */
	struct sluice_cidr *allow;  /* empty = all */
	unsigned n_allow;
	struct sluice_cidr *deny;   /* checked first */
	unsigned n_deny;
	struct sluice_timeouts timeouts;
	enum sluice_datapath_cfg datapath; /* mode tcp only */
};

struct sluice_client_cfg {
	char *id;                   /* as written, e.g. "CN=alice" */
	enum sluice_id_kind kind;
	char *value;                /* the part after "KIND=" (NULL for ANY/IP) */
	struct sluice_cidr cidr;    /* for SLUICE_ID_IP */
	uint64_t allow_mask;        /* bit i = may reach upstreams[i] */
	uint32_t max_conns;         /* 0 = unlimited */
	uint32_t conn_rate;         /* per second, 0 = unlimited */
	uint32_t conn_burst;        /* 0 = same as conn_rate */
};

struct sluice_tls_cfg {
	char *ca;                   /* NULL when no mtls listener needs it */
	char *cert;
	char *key;
	char *crl;                  /* optional */
	unsigned verify_depth;      /* default 4 */
	enum sluice_ktls_mode ktls; /* default auto */
	bool tickets;               /* session resumption by tickets, default on */
	uint64_t ticket_lifetime_ms; /* default 5 min */
	size_t session_cache;       /* sessions kept for resumption, default 5000 */
};

struct sluice_config {
	char *path;
	unsigned workers;           /* resolved: 0 in the file = number of cores */
	enum sluice_log_level log_level;
	enum sluice_log_format log_format;
	uint64_t drain_ms;          /* default 30 s */
	struct sluice_tls_cfg tls;
	struct sluice_bpf_cfg bpf;
	struct sluice_listener_cfg *listeners;
	unsigned n_listeners;
	struct sluice_upstream_cfg *upstreams;
	unsigned n_upstreams;
	struct sluice_client_cfg *clients;
	unsigned n_clients;
};

/* Loads, validates and resolves.  Relative paths in tls.* are resolved
 * against the config file's directory.  On error returns -1 and writes
 * "FILE:LINE:COLUMN: message" into err (LINE:COLUMN of the offending key or
 * value; 1-based). */
int sluice_config_load(const char *path, struct sluice_config **out,
                       char *err, size_t errlen);
/* The same from len bytes in memory (no terminator needed), loaded as if
 * read from the file `name`: it names the source in errors and relative
 * tls.* paths resolve against its directory.  For tests and fuzzing. */
int sluice_config_load_mem(const char *name, const void *data, size_t len,
                           struct sluice_config **out, char *err, size_t errlen);
void sluice_config_free(struct sluice_config *cfg);

/* "300ms", "5s", "2m", "1h", "1d", "0" (and "0s"): milliseconds.  Bare
 * numbers other than 0 are refused (ambiguous unit).  -1 on bad input. */
int sluice_duration_parse(const char *s, uint64_t *ms);

#endif
