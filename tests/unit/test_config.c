/* Unit tests for src/config.c: a full config resolves to the right values,
 * defaults fill in, durations parse, and every broken fixture under
 * tests/configs/ fails with exactly the message in tests/configs/expected.txt.
 * Run from the repository root. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define CONFIGS "tests/configs/"

static struct sluice_config *load_ok(const char *path)
{
	struct sluice_config *cfg = NULL;
	char err[1024];

	if (sluice_config_load(path, &cfg, err, sizeof(err)) != 0)
		fail_msg("%s: expected to load, got: %s", path, err);
	assert_non_null(cfg);
	return cfg;
}

static void assert_cidr(const struct sluice_cidr *c, int family, const char *net, unsigned prefix)
{
	uint8_t want[16] = { 0 };

	assert_int_equal(c->family, family);
	assert_int_equal(c->prefix, prefix);
	assert_int_equal(inet_pton(family, net, want), 1);
	assert_memory_equal(c->addr, want, family == AF_INET ? 4 : 16);
}

static void assert_addr(const struct sluice_sockaddr *sa, const char *want)
{
	char buf[64];

	assert_string_equal(sluice_addr_str((const struct sockaddr *)&sa->ss, buf, sizeof(buf)), want);
}

static void test_full_config(void **state)
{
	struct sluice_config *cfg = load_ok(CONFIGS "good_full.yaml");
	const struct sluice_listener_cfg *l;
	const struct sluice_client_cfg *c;
	(void)state;

	assert_string_equal(cfg->path, CONFIGS "good_full.yaml");
	assert_int_equal(cfg->workers, 3);
	assert_int_equal(cfg->log_level, SLUICE_LOG_DEBUG);
	assert_int_equal(cfg->log_format, SLUICE_LOG_TEXT);
	assert_int_equal(cfg->drain_ms, 120000);

	/* tls paths are resolved against the config file's directory */
	assert_string_equal(cfg->tls.ca, CONFIGS "files/ca.pem");
	assert_string_equal(cfg->tls.cert, CONFIGS "files/server.pem");
	assert_string_equal(cfg->tls.key, CONFIGS "files/server.key");
	assert_string_equal(cfg->tls.crl, CONFIGS "files/crl.pem");
	assert_int_equal(cfg->tls.verify_depth, 2);
	assert_false(cfg->tls.tickets);
	assert_int_equal(cfg->tls.ticket_lifetime_ms, 90000);
	assert_int_equal(cfg->bpf.mode, SLUICE_BPF_REQUIRE);
	assert_string_equal(cfg->bpf.pin_path, "/sys/fs/bpf/sluice-test");
	assert_string_equal(cfg->bpf.cgroup, "/sys/fs/cgroup/unified/sluice-test");

	assert_int_equal(cfg->n_upstreams, 2);
	assert_string_equal(cfg->upstreams[0].name, "web");
	assert_int_equal(cfg->upstreams[0].balance, SLUICE_BALANCE_LEAST_CONN);
	assert_int_equal(cfg->upstreams[0].n_servers, 2);
	assert_string_equal(cfg->upstreams[0].servers[0].address, "127.0.0.1:9001");
	assert_addr(&cfg->upstreams[0].servers[0].sa, "127.0.0.1:9001");
	assert_int_equal(cfg->upstreams[0].servers[0].weight, 1);
	assert_int_equal(cfg->upstreams[0].servers[1].weight, 2);
	assert_string_equal(cfg->upstreams[1].name, "db");
	assert_int_equal(cfg->upstreams[1].n_servers, 1);
	assert_addr(&cfg->upstreams[1].servers[0].sa, "[2001:db8::7]:5432");

	assert_int_equal(cfg->n_listeners, 2);
	l = &cfg->listeners[0];
	assert_string_equal(l->name, "web");
	assert_string_equal(l->listen, "127.0.0.1:5000");
	assert_addr(&l->sa, "127.0.0.1:5000");
	assert_int_equal(l->mode, SLUICE_MODE_MTLS);
	assert_int_equal(l->upstream, 0);
	assert_int_equal(l->n_allow, 2);
	assert_cidr(&l->allow[0], AF_INET, "10.0.0.0", 8);
	assert_cidr(&l->allow[1], AF_INET6, "2001:db8::", 32);
	assert_int_equal(l->n_deny, 1);
	assert_cidr(&l->deny[0], AF_INET, "10.9.9.9", 32);
	assert_int_equal(l->timeouts.handshake_ms, 1500);
	assert_int_equal(l->timeouts.connect_ms, 2000);
	assert_int_equal(l->timeouts.idle_ms, 3600000);
	assert_int_equal(l->timeouts.lifetime_ms, 86400000);
	l = &cfg->listeners[1];
	assert_string_equal(l->name, "raw");
	assert_addr(&l->sa, "[::1]:5001");
	assert_int_equal(l->mode, SLUICE_MODE_TCP);
	assert_int_equal(l->upstream, 1);
	assert_int_equal(l->n_allow, 0);
	assert_null(l->allow);
	assert_int_equal(l->n_deny, 0);
	assert_int_equal(l->timeouts.handshake_ms, 5000);  /* defaults */
	assert_int_equal(l->timeouts.connect_ms, 3000);
	assert_int_equal(l->timeouts.idle_ms, 300000);
	assert_int_equal(l->timeouts.lifetime_ms, 0);

	assert_int_equal(cfg->n_clients, 5);
	c = &cfg->clients[0];
	assert_string_equal(c->id, "CN=alice");
	assert_int_equal(c->kind, SLUICE_ID_CN);
	assert_string_equal(c->value, "alice");
	assert_int_equal(c->allow_mask, 0x1);
	assert_int_equal(c->max_conns, 10);
	assert_int_equal(c->conn_rate, 20);
	assert_int_equal(c->conn_burst, 40);
	c = &cfg->clients[1];
	assert_int_equal(c->kind, SLUICE_ID_URI);
	assert_string_equal(c->value, "spiffe://example.org/svc/*");
	assert_int_equal(c->allow_mask, 0x3);
	assert_int_equal(c->max_conns, 0);
	assert_int_equal(c->conn_rate, 5);
	assert_int_equal(c->conn_burst, 5);  /* burst defaults to the rate */
	c = &cfg->clients[2];
	assert_int_equal(c->kind, SLUICE_ID_DNS);
	assert_string_equal(c->value, "api.example.org");
	assert_int_equal(c->allow_mask, 0x2);
	assert_int_equal(c->conn_rate, 0);
	assert_int_equal(c->conn_burst, 0);
	c = &cfg->clients[3];
	assert_int_equal(c->kind, SLUICE_ID_IP);
	assert_null(c->value);
	assert_cidr(&c->cidr, AF_INET, "192.168.0.0", 16);
	c = &cfg->clients[4];
	assert_int_equal(c->kind, SLUICE_ID_ANY);
	assert_null(c->value);
	assert_int_equal(c->allow_mask, 0);

	sluice_config_free(cfg);
}

