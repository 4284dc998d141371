/* libFuzzer target: arbitrary bytes as a configuration file.
 *
 * Each input is loaded (libyaml index pass, libcyaml schema pass, validation
 * and resolution), checked for the invariants a caller relies on, and freed.
 * Load errors are the expected outcome for almost every input; what must
 * never happen is a crash, a sanitizer report, a leak (LeakSanitizer runs
 * after each input), or a "successful" config that breaks an invariant.
 *
 * Feeding the loader:
 *   - If src/config.c provides sluice_config_load_mem() (declared weak here),
 *     the bytes are handed over in an exactly sized heap copy, so ASan sees
 *     any read past the end of the input.
 *   - Otherwise they are written to <tmpdir>/fuzz.yaml and loaded with the
 *     public sluice_config_load().  (read_file() there reads into a 1 MiB
 *     buffer, so an over-read of the input stays inside that buffer and is
 *     invisible to ASan: the in-memory entry point is the better harness.)
 *
 * tls.ca/cert/key/crl are opened by the loader (it checks they exist).  The
 * fuzzer must never make it open an arbitrary path (a FIFO would hang it, a
 * device could have side effects), so the target is linked with
 * -Wl,--wrap=open and, while a load runs, only paths inside a private temp
 * directory may be opened.  That directory holds files/ and certs/ copies of
 * the test PEMs so the seeds' relative tls paths resolve and the success
 * path is reachable. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

int sluice_config_load_mem(const char *name, const void *data, size_t len,
                           struct sluice_config **out, char *err, size_t errlen)
	__attribute__((weak));

int __real_open(const char *path, int flags, ...);
int __wrap_open(const char *path, int flags, ...);

static char tmpdir[256];
static char cfg_path[320];
static bool sandbox;
static bool verbose;    /* SLUICE_FUZZ_VERBOSE=1: print each outcome */

#define CHECK(cond)                                                                \
	do {                                                                       \
		if (!(cond)) {                                                     \
			fprintf(stderr, "fuzz_config: invariant failed: %s (%s:%d)\n", \
			        #cond, __FILE__, __LINE__);                            \
			abort();                                                   \
		}                                                                  \
	} while (0)

static bool path_allowed(const char *p)
{
	size_t n = strlen(tmpdir);

	if (strncmp(p, tmpdir, n) != 0 || p[n] != '/')
		return false;
	/* No way back out of the directory. */
	for (const char *s = p + n; (s = strstr(s, "/..")) != NULL; s += 3)
		if (s[3] == '/' || s[3] == '\0')
			return false;
	return true;
}

int __wrap_open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | __O_TMPFILE)) {
		va_list ap;

		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	if (sandbox && !path_allowed(path)) {
		errno = ENOENT;
		return -1;
	}
	return __real_open(path, flags, mode);
}

static void copy_file(const char *from, const char *to)
{
	char buf[65536];
	FILE *in = fopen(from, "rb"), *out;
	size_t n;

	if (in == NULL)
		return; /* seeds then fail at tls.*: still useful inputs */
	out = fopen(to, "wb");
	if (out != NULL) {
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			fwrite(buf, 1, n, out);
		fclose(out);
	}
	fclose(in);
}

static void setup_dir(const char *srcdir)
{
	static const char *const pems[] = { "ca.pem", "server.pem", "server.key", "crl.pem" };
	const char *base = getenv("TMPDIR");
	char sub[400], from[600], to[600];

	snprintf(tmpdir, sizeof(tmpdir), "%s/sluice-fuzz-config.XXXXXX",
	         base && *base ? base : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("fuzz_config: mkdtemp");
		exit(1);
	}
	snprintf(cfg_path, sizeof(cfg_path), "%s/fuzz.yaml", tmpdir);
	/* tests/configs use files/, sluice.example.yaml uses certs/. */
	for (int d = 0; d < 2; d++) {
		snprintf(sub, sizeof(sub), "%s/%s", tmpdir, d == 0 ? "files" : "certs");
		mkdir(sub, 0700);
		for (size_t i = 0; i < sizeof(pems) / sizeof(pems[0]); i++) {
			snprintf(from, sizeof(from), "%s/%s", srcdir, pems[i]);
			snprintf(to, sizeof(to), "%s/%s", sub, pems[i]);
			copy_file(from, to);
		}
	}
}

