/* The BPF loader.  Owns the skeleton of bpf/sluice.bpf.c (the only file that
 * includes it), the pins under the pin path, the cgroup sluice runs in while
 * BPF counts its sockets, the mmap'ed counter arrays and the allocator of
 * client counter slots.
 *
 * Start-up, in sluice_bpf_open(), unwinds through one label on failure:
 *   preflight (cgroup v2, bpffs, capabilities) -> lock the pin directory
 *   (flock) and clear what a dead sluice left -> load -> fill the server
 *   table -> mmap the counters -> pin -> enter the cgroup -> attach.
 *
 * The sockops program is attached with bpf_prog_attach(), not a bpf_link:
 * a link dies with the process's fds, and a kill -9 must leave the program
 * in place so the kernel still counts the closes of the sockets the dead
 * sluice held.  The next sluice on the same pin path removes the stale
 * cgroup (and with it the attachment) and the stale pins. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <netinet/in.h>
#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf.h"
#include "log.h"
#include "sluice.skel.h"

#define CAP_NET_ADMIN_BIT 12
#define CAP_SYS_ADMIN_BIT 21
#define CAP_PERFMON_BIT   38
#define CAP_BPF_BIT       39

#define MOUNTINFO_MAX (1 << 20)   /* containers can have thousands of mounts */

struct sluice_bpf {
	struct sluice_skel *skel;
	char pin_path[PATH_MAX];
	int pin_dir_fd;                /* flock'ed while we own the pins */
	bool pinned;
	char cgroup[PATH_MAX];         /* where we run and attached */
	char home_cgroup[PATH_MAX];    /* where we came from */
	bool cgroup_created, moved;
	int cgroup_fd;
	bool attached;

	struct sluice_bpf_upstream *up;    /* mmap of upstream_conns */
	size_t up_len;
	struct sluice_bpf_client *cl;      /* mmap of client_conns */
	size_t cl_len;
	uint32_t (*up_slot)[SLUICE_MAX_SERVERS];  /* [pool][server] -> slot */
	unsigned n_pools;
	const struct sluice_config *cfg;

	pthread_mutex_t lock;          /* the client slot free list */
	uint32_t *free_slots;
	uint32_t n_free;
	uint8_t *slot_used;

	int storage_fd, client_open_fd, account_fd, dp_fd;
	int ncpus;

	/* sockmap datapath: the verdict attached to sockmap_socks */
	bool verdict_attached;
	char sockmap_why[160];         /* why not, when the verdict could not attach */
	struct sluice_bpf_pair *pairs; /* mmap of sockmap_pairs */
	size_t pairs_len;
	struct sluice_bpf_sockmap_global *sm_global; /* mmap of sockmap_global */
	size_t sm_global_len;
};

static char libbpf_last[256];  /* last libbpf warning, for the error line */

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap);
static int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int read_file(const char *path, char *buf, size_t len);
static int write_file(const char *path, const char *s);
static int caps_missing(char *what, size_t len);
static int pins_clear(int dir_fd, struct bpf_object *obj);
static void cgroups_clear_stale(const char *parent);
static int fill_servers(struct sluice_bpf *b, char *err, size_t errlen);
static void *map_mmap(struct bpf_map *m, size_t *len);
static int addr_cmp(const void *a, const void *b);
static uint32_t distinct_servers(const struct sluice_config *cfg);

/* ---- helpers ------------------------------------------------------------ */

/* libbpf speaks through this hook: warnings (the verifier's complaint among
 * them) go to the debug log, and the last one is kept for the error line. */
static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[512];
	size_t n;

	if (level == LIBBPF_DEBUG)
		return 0;
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	if (n == 0)
		return 0;
	if (level == LIBBPF_WARN)
		snprintf(libbpf_last, sizeof(libbpf_last), "%s", line);
	sluice_log(SLUICE_LOG_DEBUG, "bpf", "libbpf: %s", line);
	return 0;
}