static void test_minimal_defaults(void **state)
{
	struct sluice_config *cfg = load_ok(CONFIGS "good_minimal.yaml");
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	(void)state;

	/* workers absent (= 0) means one per core */
	assert_int_equal(cfg->workers, ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu);
	assert_int_equal(cfg->log_level, SLUICE_LOG_INFO);
	assert_int_equal(cfg->log_format, SLUICE_LOG_JSON);
	assert_int_equal(cfg->drain_ms, 30000);
	assert_null(cfg->tls.ca);
	assert_null(cfg->tls.cert);
	assert_null(cfg->tls.key);
	assert_null(cfg->tls.crl);
	assert_int_equal(cfg->tls.verify_depth, 4);
	assert_int_equal(cfg->n_listeners, 1);
	assert_int_equal(cfg->listeners[0].timeouts.handshake_ms, 5000);
	assert_int_equal(cfg->listeners[0].timeouts.connect_ms, 3000);
	assert_int_equal(cfg->listeners[0].timeouts.idle_ms, 300000);
	assert_int_equal(cfg->listeners[0].timeouts.lifetime_ms, 0);
	assert_int_equal(cfg->upstreams[0].balance, SLUICE_BALANCE_LEAST_CONN);
	assert_int_equal(cfg->upstreams[0].servers[0].weight, 1);
	assert_int_equal(cfg->n_clients, 0);
	assert_null(cfg->clients);
	sluice_config_free(cfg);
}

/* A config loaded by a bare file name resolves tls paths against ".", and
 * one loaded by absolute path against its own directory. */
static void test_relative_and_absolute_paths(void **state)
{
	char cwd[PATH_MAX], abs[PATH_MAX + 64];
	struct sluice_config *cfg;
	(void)state;

	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(CONFIGS), 0);
	cfg = load_ok("good_full.yaml");
	assert_int_equal(chdir(cwd), 0);
	assert_string_equal(cfg->tls.ca, "files/ca.pem");
	sluice_config_free(cfg);

	snprintf(abs, sizeof(abs), "%s/" CONFIGS "good_full.yaml", cwd);
	cfg = load_ok(abs);
	snprintf(abs, sizeof(abs), "%s/" CONFIGS "files/server.key", cwd);
	assert_string_equal(cfg->tls.key, abs);
	sluice_config_free(cfg);
}

static void test_missing_file(void **state)
{
	struct sluice_config *cfg = (struct sluice_config *)&cfg;  /* must be reset */
	char err[256];
	(void)state;

	assert_int_equal(sluice_config_load(CONFIGS "does_not_exist.yaml", &cfg, err, sizeof(err)), -1);
	assert_null(cfg);
	assert_string_equal(err, CONFIGS "does_not_exist.yaml: cannot open: No such file or directory");
}

/* A short error buffer is truncated, never overrun; a zero-length one is
 * left alone. */
static void test_small_err_buffer(void **state)
{
	struct sluice_config *cfg;
	char err[16];
	(void)state;

	memset(err, 'x', sizeof(err));
	assert_int_equal(sluice_config_load(CONFIGS "bad_mode.yaml", &cfg, err, 8), -1);
	assert_string_equal(err, "tests/c");
	assert_int_equal(err[8], 'x');
	assert_int_equal(sluice_config_load(CONFIGS "bad_mode.yaml", &cfg, err, 0), -1);
	assert_int_equal(sluice_config_load(CONFIGS "missing.yaml", &cfg, err, 0), -1);
}