static void cleanup_dir(void)
{
	char cmd[400];

	/* tmpdir comes from mkdtemp: no shell metacharacters. */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (tmpdir[0] != '\0' && system(cmd) != 0)
		fprintf(stderr, "fuzz_config: could not remove %s\n", tmpdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *src = getenv("SLUICE_FUZZ_CERTS");

	(void)argc;
	(void)argv;
	verbose = getenv("SLUICE_FUZZ_VERBOSE") != NULL;
	setup_dir(src && *src ? src : "certs");
	atexit(cleanup_dir);
	return 0;
}

static void check_cidr(const struct sluice_cidr *c)
{
	CHECK(c->family == AF_INET || c->family == AF_INET6);
	CHECK(c->prefix <= (c->family == AF_INET ? 32u : 128u));
}

/* What every consumer of a loaded config takes for granted. */
static void check_config(const struct sluice_config *cfg)
{
	CHECK(cfg->path != NULL && strcmp(cfg->path, cfg_path) == 0);
	CHECK(cfg->workers >= 1 && cfg->workers <= 256);
	CHECK(cfg->log_level <= SLUICE_LOG_ERROR);
	CHECK(cfg->log_format <= SLUICE_LOG_TEXT);
	CHECK(cfg->n_upstreams >= 1 && cfg->n_upstreams <= SLUICE_MAX_POOLS);
	CHECK(cfg->n_listeners >= 1);
	CHECK(cfg->tls.verify_depth >= 1 && cfg->tls.verify_depth <= 32);
	CHECK(cfg->tls.ktls <= SLUICE_KTLS_REQUIRE);

	for (unsigned i = 0; i < cfg->n_upstreams; i++) {
		const struct sluice_upstream_cfg *u = &cfg->upstreams[i];

		CHECK(u->name != NULL && u->name[0] != '\0');
		CHECK(u->n_servers >= 1 && u->n_servers <= SLUICE_MAX_SERVERS);
		for (unsigned k = 0; k < i; k++)
			CHECK(strcmp(cfg->upstreams[k].name, u->name) != 0);
		for (unsigned j = 0; j < u->n_servers; j++) {
			const struct sluice_server_cfg *s = &u->servers[j];

			CHECK(s->address != NULL);
			CHECK(s->weight >= 1 && s->weight <= 1000);
			CHECK(s->sa.ss.ss_family == AF_INET || s->sa.ss.ss_family == AF_INET6);
		}
	}
	for (unsigned i = 0; i < cfg->n_listeners; i++) {
		const struct sluice_listener_cfg *l = &cfg->listeners[i];

		CHECK(l->name != NULL && l->listen != NULL);
		CHECK(l->upstream < cfg->n_upstreams);
		CHECK(l->mode == SLUICE_MODE_MTLS || l->mode == SLUICE_MODE_TCP);
		CHECK(l->sa.ss.ss_family == AF_INET || l->sa.ss.ss_family == AF_INET6);
		if (l->mode == SLUICE_MODE_MTLS)
			CHECK(cfg->tls.ca != NULL && cfg->tls.cert != NULL && cfg->tls.key != NULL);
		for (unsigned k = 0; k < l->n_allow; k++)
			check_cidr(&l->allow[k]);
		for (unsigned k = 0; k < l->n_deny; k++)
			check_cidr(&l->deny[k]);
		for (unsigned k = 0; k < i; k++) {
			CHECK(strcmp(cfg->listeners[k].name, l->name) != 0);
			CHECK(!(cfg->listeners[k].sa.len == l->sa.len &&
			        memcmp(&cfg->listeners[k].sa.ss, &l->sa.ss, l->sa.len) == 0));
		}
	}
	for (unsigned i = 0; i < cfg->n_clients; i++) {
		const struct sluice_client_cfg *c = &cfg->clients[i];

		CHECK(c->id != NULL);
		if (cfg->n_upstreams < 64)
			CHECK((c->allow_mask >> cfg->n_upstreams) == 0);
		CHECK(c->conn_burst == 0 || c->conn_rate != 0);
		switch (c->kind) {
		case SLUICE_ID_ANY:
			CHECK(c->value == NULL);
			break;
		case SLUICE_ID_IP:
			CHECK(c->value == NULL);
			check_cidr(&c->cidr);
			break;
		case SLUICE_ID_CN:
		case SLUICE_ID_URI:
		case SLUICE_ID_DNS:
			CHECK(c->value != NULL && c->value[0] != '\0');
			break;
		default:
			CHECK(!"unknown identity kind");
		}
	}
	{
		const char *files[] = { cfg->tls.ca, cfg->tls.cert, cfg->tls.key, cfg->tls.crl };

		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
			CHECK(files[i] == NULL || path_allowed(files[i]));
	}
}

static int write_input(const uint8_t *data, size_t size)
{
	int fd = open(cfg_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t off = 0;

	if (fd < 0)
		return -1;
	while (off < size) {
		ssize_t n = write(fd, data + off, size - off);

		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	return close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sluice_config *cfg = (struct sluice_config *)1;
	char err[600];
	int rc;

	if (sluice_config_load_mem != NULL) {
		/* An exact-size copy: libFuzzer's own buffer is exact too, but
		 * a copy keeps the loader from depending on it staying put. */
		void *copy = malloc(size ? size : 1);

		if (copy == NULL)
			return 0;
		memcpy(copy, data, size);
		sandbox = true;
		rc = sluice_config_load_mem(cfg_path, copy, size, &cfg, err, sizeof(err));
		sandbox = false;
		free(copy);
	} else {
		if (write_input(data, size) < 0) {
			perror("fuzz_config: writing the input");
			abort();
		}
		sandbox = true;
		rc = sluice_config_load(cfg_path, &cfg, err, sizeof(err));
		sandbox = false;
	}

	if (verbose)
		fprintf(stderr, "fuzz_config: %s\n", rc == 0 ? "loaded" : err);
	if (rc == 0) {
		CHECK(cfg != NULL);
		CHECK(err[0] == '\0');
		check_config(cfg);
		sluice_config_free(cfg);
	} else {
		CHECK(rc == -1);
		CHECK(cfg == NULL);
		/* "FILE:LINE:COLUMN: message" (or "FILE: why" for I/O). */
		CHECK(strncmp(err, cfg_path, strlen(cfg_path)) == 0 && err[strlen(cfg_path)] == ':');
		CHECK(strlen(err) > strlen(cfg_path) + 1);
	}
	return 0;
}