static int errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t off = 0;
	ssize_t r;

	if (fd < 0)
		return -1;
	while (off + 1 < len && (r = read(fd, buf + off, len - 1 - off)) > 0)
		off += (size_t)r;
	close(fd);
	buf[off] = '\0';
	return 0;
}

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t r;

	if (fd < 0)
		return -1;
	r = write(fd, s, strlen(s));
	close(fd);
	return r == (ssize_t)strlen(s) ? 0 : -1;
}

/* Loading needs CAP_BPF + CAP_PERFMON (client_open passes stack pointers to
 * bpf_sys_bpf), attaching to a cgroup CAP_NET_ADMIN; CAP_SYS_ADMIN covers
 * all.  Checked up front so the warning names what is missing instead of
 * an EPERM from somewhere in libbpf.  0 when all are there. */
static int caps_missing(char *what, size_t len)
{
	static const struct { int bit; const char *name; } need[] = {
		{ CAP_BPF_BIT, "CAP_BPF" }, { CAP_PERFMON_BIT, "CAP_PERFMON" },
		{ CAP_NET_ADMIN_BIT, "CAP_NET_ADMIN" },
	};
	char status[8192], *p;
	unsigned long long eff;
	size_t i, off = 0;

	what[0] = '\0';
	if (read_file("/proc/self/status", status, sizeof(status)) < 0 ||
	    (p = strstr(status, "\nCapEff:")) == NULL)
		return 0;   /* cannot tell: let the kernel decide */
	eff = strtoull(p + 8, NULL, 16);
	if (eff & (1ULL << CAP_SYS_ADMIN_BIT))
		return 0;
	for (i = 0; i < SLUICE_ARRAY_LEN(need); i++)
		if (!(eff & (1ULL << need[i].bit)))
			off += (size_t)snprintf(what + off, off < len ? len - off : 0, "%s%s",
			                        off ? ", " : "", need[i].name);
	return off > 0;
}

int sluice_bpf_addr_from_sockaddr(const struct sockaddr *sa, struct sluice_bpf_addr *out)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	memset(out, 0, sizeof(*out));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		out->family = AF_INET;
		out->port = ntohs(in->sin_port);
		memcpy(out->addr, &in->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		out->port = ntohs(in6->sin6_port);
		if (memcmp(in6->sin6_addr.s6_addr, v4mapped, 12) == 0) {
			out->family = AF_INET;
			memcpy(out->addr, in6->sin6_addr.s6_addr + 12, 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->addr, in6->sin6_addr.s6_addr, 16);
		}
		return 0;
	}
	errno = EAFNOSUPPORT;
	return -1;
}

/* /proc/self/cgroup holds "0::/path" for the v2 hierarchy; mountinfo lines
 * read "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE OPTS". */
int sluice_bpf_cgroup_dir(const char *proc_cgroup, const char *mountinfo, char *out, size_t outlen)
{
	const char *line, *path = NULL;
	char mnt[PATH_MAX] = "";
	size_t plen = 0;

	for (line = proc_cgroup; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, "0::", 3) == 0) {
			path = line + 3;
			plen = strcspn(path, "\n");
			break;
		}
	if (!path)
		return -1;
	for (line = mountinfo; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		char mp[PATH_MAX];
		const char *sep = strstr(line, " - ");
		const char *eol = strchr(line, '\n');

		if (!sep || (eol && sep > eol))
			continue;
		if (strncmp(sep + 3, "cgroup2 ", 8) != 0)
			continue;
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1) {
			snprintf(mnt, sizeof(mnt), "%s", mp);
			break;
		}
	}
	if (!mnt[0])
		return -1;
	/* "/" alone adds nothing; strip a trailing newline-less path. */
	if (plen == 1 && path[0] == '/')
		plen = 0;
	if ((size_t)snprintf(out, outlen, "%s%.*s", mnt, (int)plen, path) >= outlen)
		return -1;
	return 0;
}

/* Removes the pins of our maps from the (locked) pin directory: they belong
 * to a sluice that is gone.  Its counters stay correct for whoever still
 * holds them; we start from fresh maps.  Only our own map names go, so a
 * pin path pointed at a shared directory loses nothing else. */