static void test_duration_parse(void **state)
{
	static const struct {
		const char *in;
		int rc;
		uint64_t ms;
	} rows[] = {
		{ "0", 0, 0 },
		{ "0s", 0, 0 },
		{ "0ms", 0, 0 },
		{ "00", 0, 0 },
		{ "300ms", 0, 300 },
		{ "5s", 0, 5000 },
		{ "2m", 0, 120000 },
		{ "1h", 0, 3600000 },
		{ "1d", 0, 86400000 },
		{ "300s", 0, 300000 },
		{ "18446744073709551615ms", 0, UINT64_MAX },
		{ "18446744073709551616ms", -1, 0 },        /* digits overflow */
		{ "18446744073709552s", -1, 0 },            /* unit overflow */
		{ "213503982335d", -1, 0 },
		{ "213503982334d", 0, UINT64_C(213503982334) * 86400000 },
		{ "99999999999999999999999999s", -1, 0 },
		{ "5", -1, 0 },                             /* bare non-zero: no unit */
		{ "30", -1, 0 },
		{ "", -1, 0 },
		{ "s", -1, 0 },
		{ "ms", -1, 0 },
		{ "5x", -1, 0 },
		{ "5S", -1, 0 },
		{ "5 s", -1, 0 },
		{ " 5s", -1, 0 },
		{ "5s ", -1, 0 },
		{ "-5s", -1, 0 },
		{ "+5s", -1, 0 },
		{ "1.5s", -1, 0 },
		{ "1h30m", -1, 0 },
		{ "5sec", -1, 0 },
		{ "5mss", -1, 0 },
	};
	(void)state;

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		uint64_t ms = 12345;
		int rc = sluice_duration_parse(rows[i].in, &ms);

		if (rc != rows[i].rc)
			fail_msg("duration \"%s\": expected rc %d, got %d", rows[i].in, rows[i].rc, rc);
		if (rc == 0 && ms != rows[i].ms)
			fail_msg("duration \"%s\": expected %llu ms, got %llu", rows[i].in,
			         (unsigned long long)rows[i].ms, (unsigned long long)ms);
	}
	assert_int_equal(sluice_duration_parse(NULL, &(uint64_t){ 0 }), -1);
}

/* The table every broken fixture is checked against. */
static void test_expected_errors(void **state)
{
	FILE *f = fopen(CONFIGS "expected.txt", "r");
	char line[2048];
	char listed[256][128];
	unsigned n_listed = 0, failures = 0;
	DIR *d;
	struct dirent *de;
	(void)state;

	if (f == NULL)
		fail_msg(CONFIGS "expected.txt: %s (run from the repository root)", strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL) {
		char path[512], want[2600], got[2048];
		struct sluice_config *cfg = NULL;
		char *tab;

		line[strcspn(line, "\n")] = '\0';
		if (line[0] == '#' || line[0] == '\0')
			continue;
		tab = strchr(line, '\t');
		if (tab == NULL)
			fail_msg("expected.txt: no tab in line \"%s\"", line);
		*tab = '\0';
		assert_true(n_listed < 256 && strlen(line) < sizeof(listed[0]));
		snprintf(listed[n_listed++], sizeof(listed[0]), "%.127s", line);
		snprintf(path, sizeof(path), CONFIGS "%.400s", line);
		snprintf(want, sizeof(want), "%s:%s", path, tab + 1);

		got[0] = '\0';
		if (sluice_config_load(path, &cfg, got, sizeof(got)) == 0) {
			print_error("%s: loaded, expected error\n  %s\n", path, want);
			sluice_config_free(cfg);
			failures++;
		} else if (strcmp(got, want) != 0) {
			print_error("%s:\n  expected: %s\n  got:      %s\n", path, want, got);
			failures++;
		} else if (cfg != NULL) {
			print_error("%s: failed but left *out set\n", path);
			failures++;
		}
	}
	fclose(f);

	/* Every bad_*.yaml has a row: a fixture nobody checks proves nothing. */
	d = opendir(CONFIGS);
	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		bool found = false;

		if (strncmp(de->d_name, "bad_", 4) != 0 || n < 5 ||
		    strcmp(de->d_name + n - 5, ".yaml") != 0)
			continue;
		for (unsigned i = 0; i < n_listed && !found; i++)
			found = strcmp(listed[i], de->d_name) == 0;
		if (!found) {
			print_error(CONFIGS "%s has no line in expected.txt\n", de->d_name);
			failures++;
		}
	}
	closedir(d);

	assert_true(n_listed >= 40);
	if (failures != 0)
		fail_msg("%u of %u fixtures gave the wrong result", failures, n_listed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_config),
		cmocka_unit_test(test_minimal_defaults),
		cmocka_unit_test(test_relative_and_absolute_paths),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_small_err_buffer),
		cmocka_unit_test(test_duration_parse),
		cmocka_unit_test(test_expected_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