static int pins_clear(int dir_fd, struct bpf_object *obj)
{
	struct bpf_map *m;
	int rc = 0;

	bpf_object__for_each_map(m, obj) {
		if (bpf_map__is_internal(m))
			continue;
		if (unlinkat(dir_fd, bpf_map__name(m), 0) < 0 && errno != ENOENT)
			rc = -1;
	}
	return rc;
}

/* Removes "sluice-<pid>" cgroups under parent whose process is dead and
 * that hold no process: left by a sluice killed with -9.  rmdir releases
 * the program attached there.  A live pid is skipped (that sluice may be
 * between mkdir and moving in). */
static void cgroups_clear_stale(const char *parent)
{
	DIR *d = opendir(parent);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		char path[2 * PATH_MAX], procs[64];
		char *end;
		long pid;

		if (strncmp(e->d_name, "sluice-", 7) != 0)
			continue;
		pid = strtol(e->d_name + 7, &end, 10);
		if (*end != '\0' || pid <= 0 || pid == getpid())
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "%s/%s/cgroup.procs", parent, e->d_name);
		if (read_file(path, procs, sizeof(procs)) < 0 || procs[0] != '\0')
			continue;
		snprintf(path, sizeof(path), "%s/%s", parent, e->d_name);
		if (rmdir(path) == 0)
			sluice_log(SLUICE_LOG_INFO, "bpf", "removed cgroup %s left by a dead sluice", path);
	}
	closedir(d);
}

static void *map_mmap(struct bpf_map *m, size_t *len)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t n = (size_t)bpf_map__value_size(m) * bpf_map__max_entries(m);
	void *p;

	n = (n + (size_t)page - 1) & ~((size_t)page - 1);
	p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(m), 0);
	if (p == MAP_FAILED)
		return NULL;
	*len = n;
	return p;
}

static int addr_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(struct sluice_bpf_addr));
}

/* How many different server addresses the config names, across pools.
 * Unsupported families are counted (fill_servers() refuses them). */
static uint32_t distinct_servers(const struct sluice_config *cfg)
{
	struct sluice_bpf_addr *keys;
	uint32_t n = 0, d = 0, i;
	unsigned p, s;

	for (p = 0; p < cfg->n_upstreams; p++)
		n += cfg->upstreams[p].n_servers;
	keys = calloc(n ? n : 1, sizeof(*keys));
	if (!keys)
		return n;
	for (p = 0, i = 0; p < cfg->n_upstreams; p++)
		for (s = 0; s < cfg->upstreams[p].n_servers; s++, i++)
			(void)sluice_bpf_addr_from_sockaddr(
				(const struct sockaddr *)&cfg->upstreams[p].servers[s].sa.ss, &keys[i]);
	qsort(keys, n, sizeof(*keys), addr_cmp);
	for (i = 0; i < n; i++)
		if (i == 0 || addr_cmp(&keys[i - 1], &keys[i]) != 0)
			d++;
	free(keys);
	return d;
}

/* upstream_servers: address -> slot, one slot per distinct address across
 * every pool; upstream_conns[slot].server says which address it counts. */
static int fill_servers(struct sluice_bpf *b, char *err, size_t errlen)
{
	const struct sluice_config *cfg = b->cfg;
	int map_fd = bpf_map__fd(b->skel->maps.upstream_servers);
	uint32_t next = 0;
	unsigned p, s;

	for (p = 0; p < cfg->n_upstreams; p++) {
		const struct sluice_upstream_cfg *up = &cfg->upstreams[p];

		for (s = 0; s < up->n_servers && s < SLUICE_MAX_SERVERS; s++) {
			struct sluice_bpf_addr key;
			uint32_t slot;

			if (sluice_bpf_addr_from_sockaddr((const struct sockaddr *)&up->servers[s].sa.ss, &key) < 0)
				return errf(err, errlen, "upstream %s server %s: address family not supported",
				            up->name, up->servers[s].address);
			if (bpf_map_lookup_elem(map_fd, &key, &slot) == 0) {
				b->up_slot[p][s] = slot;    /* same address in another pool */
				continue;
			}
			if (next >= bpf_map__max_entries(b->skel->maps.upstream_conns))
				return errf(err, errlen, "more than %d upstream servers", SLUICE_BPF_MAX_SERVERS);
			slot = next++;
			if (bpf_map_update_elem(map_fd, &key, &slot, BPF_NOEXIST) < 0)
				return errf(err, errlen, "filling upstream_servers: %s", strerror(errno));
			b->up[slot].server = key;   /* not attached yet: nobody else writes */
			b->up_slot[p][s] = slot;
		}
	}
	return 0;
}

/* ---- open / close --------------------------------------------------------- */

int sluice_bpf_open(const struct sluice_config *cfg, const char *pin_path, const char *cgroup,
                    struct sluice_bpf **out, char *err, size_t errlen)
{
	char proc_cgroup[4096], *mountinfo = NULL, missing[128], buf[32], parent[PATH_MAX];
	struct sluice_bpf *b;
	struct bpf_map *m;
	struct statfs fs;
	uint32_t i, n_servers;
	int e;

	*out = NULL;
	if (!pin_path)
		pin_path = SLUICE_BPF_PIN_PATH;
	b = calloc(1, sizeof(*b));
	if (!b)
		return errf(err, errlen, "out of memory");
	b->pin_dir_fd = b->cgroup_fd = -1;
	b->cfg = cfg;
	b->n_pools = cfg->n_upstreams;
	snprintf(b->pin_path, sizeof(b->pin_path), "%s", pin_path);
	pthread_mutex_init(&b->lock, NULL);

	/* -- preflight: say which prerequisite is missing -- */
	mountinfo = malloc(MOUNTINFO_MAX);
	if (!mountinfo || !b->pin_path[0]) {
		errf(err, errlen, !mountinfo ? "out of memory" : "empty pin path");
		goto fail;
	}
	{
		/* The pin path, or the directory that will hold it, must be bpffs. */
		char dir[PATH_MAX], *slash;

		snprintf(dir, sizeof(dir), "%s", b->pin_path);
		if (statfs(dir, &fs) < 0) {
			slash = strrchr(dir, '/');
			if (slash && slash != dir)
				*slash = '\0';
			else if (slash)
				slash[1] = '\0';
			if (statfs(dir, &fs) < 0)
				fs.f_type = 0;
		}
		if ((unsigned long)fs.f_type != BPF_FS_MAGIC) {
			errf(err, errlen, "bpffs not mounted at %s (mount -t bpf bpf %s)", dir, dir);
			goto fail;
		}
	}
	if (read_file("/proc/self/cgroup", proc_cgroup, sizeof(proc_cgroup)) < 0 ||
	    read_file("/proc/self/mountinfo", mountinfo, MOUNTINFO_MAX) < 0 ||
	    sluice_bpf_cgroup_dir(proc_cgroup, mountinfo, b->home_cgroup, sizeof(b->home_cgroup)) < 0) {
		errf(err, errlen, "cgroup v2 not mounted");
		goto fail;
	}
	if (caps_missing(missing, sizeof(missing))) {
		errf(err, errlen, "no %s (and no CAP_SYS_ADMIN)", missing);
		goto fail;
	}

	/* -- the pin directory: ours alone while we live -- */
	if (mkdir(b->pin_path, 0700) < 0 && errno != EEXIST) {
		errf(err, errlen, "mkdir %s: %s", b->pin_path, strerror(errno));
		goto fail;
	}
	b->pin_dir_fd = open(b->pin_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (b->pin_dir_fd < 0) {
		errf(err, errlen, "open %s: %s", b->pin_path, strerror(errno));
		goto fail;
	}
	if (flock(b->pin_dir_fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			errf(err, errlen, "pin path %s is in use by another sluice", b->pin_path);
		else
			errf(err, errlen, "flock %s: %s", b->pin_path, strerror(errno));
		goto fail;
	}

	/* -- load -- */
	libbpf_set_print(libbpf_print);
	libbpf_last[0] = '\0';
	b->skel = sluice_skel__open();
	if (!b->skel) {
		errf(err, errlen, "opening the BPF object: %s", strerror(errno));
		goto fail;
	}
	if (pins_clear(b->pin_dir_fd, b->skel->obj) < 0) {
		errf(err, errlen, "removing stale pins in %s: %s", b->pin_path, strerror(errno));
		goto fail;
	}
	/* One upstream_conns entry per distinct server address: bpftool's
	 * dump then lists exactly the servers. */
	n_servers = distinct_servers(cfg);
	if (n_servers == 0)
		n_servers = 1;
	if (n_servers > SLUICE_BPF_MAX_SERVERS)
		n_servers = SLUICE_BPF_MAX_SERVERS;
	if (bpf_map__set_max_entries(b->skel->maps.upstream_conns, n_servers) < 0 ||
	    bpf_map__set_max_entries(b->skel->maps.upstream_servers, n_servers) < 0) {
		errf(err, errlen, "sizing the server maps: %s", strerror(errno));
		goto fail;
	}
	/* The sockmap caps are constants of the verdict program (.rodata):
	 * the verifier folds them. */
	b->skel->rodata->sockmap_soft_cap = (__u32)cfg->bpf.sockmap_pair_cap;
	b->skel->rodata->sockmap_hard_cap = (__u32)cfg->bpf.sockmap_hard_cap;
	b->skel->rodata->sockmap_global_cap = cfg->bpf.sockmap_global_cap;
	if (sluice_skel__load(b->skel) < 0) {
		e = errno;
		errf(err, errlen, "loading the BPF object: %s%s%s", strerror(e), libbpf_last[0] ? ": " : "",
		     libbpf_last);
		goto fail;
	}
	b->storage_fd = bpf_map__fd(b->skel->maps.sock_tags);
	b->dp_fd = bpf_map__fd(b->skel->maps.datapath_stats);
	b->client_open_fd = bpf_program__fd(b->skel->progs.client_open);
	b->account_fd = bpf_program__fd(b->skel->progs.account);
	b->ncpus = libbpf_num_possible_cpus();
	if (b->ncpus <= 0) {
		errf(err, errlen, "cannot count possible CPUs");
		goto fail;
	}

	b->up = map_mmap(b->skel->maps.upstream_conns, &b->up_len);
	b->cl = map_mmap(b->skel->maps.client_conns, &b->cl_len);
	b->pairs = map_mmap(b->skel->maps.sockmap_pairs, &b->pairs_len);
	b->sm_global = map_mmap(b->skel->maps.sockmap_global, &b->sm_global_len);
	if (!b->up || !b->cl || !b->pairs || !b->sm_global) {
		errf(err, errlen, "mmap of the counter maps: %s", strerror(errno));
		goto fail;
	}
	b->up_slot = calloc(b->n_pools ? b->n_pools : 1, sizeof(*b->up_slot));
	b->free_slots = malloc(SLUICE_BPF_MAX_CLIENTS * sizeof(*b->free_slots));
	b->slot_used = calloc(SLUICE_BPF_MAX_CLIENTS, 1);
	if (!b->up_slot || !b->free_slots || !b->slot_used) {
		errf(err, errlen, "out of memory");
		goto fail;
	}
	for (i = 0; i < SLUICE_BPF_MAX_CLIENTS; i++)   /* slot 0 handed out first */
		b->free_slots[i] = SLUICE_BPF_MAX_CLIENTS - 1 - i;
	b->n_free = SLUICE_BPF_MAX_CLIENTS;
	if (fill_servers(b, err, errlen) < 0)
		goto fail;

	/* -- pin: bpftool reads them by name -- */
	bpf_object__for_each_map(m, b->skel->obj) {
		char path[2 * PATH_MAX];

		if (bpf_map__is_internal(m))
			continue;
		snprintf(path, sizeof(path), "%s/%s", b->pin_path, bpf_map__name(m));
		if (bpf_map__pin(m, path) < 0) {
			errf(err, errlen, "pinning %s: %s", path, strerror(errno));
			goto fail;
		}
	}
	b->pinned = true;

	/* -- the cgroup: enter, then attach -- */
	if (cgroup) {
		snprintf(b->cgroup, sizeof(b->cgroup), "%s", cgroup);
		if (mkdir(b->cgroup, 0755) == 0)
			b->cgroup_created = true;
		else if (errno != EEXIST) {
			errf(err, errlen, "mkdir cgroup %s: %s", b->cgroup, strerror(errno));
			goto fail;
		}
	} else {
		cgroups_clear_stale(b->home_cgroup);
		snprintf(parent, sizeof(parent), "%s", b->home_cgroup);
		if ((size_t)snprintf(b->cgroup, sizeof(b->cgroup), "%s/sluice-%d", parent, (int)getpid()) >=
		    sizeof(b->cgroup)) {
			errf(err, errlen, "cgroup path too long");
			goto fail;
		}
		if (mkdir(b->cgroup, 0755) < 0 && errno != EEXIST) {
			errf(err, errlen, "mkdir cgroup %s: %s", b->cgroup, strerror(errno));
			goto fail;
		}
		b->cgroup_created = true;
	}
	b->cgroup_fd = open(b->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (b->cgroup_fd < 0 || fstatfs(b->cgroup_fd, &fs) < 0 || (unsigned long)fs.f_type != CGROUP2_SUPER_MAGIC) {
		errf(err, errlen, "%s is not a cgroup v2 directory", b->cgroup);
		goto fail;
	}
	{
		char procs[PATH_MAX + 16];

		snprintf(procs, sizeof(procs), "%s/cgroup.procs", b->cgroup);
		snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
		if (write_file(procs, buf) < 0) {
			errf(err, errlen, "moving into cgroup %s: %s", b->cgroup, strerror(errno));
			goto fail;
		}
		b->moved = true;
	}
	/* ALLOW_MULTI: a configured cgroup may be shared (another sluice,
	 * another tool); we detach exactly our program on exit. */
	if (bpf_prog_attach(bpf_program__fd(b->skel->progs.sluice_sockops), b->cgroup_fd,
	                    BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI) < 0) {
		errf(err, errlen, "attaching sockops to %s: %s", b->cgroup, strerror(errno));
		goto fail;
	}
	b->attached = true;
	/* The sockmap verdict lives on its map, not on a cgroup.  Failing to
	 * attach it only costs the sockmap datapath (the caller falls back
	 * to splice and says why), not the counters. */
	if (bpf_prog_attach(bpf_program__fd(b->skel->progs.sluice_sockmap_verdict),
	                    bpf_map__fd(b->skel->maps.sockmap_socks), BPF_SK_SKB_STREAM_VERDICT, 0) < 0)
		snprintf(b->sockmap_why, sizeof(b->sockmap_why), "attaching the sockmap verdict: %s",
		         strerror(errno));
	else
		b->verdict_attached = true;
	free(mountinfo);
	*out = b;
	return 0;
fail:
	free(mountinfo);
	sluice_bpf_close(b);
	return -1;
}

void sluice_bpf_close(struct sluice_bpf *b)
{
	char path[PATH_MAX + 16], buf[32];
	struct bpf_map *m;

	if (!b)
		return;
	if (b->attached)
		(void)bpf_prog_detach2(bpf_program__fd(b->skel->progs.sluice_sockops), b->cgroup_fd,
		                       BPF_CGROUP_SOCK_OPS);
	if (b->verdict_attached)
		(void)bpf_prog_detach2(bpf_program__fd(b->skel->progs.sluice_sockmap_verdict),
		                       bpf_map__fd(b->skel->maps.sockmap_socks), BPF_SK_SKB_STREAM_VERDICT);
	if (b->moved) {
		snprintf(path, sizeof(path), "%s/cgroup.procs", b->home_cgroup);
		snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
		if (write_file(path, buf) < 0)
			sluice_log(SLUICE_LOG_WARN, "bpf", "cannot move back to cgroup %s: %s", b->home_cgroup,
			           strerror(errno));
	}
	if (b->cgroup_fd >= 0)
		close(b->cgroup_fd);
	/* Sockets still alive keep the cgroup referenced; rmdir only hides it. */
	if (b->cgroup_created && rmdir(b->cgroup) < 0 && errno != ENOENT)
		sluice_log(SLUICE_LOG_WARN, "bpf", "cannot remove cgroup %s: %s", b->cgroup, strerror(errno));
	if (b->pinned)
		bpf_object__for_each_map(m, b->skel->obj)
			if (!bpf_map__is_internal(m))
				(void)bpf_map__unpin(m, NULL);
	if (b->up)
		munmap(b->up, b->up_len);
	if (b->cl)
		munmap(b->cl, b->cl_len);
	if (b->pairs)
		munmap(b->pairs, b->pairs_len);
	if (b->sm_global)
		munmap(b->sm_global, b->sm_global_len);
	sluice_skel__destroy(b->skel);
	if (b->pin_dir_fd >= 0) {
		/* The directory stays (it may be a configured path); the lock
		 * goes with the fd. */
		close(b->pin_dir_fd);
	}
	free(b->up_slot);
	free(b->free_slots);
	free(b->slot_used);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

const char *sluice_bpf_cgroup_path(const struct sluice_bpf *b)
{
	return b->cgroup;
}

const char *sluice_bpf_pin_path(const struct sluice_bpf *b)
{
	return b->pin_path;
}

/* ---- upstream counters ------------------------------------------------------ */

uint32_t sluice_bpf_upstream_active(const struct sluice_bpf *b, unsigned pool, unsigned server)
{
	const struct sluice_bpf_upstream *u;
	uint64_t a;

	if (pool >= b->n_pools || server >= b->cfg->upstreams[pool].n_servers)
		return 0;
	u = &b->up[b->up_slot[pool][server]];
	a = sluice_bpf_active(&u->opened, &u->closed);
	return a > UINT32_MAX ? UINT32_MAX : (uint32_t)a;
}

int sluice_bpf_upstream_read(const struct sluice_bpf *b, unsigned pool, unsigned server,
                             struct sluice_bpf_upstream *out)
{
	const struct sluice_bpf_upstream *u;

	if (pool >= b->n_pools || server >= b->cfg->upstreams[pool].n_servers) {
		errno = EINVAL;
		return -1;
	}
	u = &b->up[b->up_slot[pool][server]];
	out->server = u->server;
	out->pad = 0;
	out->closed = __atomic_load_n(&u->closed, __ATOMIC_ACQUIRE);
	out->established = __atomic_load_n(&u->established, __ATOMIC_ACQUIRE);
	out->opened = __atomic_load_n(&u->opened, __ATOMIC_ACQUIRE);
	return 0;
}

/* ---- client counters --------------------------------------------------------- */

int sluice_bpf_client_get(struct sluice_bpf *b, unsigned entry, const char *name, uint32_t *slot)
{
	struct sluice_bpf_client *c;
	uint32_t s;

	pthread_mutex_lock(&b->lock);
	if (b->n_free == 0) {
		pthread_mutex_unlock(&b->lock);
		errno = ENOSPC;
		return SLUICE_ERR;
	}
	s = b->free_slots[--b->n_free];
	b->slot_used[s] = 1;
	pthread_mutex_unlock(&b->lock);
	/* Only the operator's labels: opened/closed are kernel-owned and
	 * already equal (a slot is free only at active 0), so a new owner
	 * starts at active 0 without a reset. */
	c = &b->cl[s];
	c->entry = entry;
	snprintf(c->name, sizeof(c->name), "%s", name ? name : "");
	*slot = s;
	return SLUICE_OK;
}

int sluice_bpf_client_put(struct sluice_bpf *b, uint32_t slot)
{
	int rc = SLUICE_OK;

	if (slot >= SLUICE_BPF_MAX_CLIENTS) {
		errno = EINVAL;
		return SLUICE_ERR;
	}
	pthread_mutex_lock(&b->lock);
	if (!b->slot_used[slot]) {
		errno = EINVAL;     /* a double put: a caller bug */
		rc = SLUICE_ERR;
	} else if (sluice_bpf_active(&b->cl[slot].opened, &b->cl[slot].closed) != 0) {
		rc = SLUICE_AGAIN;
	} else {
		b->slot_used[slot] = 0;
		b->free_slots[b->n_free++] = slot;
	}
	pthread_mutex_unlock(&b->lock);
	return rc;
}

int sluice_bpf_client_tag(struct sluice_bpf *b, int fd, uint32_t slot, uint32_t max_conns)
{
	struct sluice_bpf_client_open_ctx ctx = {
		.sock_fd = fd, .storage_fd = b->storage_fd, .slot = slot, .max_conns = max_conns,
	};
	LIBBPF_OPTS(bpf_test_run_opts, run, .ctx_in = &ctx, .ctx_size_in = sizeof(ctx));

	if (slot >= SLUICE_BPF_MAX_CLIENTS) {
		errno = EINVAL;
		return SLUICE_ERR;
	}
	/* The kernel copies the context back into ctx_in. */
	if (bpf_prog_test_run_opts(b->client_open_fd, &run) < 0)
		return SLUICE_ERR;
	if (ctx.result == -EDQUOT)
		return SLUICE_DECLINED;
	if (ctx.result < 0) {
		errno = -ctx.result;
		return SLUICE_ERR;
	}
	return SLUICE_OK;
}

uint32_t sluice_bpf_client_active(const struct sluice_bpf *b, uint32_t slot)
{
	uint64_t a;

	if (slot >= SLUICE_BPF_MAX_CLIENTS)
		return 0;
	a = sluice_bpf_active(&b->cl[slot].opened, &b->cl[slot].closed);
	return a > UINT32_MAX ? UINT32_MAX : (uint32_t)a;
}

/* ---- datapath totals ----------------------------------------------------------- */

int sluice_bpf_account(struct sluice_bpf *b, unsigned dp, uint64_t bytes_in, uint64_t bytes_out)
{
	struct sluice_bpf_account_ctx ctx = { .datapath = dp, .bytes_in = bytes_in, .bytes_out = bytes_out };
	LIBBPF_OPTS(bpf_test_run_opts, run, .ctx_in = &ctx, .ctx_size_in = sizeof(ctx));

	if (dp >= SLUICE_BPF_DP_MAX) {
		errno = EINVAL;
		return SLUICE_ERR;
	}
	if (bpf_prog_test_run_opts(b->account_fd, &run) < 0)
		return SLUICE_ERR;
	if (run.retval != 0) {
		errno = EINVAL;
		return SLUICE_ERR;
	}
	return SLUICE_OK;
}

int sluice_bpf_datapath_read(const struct sluice_bpf *b, unsigned dp, struct sluice_bpf_dp_stats *out)
{
	struct sluice_bpf_dp_stats *v;
	uint32_t key = dp;
	int i;

	memset(out, 0, sizeof(*out));
	v = calloc((size_t)b->ncpus, sizeof(*v));
	if (!v)
		return SLUICE_ERR;
	if (bpf_map_lookup_elem(b->dp_fd, &key, v) < 0) {
		free(v);
		return SLUICE_ERR;
	}
	for (i = 0; i < b->ncpus; i++) {
		out->conns += v[i].conns;
		out->bytes_in += v[i].bytes_in;
		out->bytes_out += v[i].bytes_out;
	}
	free(v);
	return SLUICE_OK;
}

/* ---- sockmap datapath ------------------------------------------------------------ */

int sluice_bpf_sockmap_handles(const struct sluice_bpf *b, struct sluice_bpf_sockmap_handles *out,
                               char *why, size_t whylen)
{
	if (!b->verdict_attached) {
		snprintf(why, whylen, "%s", b->sockmap_why[0] ? b->sockmap_why : "verdict not attached");
		return SLUICE_ERR;
	}
	out->socks_fd = bpf_map__fd(b->skel->maps.sockmap_socks);
	out->peers_fd = bpf_map__fd(b->skel->maps.sockmap_peers);
	out->ports_fd = bpf_map__fd(b->skel->maps.sockmap_ports);
	out->sock_pair_fd = bpf_map__fd(b->skel->maps.sockmap_sock_pair);
	out->rings_fd = bpf_map__fd(b->skel->maps.sockmap_rings);
	out->pairs = b->pairs;
	out->n_pairs = bpf_map__max_entries(b->skel->maps.sockmap_pairs);
	out->global = b->sm_global;
	return SLUICE_OK;
}
