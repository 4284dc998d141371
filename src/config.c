/* Configuration: YAML file -> validated, resolved struct sluice_config.
 *
 * Owns the YAML schema, every check an operator's file must pass, and the
 * error messages for each ("FILE:LINE:COLUMN: path: what is wrong").
 *
 * Loading happens in three passes over one in-memory copy of the file:
 *  1. libyaml's event parser builds a small index from each node's path
 *     ("listeners[0].timeouts.idle") to its key and value positions.  This pass
 *     also reports syntax errors, duplicate keys and aliases, with exact
 *     positions.
 *  2. libcyaml loads the file against the schema below into "raw" structs in
 *     which every scalar is a string.  Its log output is captured: the error
 *     line says what went wrong and the backtrace says where (as a path; its
 *     own line/column numbers point at whatever event it last saw, so the
 *     position comes from the index instead).
 *  3. Validation walks the raw structs, parses strings into numbers,
 *     durations, addresses and CIDRs, resolves names into indices, and builds
 *     the final config.  Each check reports against a path and the index gives
 *     its position.
 *
 * Numbers are loaded as strings and parsed here rather than as cyaml INTs so
 * that "010" is ten (not octal eight), absent differs from 0, and range errors
 * name the allowed range. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cyaml/cyaml.h>
#include <yaml.h>

#include "common.h"
#include "config.h"

#define MAX_FILE_BYTES (1u << 20)  /* a config larger than this is a mistake */
#define MAX_DEPTH      32
#define MAX_PATH_LEN   512
#define MAX_NAME_LEN   64
#define MAX_WORKERS    256
#define MAX_WEIGHT     1000
#define MAX_VERIFY_DEPTH 32
#define DEFAULT_TICKET_LIFETIME_MS (5 * 60 * 1000ULL)   /* as nginx's ssl_session_timeout */
#define MAX_TICKET_LIFETIME_MS (7 * 24 * 3600 * 1000ULL)
/* A cached session with its parsed client certificate costs ~11.5 KiB of
 * RSS under OpenSSL 3.0 (measured: docs/architecture.md), so the default
 * holds at most ~56 MiB; HAProxy's 20,000 are serialized sessions. */
#define DEFAULT_SESSION_CACHE 5000
#define MAX_SESSION_CACHE 10000000
#define MAX_DIR_LEN    256   /* bpf.pin_path, bpf.cgroup: room for file names below */

/* ---- raw form, as libcyaml loads it (every scalar a string, NULL = absent) */

struct raw_timeouts {
	char *handshake;
	char *connect;
	char *idle;
	char *lifetime;
};

struct raw_listener {
	char *name;
	char *listen;
	char *mode;
	char *upstream;
	char **allow_cidrs;
	unsigned allow_cidrs_count;
	char **deny_cidrs;
	unsigned deny_cidrs_count;
	struct raw_timeouts *timeouts;
	char *datapath;
};

struct raw_server {
	char *address;
	char *weight;
};

struct raw_upstream {
	char *name;
	char *balance;
	struct raw_server *servers;
	unsigned servers_count;
};

struct raw_client {
	char *id;
	char **allow;
	unsigned allow_count;
	char *max_conns;
	char *conn_rate;
	char *conn_burst;
};

struct raw_tls {
	char *ca;
	char *cert;
	char *key;
	char *crl;
	char *verify_depth;
	char *ktls;
	char *tickets;
	char *ticket_lifetime;
	char *session_cache;
};

struct raw_bpf {
	char *mode;
	char *pin_path;
	char *cgroup;
	char *sockmap_pair_cap;
	char *sockmap_hard_cap;
	char *sockmap_global_cap;
};

struct raw_log {
	char *level;
	char *format;
};

struct raw_config {
	char *workers;
	struct raw_log *log;
	char *drain;
	struct raw_tls *tls;
	struct raw_bpf *bpf;
	struct raw_listener *listeners;
	unsigned listeners_count;
	struct raw_upstream *upstreams;
	unsigned upstreams_count;
	struct raw_client *clients;
	unsigned clients_count;
};

/* ---- schema */

#define STR(key, flags, type, member) \
	CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER | (flags), type, member, 0, CYAML_UNLIMITED)
#define OPT CYAML_FLAG_OPTIONAL
#define REQ CYAML_FLAG_DEFAULT

static const cyaml_schema_value_t string_entry = {
	CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t timeouts_fields[] = {
	STR("handshake", OPT, struct raw_timeouts, handshake),
	STR("connect", OPT, struct raw_timeouts, connect),
	STR("idle", OPT, struct raw_timeouts, idle),
	STR("lifetime", OPT, struct raw_timeouts, lifetime),
	CYAML_FIELD_END
};

static const cyaml_schema_field_t listener_fields[] = {
	STR("name", REQ, struct raw_listener, name),
	STR("listen", REQ, struct raw_listener, listen),
	STR("mode", REQ, struct raw_listener, mode),
	STR("upstream", REQ, struct raw_listener, upstream),
	CYAML_FIELD_SEQUENCE("allow_cidrs", CYAML_FLAG_POINTER | OPT, struct raw_listener,
	                     allow_cidrs, &string_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_SEQUENCE("deny_cidrs", CYAML_FLAG_POINTER | OPT, struct raw_listener,
	                     deny_cidrs, &string_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_MAPPING_PTR("timeouts", OPT, struct raw_listener, timeouts, timeouts_fields),
	STR("datapath", OPT, struct raw_listener, datapath),
	CYAML_FIELD_END
};

static const cyaml_schema_value_t listener_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_listener, listener_fields),
};

static const cyaml_schema_field_t server_fields[] = {
	STR("address", REQ, struct raw_server, address),
	STR("weight", OPT, struct raw_server, weight),
	CYAML_FIELD_END
};

static const cyaml_schema_value_t server_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_server, server_fields),
};

static const cyaml_schema_field_t upstream_fields[] = {
	STR("name", REQ, struct raw_upstream, name),
	STR("balance", OPT, struct raw_upstream, balance),
	CYAML_FIELD_SEQUENCE("servers", CYAML_FLAG_POINTER, struct raw_upstream, servers,
	                     &server_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_END
};

static const cyaml_schema_value_t upstream_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_upstream, upstream_fields),
};

static const cyaml_schema_field_t client_fields[] = {
	STR("id", REQ, struct raw_client, id),
	CYAML_FIELD_SEQUENCE("allow", CYAML_FLAG_POINTER, struct raw_client, allow,
	                     &string_entry, 0, CYAML_UNLIMITED),
	STR("max_conns", OPT, struct raw_client, max_conns),
	STR("conn_rate", OPT, struct raw_client, conn_rate),
	STR("conn_burst", OPT, struct raw_client, conn_burst),
	CYAML_FIELD_END
};

static const cyaml_schema_value_t client_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_client, client_fields),
};

static const cyaml_schema_field_t tls_fields[] = {
	STR("ca", OPT, struct raw_tls, ca),
	STR("cert", OPT, struct raw_tls, cert),
	STR("key", OPT, struct raw_tls, key),
	STR("crl", OPT, struct raw_tls, crl),
	STR("verify_depth", OPT, struct raw_tls, verify_depth),
	STR("ktls", OPT, struct raw_tls, ktls),
	STR("tickets", OPT, struct raw_tls, tickets),
	STR("ticket_lifetime", OPT, struct raw_tls, ticket_lifetime),
	STR("session_cache", OPT, struct raw_tls, session_cache),
	CYAML_FIELD_END
};

static const cyaml_schema_field_t bpf_fields[] = {
	STR("mode", OPT, struct raw_bpf, mode),
	STR("pin_path", OPT, struct raw_bpf, pin_path),
	STR("cgroup", OPT, struct raw_bpf, cgroup),
	STR("sockmap_pair_cap", OPT, struct raw_bpf, sockmap_pair_cap),
	STR("sockmap_hard_cap", OPT, struct raw_bpf, sockmap_hard_cap),
	STR("sockmap_global_cap", OPT, struct raw_bpf, sockmap_global_cap),
	CYAML_FIELD_END
};

static const cyaml_schema_field_t log_fields[] = {
	STR("level", OPT, struct raw_log, level),
	STR("format", OPT, struct raw_log, format),
	CYAML_FIELD_END
};

static const cyaml_schema_field_t top_fields[] = {
	STR("workers", OPT, struct raw_config, workers),
	CYAML_FIELD_MAPPING_PTR("log", OPT, struct raw_config, log, log_fields),
	STR("drain", OPT, struct raw_config, drain),
	CYAML_FIELD_MAPPING_PTR("tls", OPT, struct raw_config, tls, tls_fields),
	CYAML_FIELD_MAPPING_PTR("bpf", OPT, struct raw_config, bpf, bpf_fields),
	CYAML_FIELD_SEQUENCE("listeners", CYAML_FLAG_POINTER, struct raw_config, listeners,
	                     &listener_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_SEQUENCE("upstreams", CYAML_FLAG_POINTER, struct raw_config, upstreams,
	                     &upstream_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_SEQUENCE("clients", CYAML_FLAG_POINTER | OPT, struct raw_config, clients,
	                     &client_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_END
};

static const cyaml_schema_value_t top_schema = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct raw_config, top_fields),
};

/* ---- load context: the position index, the captured cyaml log, the error */

struct loc {
	unsigned line, col;  /* 1-based */
};

struct node_pos {
	char *path;
	struct loc key;       /* the key naming this node, if it has one */
	struct loc val;       /* where the node itself starts */
	bool has_key;
	bool empty;           /* a null/empty scalar ("key:" with nothing after) */
};

enum frame_kind { FRAME_FIELD, FRAME_ENTRY, FRAME_MAPPING };

struct cy_frame {
	enum frame_kind kind;
	char name[MAX_NAME_LEN + 1];
	unsigned index;        /* cyaml counts sequence entries from 1 */
};

struct load_ctx {
	const char *file;
	char *err;
	size_t errlen;
	bool failed;

	struct node_pos *nodes;
	size_t n_nodes, cap_nodes;

	char cy_msg[512];      /* cyaml's first error line, "Load: " stripped */
	bool cy_have_msg;
	bool cy_in_backtrace;
	struct cy_frame frames[MAX_DEPTH];
	unsigned n_frames;
	bool frames_truncated;
};

enum where { AT_VALUE, AT_KEY };

static void fail_at(struct load_ctx *c, struct loc at, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail_path(struct load_ctx *c, const char *path, enum where w, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Only the first error is kept: later ones are often consequences of it. */
static void fail_at(struct load_ctx *c, struct loc at, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (c->failed)
		return;
	c->failed = true;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (c->errlen > 0)
		snprintf(c->err, c->errlen, "%s:%u:%u: %s", c->file, at.line, at.col, msg);
}

static const struct node_pos *find_node(const struct load_ctx *c, const char *path)
{
	for (size_t i = 0; i < c->n_nodes; i++)
		if (strcmp(c->nodes[i].path, path) == 0)
			return &c->nodes[i];
	return NULL;
}

/* The node at path, or failing that its nearest recorded ancestor, so an
 * error always points somewhere sensible. */
static const struct node_pos *find_near(const struct load_ctx *c, const char *path)
{
	char buf[MAX_PATH_LEN];
	const struct node_pos *n;

	snprintf(buf, sizeof(buf), "%s", path);
	for (;;) {
		char *dot, *br, *cut;

		n = find_node(c, buf);
		if (n != NULL || buf[0] == '\0')
			return n;
		dot = strrchr(buf, '.');
		br = strrchr(buf, '[');
		cut = dot > br ? dot : br;
		if (cut == NULL)
			buf[0] = '\0';
		else
			*cut = '\0';
	}
}

static struct loc pos_of(const struct load_ctx *c, const char *path, enum where w)
{
	const struct node_pos *n = find_near(c, path);
	struct loc start = { 1, 1 };

	if (n == NULL)
		return start;
	if (w == AT_KEY && n->has_key)
		return n->key;
	return n->val;
}

static void fail_path(struct load_ctx *c, const char *path, enum where w, const char *fmt, ...)
{
	char msg[448];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (path[0] == '\0')
		fail_at(c, pos_of(c, path, w), "%s", msg);
	else
		fail_at(c, pos_of(c, path, w), "%s: %s", path, msg);
}

/* ---- pass 1: position index from libyaml events */

static struct loc mark_loc(yaml_mark_t m)
{
	struct loc l = { (unsigned)m.line + 1, (unsigned)m.column + 1 };
	return l;
}

static int index_add(struct load_ctx *c, const char *path, const struct loc *key,
                     struct loc val, bool empty)
{
	struct node_pos *n;

	if (c->n_nodes == c->cap_nodes) {
		size_t cap = c->cap_nodes ? c->cap_nodes * 2 : 64;
		struct node_pos *v = realloc(c->nodes, cap * sizeof(*v));

		if (v == NULL)
			return -1;
		c->nodes = v;
		c->cap_nodes = cap;
	}
	n = &c->nodes[c->n_nodes];
	n->path = strdup(path);
	if (n->path == NULL)
		return -1;
	n->has_key = key != NULL;
	n->key = key ? *key : val;
	n->val = val;
	n->empty = empty;
	c->n_nodes++;
	return 0;
}

static void index_free(struct load_ctx *c)
{
	for (size_t i = 0; i < c->n_nodes; i++)
		free(c->nodes[i].path);
	free(c->nodes);
	c->nodes = NULL;
	c->n_nodes = c->cap_nodes = 0;
}

static bool scalar_is_null(const yaml_event_t *ev)
{
	const char *v = (const char *)ev->data.scalar.value;

	if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
	       strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

struct iframe {
	bool is_map;
	bool want_key;
	unsigned next_index;
	size_t plen;          /* length of this collection's path */
	struct loc key;       /* the pending key (maps) */
};

/* Appends to path; false if it would not fit. */
static bool path_append(char *path, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static bool path_append(char *path, size_t len, const char *fmt, ...)
{
	size_t used = strlen(path);
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(path + used, len - used, fmt, ap);
	va_end(ap);
	return n >= 0 && (size_t)n < len - used;
}

static void syntax_error(struct load_ctx *c, const yaml_parser_t *p, const unsigned char *data)
{
	const char *problem = p->problem ? p->problem : "unknown error";
	struct loc at = mark_loc(p->problem_mark);

	if (p->error == YAML_READER_ERROR) {
		/* Encoding errors carry a byte offset, not a mark. */
		at.line = at.col = 1;
		for (size_t i = 0; i < p->problem_offset; i++) {
			if (data[i] == '\n') {
				at.line++;
				at.col = 1;
			} else if ((data[i] & 0xc0) != 0x80) {
				at.col++;
			}
		}
		fail_at(c, at, "YAML syntax error: %s", problem);
	} else if (p->context != NULL) {
		/* The context says what was open, e.g. the quoted scalar that
		 * never closed, which is usually where the fix belongs. */
		struct loc from = mark_loc(p->context_mark);

		fail_at(c, at, "YAML syntax error: %s %s that starts at line %u, column %u",
		        problem, p->context, from.line, from.col);
	} else {
		fail_at(c, at, "YAML syntax error: %s", problem);
	}
}

static int index_build(struct load_ctx *c, const unsigned char *data, size_t len)
{
	struct iframe stack[MAX_DEPTH];
	unsigned depth = 0;
	char path[MAX_PATH_LEN] = "";
	yaml_parser_t parser;
	unsigned docs = 0;
	bool have_root = false, done = false;
	int rc = -1;

	if (!yaml_parser_initialize(&parser)) {
		fail_at(c, (struct loc){ 1, 1 }, "out of memory");
		return -1;
	}
	yaml_parser_set_input_string(&parser, data, len);

	while (!done) {
		yaml_event_t ev;
		struct loc at;
		bool is_node, is_collection;

		if (!yaml_parser_parse(&parser, &ev)) {
			syntax_error(c, &parser, data);
			goto cleanup;
		}
		at = mark_loc(ev.start_mark);
		is_collection = ev.type == YAML_MAPPING_START_EVENT ||
		                ev.type == YAML_SEQUENCE_START_EVENT;
		is_node = is_collection || ev.type == YAML_SCALAR_EVENT;

		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			done = true;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (++docs > 1) {
				fail_at(c, at, "only one YAML document is allowed");
				yaml_event_delete(&ev);
				goto cleanup;
			}
			break;
		case YAML_ALIAS_EVENT:
			/* Refused so that each value is written where it applies
			 * and every error has exactly one position. */
			fail_at(c, at, "YAML aliases are not supported");
			yaml_event_delete(&ev);
			goto cleanup;
		case YAML_MAPPING_END_EVENT:
		case YAML_SEQUENCE_END_EVENT:
			depth--;
			break;
		default:
			break;
		}

		if (is_node) {
			struct iframe *top = depth ? &stack[depth - 1] : NULL;
			bool ok = true;

			if (top == NULL) {
				if (have_root || ev.type != YAML_MAPPING_START_EVENT) {
					fail_at(c, at, "the configuration must be a mapping of keys");
					yaml_event_delete(&ev);
					goto cleanup;
				}
				have_root = true;
				ok = index_add(c, "", NULL, at, false) == 0;
			} else if (top->is_map && top->want_key) {
				const char *k = (const char *)ev.data.scalar.value;

				if (ev.type != YAML_SCALAR_EVENT) {
					fail_at(c, at, "mapping keys must be plain scalars");
					yaml_event_delete(&ev);
					goto cleanup;
				}
				path[top->plen] = '\0';
				if (!path_append(path, sizeof(path), top->plen ? ".%s" : "%s", k)) {
					fail_at(c, at, "key path too long");
					yaml_event_delete(&ev);
					goto cleanup;
				}
				if (find_node(c, path) != NULL) {
					fail_at(c, at, "%s: duplicate key", path);
					yaml_event_delete(&ev);
					goto cleanup;
				}
				top->key = at;
				top->want_key = false;
				is_collection = false;  /* a key opens nothing */
			} else if (top->is_map) {
				ok = index_add(c, path, &top->key, at,
				               ev.type == YAML_SCALAR_EVENT && scalar_is_null(&ev)) == 0;
				top->want_key = true;
			} else {
				path[top->plen] = '\0';
				if (!path_append(path, sizeof(path), "[%u]", top->next_index++)) {
					fail_at(c, at, "key path too long");
					yaml_event_delete(&ev);
					goto cleanup;
				}
				ok = index_add(c, path, NULL, at,
				               ev.type == YAML_SCALAR_EVENT && scalar_is_null(&ev)) == 0;
			}
			if (!ok) {
				fail_at(c, at, "out of memory");
				yaml_event_delete(&ev);
				goto cleanup;
			}
			if (is_collection) {
				if (depth == MAX_DEPTH) {
					fail_at(c, at, "nested too deeply");
					yaml_event_delete(&ev);
					goto cleanup;
				}
				stack[depth].is_map = ev.type == YAML_MAPPING_START_EVENT;
				stack[depth].want_key = true;
				stack[depth].next_index = 0;
				stack[depth].plen = strlen(path);
				depth++;
			}
		}
		yaml_event_delete(&ev);
	}

	if (!have_root) {
		fail_at(c, (struct loc){ 1, 1 }, "empty configuration");
		goto cleanup;
	}
	rc = 0;
cleanup:
	yaml_parser_delete(&parser);
	return rc;
}

/* ---- pass 2: libcyaml, with its log turned into one positioned message */

static void cy_log(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
	struct load_ctx *c = ctx;
	char line[512];
	size_t n;

	if (level < CYAML_LOG_ERROR)
		return;
	vsnprintf(line, sizeof(line), fmt, args);
	n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == ' '))
		line[--n] = '\0';

	if (strcmp(line, "Load: Backtrace:") == 0) {
		c->cy_in_backtrace = true;
		return;
	}
	if (c->cy_in_backtrace && strncmp(line, "  in ", 5) == 0) {
		struct cy_frame f = { 0 };
		unsigned l, col;

		if (c->n_frames == MAX_DEPTH) {
			c->frames_truncated = true;
			return;
		}
		if (sscanf(line, "  in mapping field '%64[^']' (line: %u, column: %u)",
		           f.name, &l, &col) == 3)
			f.kind = FRAME_FIELD;
		else if (sscanf(line, "  in sequence entry '%u'", &f.index) == 1)
			f.kind = FRAME_ENTRY;
		else
			f.kind = FRAME_MAPPING;
		c->frames[c->n_frames++] = f;
		return;
	}
	if (!c->cy_have_msg) {
		const char *m = strncmp(line, "Load: ", 6) == 0 ? line + 6 : line;

		snprintf(c->cy_msg, sizeof(c->cy_msg), "%s", m);
		c->cy_have_msg = true;
	}
}

/* The backtrace (innermost first) as a path, skipping the innermost `skip`
 * frames. */
static void frames_path(const struct load_ctx *c, unsigned skip, char *path, size_t len)
{
	path[0] = '\0';
	for (unsigned i = c->n_frames; i > skip; i--) {
		const struct cy_frame *f = &c->frames[i - 1];

		if (f->kind == FRAME_FIELD)
			path_append(path, len, path[0] ? ".%s" : "%s", f->name);
		else if (f->kind == FRAME_ENTRY)
			path_append(path, len, "[%u]", f->index ? f->index - 1 : 0);
	}
}

static const char *type_words(const char *t)
{
	if (strncmp(t, "MAPPING", 7) == 0)
		return "a mapping";
	if (strncmp(t, "SEQUENCE", 8) == 0)
		return "a list";
	if (strncmp(t, "ALIAS", 5) == 0)
		return "an alias";
	return "a single value";
}

static void cy_report(struct load_ctx *c, cyaml_err_t e)
{
	char path[MAX_PATH_LEN];
	const char *m = c->cy_msg;
	char want[32], got[32];

	if (!c->cy_have_msg) {
		fail_at(c, (struct loc){ 1, 1 }, "cannot load: %s", cyaml_strerror(e));
		return;
	}
	frames_path(c, 0, path, sizeof(path));

	if (strncmp(m, "Unexpected key: ", 16) == 0) {
		path_append(path, sizeof(path), path[0] ? ".%s" : "%s", m + 16);
		fail_path(c, path, AT_KEY, "unknown key");
	} else if (strncmp(m, "Missing required mapping field: ", 32) == 0) {
		/* The innermost frame names the mapping's last key read, not
		 * the mapping itself. */
		unsigned skip = c->n_frames && c->frames[0].kind == FRAME_FIELD ? 1 : 0;
		char key[MAX_PATH_LEN];

		frames_path(c, skip, path, sizeof(path));
		memcpy(key, path, sizeof(key));
		path_append(key, sizeof(key), key[0] ? ".%s" : "%s", m + 32);
		fail_at(c, pos_of(c, path, AT_KEY), "%s: required key is missing", key);
	} else if (sscanf(m, "Expecting %31[A-Z_], got event: %31[A-Z_]", want, got) == 2) {
		const struct node_pos *n = find_node(c, path);

		fail_path(c, path, AT_VALUE, "expected %s, got %s", type_words(want),
		          n && n->empty ? "nothing" : type_words(got));
	} else {
		fail_path(c, path, AT_VALUE, "%s", m);
	}
}

/* ---- pass 3: validation and resolution */

static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (s == NULL || *s == '\0')
		return -1;
	for (; *s; s++) {
		unsigned d;

		if (*s < '0' || *s > '9')
			return -1;
		d = (unsigned)(*s - '0');
		if (v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

int sluice_duration_parse(const char *s, uint64_t *ms)
{
	static const struct {
		const char *suffix;
		uint64_t ms;
	} units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	uint64_t v = 0;
	const char *p = s;

	if (s == NULL)
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	if (p == s)
		return -1;
	if (*p == '\0') {
		/* A bare number has no unit; only zero means the same in all. */
		if (v != 0)
			return -1;
		*ms = 0;
		return 0;
	}
	for (size_t i = 0; i < SLUICE_ARRAY_LEN(units); i++) {
		if (strcmp(p, units[i].suffix) == 0) {
			if (v > UINT64_MAX / units[i].ms)
				return -1;
			*ms = v * units[i].ms;
			return 0;
		}
	}
	return -1;
}

/* Names appear in logs and metrics labels: keep them plain. */
static bool name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > MAX_NAME_LEN)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

static int check_name(struct load_ctx *c, const char *path, const char *s)
{
	if (name_ok(s))
		return 0;
	fail_path(c, path, AT_VALUE, "bad name \"%s\" (use 1-%d letters, digits, '.', '_' or '-')",
	          s, MAX_NAME_LEN);
	return -1;
}

static int get_uint(struct load_ctx *c, const char *path, const char *s, uint64_t min,
                    uint64_t max, uint64_t dflt, uint64_t *out)
{
	if (s == NULL) {
		*out = dflt;
		return 0;
	}
	if (parse_uint(s, max, out) == 0 && *out >= min)
		return 0;
	fail_path(c, path, AT_VALUE, "expected an integer %llu..%llu, got \"%s\"",
	          (unsigned long long)min, (unsigned long long)max, s);
	return -1;
}

static int get_duration(struct load_ctx *c, const char *path, const char *s, uint64_t dflt,
                        uint64_t *out)
{
	if (s == NULL) {
		*out = dflt;
		return 0;
	}
	if (sluice_duration_parse(s, out) == 0)
		return 0;
	fail_path(c, path, AT_VALUE,
	          "bad duration \"%s\" (an integer with a unit: ms, s, m, h or d; or 0)", s);
	return -1;
}

/* A byte size: an integer with an optional K, M or G suffix (powers of
 * 1024), within min..max. */
static int get_size(struct load_ctx *c, const char *path, const char *s, uint64_t min, uint64_t max,
                    uint64_t dflt, uint64_t *out)
{
	unsigned long long v;
	unsigned shift = 0;
	char *end;

	if (s == NULL) {
		*out = dflt;
		return 0;
	}
	errno = 0;
	v = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : 0;
	if (s[0] >= '0' && s[0] <= '9' && errno == 0) {
		if (*end == 'K')
			shift = 10, end++;
		else if (*end == 'M')
			shift = 20, end++;
		else if (*end == 'G')
			shift = 30, end++;
		if (*end == '\0' && v <= (UINT64_MAX >> shift) && (v << shift) >= min && (v << shift) <= max) {
			*out = (uint64_t)v << shift;
			return 0;
		}
	}
	fail_path(c, path, AT_VALUE, "expected a size %llu..%llu bytes (an integer, optionally with K, M or G), got \"%s\"",
	          (unsigned long long)min, (unsigned long long)max, s);
	return -1;
}

/* Picks s out of names[] (a NULL-terminated list); *out is its index. */
static int get_choice(struct load_ctx *c, const char *path, const char *what, const char *s,
                      const char *const *names, const char *hint, int dflt, int *out)
{
	if (s == NULL) {
		*out = dflt;
		return 0;
	}
	for (int i = 0; names[i] != NULL; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	fail_path(c, path, AT_VALUE, "unknown %s \"%s\" (%s)", what, s, hint);
	return -1;
}

/* Relative paths are relative to the config file, so a config and its certs
 * can move together and the result does not depend on the working directory. */
static char *resolve_path(const char *cfg_path, const char *p)
{
	const char *slash = strrchr(cfg_path, '/');
	char *out;

	if (p[0] == '/' || slash == NULL)
		return strdup(p);
	if (asprintf(&out, "%.*s/%s", (int)(slash - cfg_path), cfg_path, p) < 0)
		return NULL;
	return out;
}

static int get_file(struct load_ctx *c, const char *path, const char *cfg_path, const char *s,
                    char **out)
{
	struct stat st;
	char *resolved;
	int fd;

	if (s[0] == '\0') {
		fail_path(c, path, AT_VALUE, "must not be empty");
		return -1;
	}
	resolved = resolve_path(cfg_path, s);
	if (resolved == NULL) {
		fail_path(c, path, AT_VALUE, "out of memory");
		return -1;
	}
	/* Checked now so a bad path fails `sluice check`, not the first
	 * handshake; the TLS code reads the contents later. */
	fd = open(resolved, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fail_path(c, path, AT_VALUE, "cannot read %s: %s", resolved, strerror(errno));
		free(resolved);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		fail_path(c, path, AT_VALUE, "cannot read %s: not a regular file", resolved);
		close(fd);
		free(resolved);
		return -1;
	}
	close(fd);
	*out = resolved;
	return 0;
}

static int get_cidrs(struct load_ctx *c, const char *base, char **raw, unsigned n,
                     struct sluice_cidr **out, unsigned *n_out)
{
	char path[MAX_PATH_LEN];

	*n_out = 0;
	if (n == 0)
		return 0;
	*out = calloc(n, sizeof(**out));
	if (*out == NULL) {
		fail_path(c, base, AT_VALUE, "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < n; i++) {
		const char *why = "";

		snprintf(path, sizeof(path), "%s[%u]", base, i);
		if (sluice_cidr_parse(raw[i], &(*out)[i], &why) < 0) {
			fail_path(c, path, AT_VALUE, "bad CIDR \"%s\": %s", raw[i], why);
			return -1;
		}
	}
	*n_out = n;
	return 0;
}

static int find_upstream(const struct sluice_config *cfg, const char *name, unsigned *idx)
{
	for (unsigned i = 0; i < cfg->n_upstreams; i++) {
		if (strcmp(cfg->upstreams[i].name, name) == 0) {
			*idx = i;
			return 0;
		}
	}
	return -1;
}

static const char *const level_names[] = { "debug", "info", "warn", "error", NULL };
static const char *const format_names[] = { "json", "text", NULL };
static const char *const mode_names[] = { "mtls", "tcp", NULL };
static const char *const datapath_names[] = { "splice", "sockmap", NULL };
static const char *const balance_names[] = { "least_conn", NULL };
static const char *const ktls_names[] = { "auto", "off", "require", NULL };
static const char *const onoff_names[] = { "on", "off", NULL };

static int check_top(struct load_ctx *c, const struct raw_config *r, struct sluice_config *cfg)
{
	uint64_t v;
	int e;

	if (get_uint(c, "workers", r->workers, 0, MAX_WORKERS, 0, &v) < 0)
		return -1;
	if (v == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		v = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (uint64_t)n;
	}
	cfg->workers = (unsigned)v;

	if (get_choice(c, "log.level", "level", r->log ? r->log->level : NULL, level_names,
	               "use debug, info, warn or error", SLUICE_LOG_INFO, &e) < 0)
		return -1;
	cfg->log_level = (enum sluice_log_level)e;
	if (get_choice(c, "log.format", "format", r->log ? r->log->format : NULL, format_names,
	               "use json or text", SLUICE_LOG_JSON, &e) < 0)
		return -1;
	cfg->log_format = (enum sluice_log_format)e;

	return get_duration(c, "drain", r->drain, 30000, &cfg->drain_ms);
}

static int check_upstreams(struct load_ctx *c, const struct raw_config *r,
                           struct sluice_config *cfg)
{
	char path[MAX_PATH_LEN];

	if (r->upstreams_count > SLUICE_MAX_POOLS) {
		snprintf(path, sizeof(path), "upstreams[%u]", SLUICE_MAX_POOLS);
		fail_path(c, path, AT_VALUE, "too many upstream pools (at most %d)", SLUICE_MAX_POOLS);
		return -1;
	}
	if (r->upstreams_count == 0) {
		fail_path(c, "upstreams", AT_KEY, "at least one upstream pool is required");
		return -1;
	}
	cfg->upstreams = calloc(r->upstreams_count, sizeof(*cfg->upstreams));
	if (cfg->upstreams == NULL) {
		fail_path(c, "upstreams", AT_KEY, "out of memory");
		return -1;
	}

	for (unsigned i = 0; i < r->upstreams_count; i++) {
		const struct raw_upstream *ru = &r->upstreams[i];
		struct sluice_upstream_cfg *u = &cfg->upstreams[i];
		unsigned dup;
		int e;

		snprintf(path, sizeof(path), "upstreams[%u].name", i);
		if (check_name(c, path, ru->name) < 0)
			return -1;
		if (find_upstream(cfg, ru->name, &dup) == 0) {
			fail_path(c, path, AT_VALUE, "duplicate upstream pool name \"%s\" (also upstreams[%u])",
			          ru->name, dup);
			return -1;
		}
		/* Counted once named, so sluice_config_free releases it and
		 * find_upstream never meets a pool without a name. */
		u->name = strdup(ru->name);
		if (u->name == NULL) {
			fail_path(c, path, AT_VALUE, "out of memory");
			return -1;
		}
		cfg->n_upstreams = i + 1;

		snprintf(path, sizeof(path), "upstreams[%u].balance", i);
		if (get_choice(c, path, "balance", ru->balance, balance_names,
		               "only least_conn is supported", SLUICE_BALANCE_LEAST_CONN, &e) < 0)
			return -1;
		u->balance = (enum sluice_balance)e;

		if (ru->servers_count == 0) {
			snprintf(path, sizeof(path), "upstreams[%u].servers", i);
			fail_path(c, path, AT_KEY, "at least one server is required");
			return -1;
		}
		if (ru->servers_count > SLUICE_MAX_SERVERS) {
			snprintf(path, sizeof(path), "upstreams[%u].servers[%d]", i, SLUICE_MAX_SERVERS);
			fail_path(c, path, AT_VALUE, "too many servers (at most %d per pool)",
			          SLUICE_MAX_SERVERS);
			return -1;
		}
		u->servers = calloc(ru->servers_count, sizeof(*u->servers));
		if (u->servers == NULL) {
			fail_path(c, path, AT_VALUE, "out of memory");
			return -1;
		}

		for (unsigned j = 0; j < ru->servers_count; j++) {
			const struct raw_server *rs = &ru->servers[j];
			struct sluice_server_cfg *s = &u->servers[j];
			const char *why = "";
			uint64_t w;

			snprintf(path, sizeof(path), "upstreams[%u].servers[%u].address", i, j);
			if (sluice_addr_parse(rs->address, &s->sa, &why) < 0) {
				fail_path(c, path, AT_VALUE, "bad address \"%s\": %s", rs->address, why);
				return -1;
			}
			snprintf(path, sizeof(path), "upstreams[%u].servers[%u].weight", i, j);
			if (get_uint(c, path, rs->weight, 1, MAX_WEIGHT, 1, &w) < 0)
				return -1;
			s->weight = (unsigned)w;
			s->address = strdup(rs->address);
			if (s->address == NULL) {
				fail_path(c, path, AT_VALUE, "out of memory");
				return -1;
			}
			u->n_servers = j + 1;
		}
	}
	return 0;
}

static int check_listeners(struct load_ctx *c, const struct raw_config *r,
                           struct sluice_config *cfg)
{
	char path[MAX_PATH_LEN];

	if (r->listeners_count == 0) {
		fail_path(c, "listeners", AT_KEY, "at least one listener is required");
		return -1;
	}
	cfg->listeners = calloc(r->listeners_count, sizeof(*cfg->listeners));
	if (cfg->listeners == NULL) {
		fail_path(c, "listeners", AT_KEY, "out of memory");
		return -1;
	}

	for (unsigned i = 0; i < r->listeners_count; i++) {
		const struct raw_listener *rl = &r->listeners[i];
		const struct raw_timeouts *rt = rl->timeouts;
		struct sluice_listener_cfg *l = &cfg->listeners[i];
		const char *why = "";
		int e;

		/* Counted first so sluice_config_free releases whatever part
		 * of this listener gets allocated before an error. */
		cfg->n_listeners = i + 1;

		snprintf(path, sizeof(path), "listeners[%u].name", i);
		if (check_name(c, path, rl->name) < 0)
			return -1;
		for (unsigned k = 0; k < i; k++) {
			if (strcmp(cfg->listeners[k].name, rl->name) == 0) {
				fail_path(c, path, AT_VALUE, "duplicate listener name \"%s\" (also listeners[%u])",
				          rl->name, k);
				return -1;
			}
		}
		l->name = strdup(rl->name);
		l->listen = strdup(rl->listen);
		if (l->name == NULL || l->listen == NULL) {
			fail_path(c, path, AT_VALUE, "out of memory");
			return -1;
		}

		snprintf(path, sizeof(path), "listeners[%u].listen", i);
		if (sluice_addr_parse(rl->listen, &l->sa, &why) < 0) {
			fail_path(c, path, AT_VALUE, "bad address \"%s\": %s", rl->listen, why);
			return -1;
		}
		for (unsigned k = 0; k < i; k++) {
			const struct sluice_listener_cfg *o = &cfg->listeners[k];

			if (o->sa.len == l->sa.len && memcmp(&o->sa.ss, &l->sa.ss, l->sa.len) == 0) {
				fail_path(c, path, AT_VALUE, "address %s already used by listener \"%s\"",
				          rl->listen, o->name);
				return -1;
			}
		}

		snprintf(path, sizeof(path), "listeners[%u].mode", i);
		if (get_choice(c, path, "mode", rl->mode, mode_names, "use mtls or tcp",
		               SLUICE_MODE_MTLS, &e) < 0)
			return -1;
		l->mode = (enum sluice_listener_mode)e;

		snprintf(path, sizeof(path), "listeners[%u].datapath", i);
		if (get_choice(c, path, "datapath", rl->datapath, datapath_names, "use splice or sockmap",
		               SLUICE_DATAPATH_SPLICE, &e) < 0)
			return -1;
		l->datapath = (enum sluice_datapath_cfg)e;
		/* sockmap forwards raw TCP bytes: a TLS listener's bytes must
		 * go through the TLS stack (kTLS or OpenSSL). */
		if (l->datapath == SLUICE_DATAPATH_SOCKMAP && l->mode != SLUICE_MODE_TCP) {
			fail_path(c, path, AT_VALUE, "datapath sockmap needs mode tcp (listener \"%s\" is mtls)",
			          rl->name);
			return -1;
		}

		snprintf(path, sizeof(path), "listeners[%u].upstream", i);
		if (find_upstream(cfg, rl->upstream, &l->upstream) < 0) {
			fail_path(c, path, AT_VALUE, "unknown upstream pool \"%s\"", rl->upstream);
			return -1;
		}

		snprintf(path, sizeof(path), "listeners[%u].allow_cidrs", i);
		if (get_cidrs(c, path, rl->allow_cidrs, rl->allow_cidrs_count, &l->allow, &l->n_allow) < 0)
			return -1;
		snprintf(path, sizeof(path), "listeners[%u].deny_cidrs", i);
		if (get_cidrs(c, path, rl->deny_cidrs, rl->deny_cidrs_count, &l->deny, &l->n_deny) < 0)
			return -1;

		snprintf(path, sizeof(path), "listeners[%u].timeouts.handshake", i);
		if (get_duration(c, path, rt ? rt->handshake : NULL, 5000, &l->timeouts.handshake_ms) < 0)
			return -1;
		snprintf(path, sizeof(path), "listeners[%u].timeouts.connect", i);
		if (get_duration(c, path, rt ? rt->connect : NULL, 3000, &l->timeouts.connect_ms) < 0)
			return -1;
		snprintf(path, sizeof(path), "listeners[%u].timeouts.idle", i);
		if (get_duration(c, path, rt ? rt->idle : NULL, 300000, &l->timeouts.idle_ms) < 0)
			return -1;
		snprintf(path, sizeof(path), "listeners[%u].timeouts.lifetime", i);
		if (get_duration(c, path, rt ? rt->lifetime : NULL, 0, &l->timeouts.lifetime_ms) < 0)
			return -1;
	}
	return 0;
}

static const struct {
	const char *prefix;
	enum sluice_id_kind kind;
} id_kinds[] = {
	{ "CN=", SLUICE_ID_CN },
	{ "URI=", SLUICE_ID_URI },
	{ "DNS=", SLUICE_ID_DNS },
	{ "IP=", SLUICE_ID_IP },
};

static int parse_client_id(struct load_ctx *c, const char *path, struct sluice_client_cfg *cl)
{
	const char *id = cl->id;
	const char *v = NULL;

	if (strcmp(id, "*") == 0) {
		cl->kind = SLUICE_ID_ANY;
		return 0;
	}
	for (size_t k = 0; k < SLUICE_ARRAY_LEN(id_kinds); k++) {
		size_t n = strlen(id_kinds[k].prefix);

		if (strncmp(id, id_kinds[k].prefix, n) == 0) {
			cl->kind = id_kinds[k].kind;
			v = id + n;
			break;
		}
	}
	if (v == NULL) {
		fail_path(c, path, AT_VALUE,
		          "unknown identity \"%s\" (use CN=..., URI=..., DNS=..., IP=cidr or \"*\")", id);
		return -1;
	}
	if (*v == '\0') {
		fail_path(c, path, AT_VALUE, "empty value in \"%s\"", id);
		return -1;
	}
	if (cl->kind == SLUICE_ID_IP) {
		const char *why = "";

		if (sluice_cidr_parse(v, &cl->cidr, &why) < 0) {
			fail_path(c, path, AT_VALUE, "bad CIDR in \"%s\": %s", id, why);
			return -1;
		}
		return 0;
	}
	if (cl->kind == SLUICE_ID_URI) {
		const char *star = strchr(v, '*');

		/* Only a trailing '*' has a meaning (prefix match); anywhere
		 * else it would silently be a literal. */
		if (star != NULL && star[1] != '\0') {
			fail_path(c, path, AT_VALUE, "'*' is only allowed at the end of a URI: \"%s\"", id);
			return -1;
		}
	}
	cl->value = strdup(v);
	if (cl->value == NULL) {
		fail_path(c, path, AT_VALUE, "out of memory");
		return -1;
	}
	return 0;
}

static int check_clients(struct load_ctx *c, const struct raw_config *r,
                         struct sluice_config *cfg)
{
	char path[MAX_PATH_LEN];

	if (r->clients_count == 0)
		return 0;
	cfg->clients = calloc(r->clients_count, sizeof(*cfg->clients));
	if (cfg->clients == NULL) {
		fail_path(c, "clients", AT_KEY, "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < r->clients_count; i++) {
		const struct raw_client *rc = &r->clients[i];
		struct sluice_client_cfg *cl = &cfg->clients[i];
		uint64_t v;

		cfg->n_clients = i + 1;
		snprintf(path, sizeof(path), "clients[%u].id", i);
		cl->id = strdup(rc->id);
		if (cl->id == NULL) {
			fail_path(c, path, AT_VALUE, "out of memory");
			return -1;
		}
		if (parse_client_id(c, path, cl) < 0)
			return -1;

		for (unsigned j = 0; j < rc->allow_count; j++) {
			unsigned idx;

			if (find_upstream(cfg, rc->allow[j], &idx) < 0) {
				snprintf(path, sizeof(path), "clients[%u].allow[%u]", i, j);
				fail_path(c, path, AT_VALUE, "unknown upstream pool \"%s\"", rc->allow[j]);
				return -1;
			}
			cl->allow_mask |= UINT64_C(1) << idx;
		}

		snprintf(path, sizeof(path), "clients[%u].max_conns", i);
		if (get_uint(c, path, rc->max_conns, 0, UINT32_MAX, 0, &v) < 0)
			return -1;
		cl->max_conns = (uint32_t)v;
		snprintf(path, sizeof(path), "clients[%u].conn_rate", i);
		if (get_uint(c, path, rc->conn_rate, 0, UINT32_MAX, 0, &v) < 0)
			return -1;
		cl->conn_rate = (uint32_t)v;
		snprintf(path, sizeof(path), "clients[%u].conn_burst", i);
		if (get_uint(c, path, rc->conn_burst, 0, UINT32_MAX, 0, &v) < 0)
			return -1;
		cl->conn_burst = (uint32_t)v;
		if (cl->conn_burst != 0 && cl->conn_rate == 0) {
			fail_path(c, path, AT_VALUE, "needs conn_rate (a burst without a rate limits nothing)");
			return -1;
		}
		if (cl->conn_burst == 0)
			cl->conn_burst = cl->conn_rate;
	}
	return 0;
}

static int check_tls(struct load_ctx *c, const struct raw_config *r, struct sluice_config *cfg)
{
	const struct raw_tls *t = r->tls;
	int mtls = -1;
	uint64_t v;
	int e;

	for (unsigned i = 0; i < cfg->n_listeners && mtls < 0; i++)
		if (cfg->listeners[i].mode == SLUICE_MODE_MTLS)
			mtls = (int)i;

	if (mtls >= 0) {
		char path[MAX_PATH_LEN];

		snprintf(path, sizeof(path), "listeners[%d].mode", mtls);
		if (t == NULL) {
			fail_path(c, path, AT_VALUE, "mtls needs a tls section (ca, cert, key)");
			return -1;
		}
		if (t->ca == NULL || t->cert == NULL || t->key == NULL) {
			fail_at(c, pos_of(c, "tls", AT_KEY),
			        "tls.%s: required key is missing (mtls listener \"%s\" needs it)",
			        t->ca == NULL ? "ca" : t->cert == NULL ? "cert" : "key",
			        cfg->listeners[mtls].name);
			return -1;
		}
	}
	cfg->tls.verify_depth = 4;
	cfg->tls.ktls = SLUICE_KTLS_AUTO;
	cfg->tls.tickets = true;
	cfg->tls.ticket_lifetime_ms = DEFAULT_TICKET_LIFETIME_MS;
	cfg->tls.session_cache = DEFAULT_SESSION_CACHE;
	if (t == NULL)
		return 0;

	/* Files named here are checked even when no listener needs them: a
	 * wrong path is a mistake either way. */
	if (t->ca && get_file(c, "tls.ca", cfg->path, t->ca, &cfg->tls.ca) < 0)
		return -1;
	if (t->cert && get_file(c, "tls.cert", cfg->path, t->cert, &cfg->tls.cert) < 0)
		return -1;
	if (t->key && get_file(c, "tls.key", cfg->path, t->key, &cfg->tls.key) < 0)
		return -1;
	if (t->crl && get_file(c, "tls.crl", cfg->path, t->crl, &cfg->tls.crl) < 0)
		return -1;
	if (get_uint(c, "tls.verify_depth", t->verify_depth, 1, MAX_VERIFY_DEPTH, 4, &v) < 0)
		return -1;
	cfg->tls.verify_depth = (unsigned)v;
	if (get_choice(c, "tls.ktls", "ktls", t->ktls, ktls_names, "use auto, off or require",
	               SLUICE_KTLS_AUTO, &e) < 0)
		return -1;
	cfg->tls.ktls = (enum sluice_ktls_mode)e;
	if (get_choice(c, "tls.tickets", "tickets", t->tickets, onoff_names, "use on or off", 0, &e) < 0)
		return -1;
	cfg->tls.tickets = e == 0;
	if (get_duration(c, "tls.ticket_lifetime", t->ticket_lifetime, DEFAULT_TICKET_LIFETIME_MS,
	                 &cfg->tls.ticket_lifetime_ms) < 0)
		return -1;
	/* OpenSSL keeps the lifetime in whole seconds, and TLS 1.3 caps a
	 * ticket's lifetime at 7 days (RFC 8446 4.6.1). */
	if (cfg->tls.ticket_lifetime_ms < 1000 || cfg->tls.ticket_lifetime_ms > MAX_TICKET_LIFETIME_MS) {
		fail_path(c, "tls.ticket_lifetime", AT_VALUE, "must be between 1s and 7d, got \"%s\"",
		          t->ticket_lifetime);
		return -1;
	}
	if (get_uint(c, "tls.session_cache", t->session_cache, 1, MAX_SESSION_CACHE,
	             DEFAULT_SESSION_CACHE, &v) < 0)
		return -1;
	cfg->tls.session_cache = (size_t)v;
	return 0;
}

static const char *const bpf_mode_names[] = { "auto", "off", "require", NULL };

/* An absolute directory path sluice will create or write under; relative
 * paths would depend on the working directory of whoever starts it. */
static int get_abs_dir(struct load_ctx *c, const char *path, const char *s, char **out)
{
	if (s == NULL)
		return 0;
	if (s[0] != '/' || strlen(s) >= MAX_DIR_LEN) {
		fail_path(c, path, AT_VALUE, "expected an absolute path shorter than %d bytes, got \"%s\"",
		          MAX_DIR_LEN, s);
		return -1;
	}
	*out = strdup(s);
	if (*out == NULL) {
		fail_path(c, path, AT_VALUE, "out of memory");
		return -1;
	}
	return 0;
}

static int check_bpf(struct load_ctx *c, const struct raw_config *r, struct sluice_config *cfg)
{
	const struct raw_bpf *b = r->bpf;
	int e;

	cfg->bpf.mode = SLUICE_BPF_AUTO;
	cfg->bpf.sockmap_pair_cap = SLUICE_SOCKMAP_PAIR_CAP;
	cfg->bpf.sockmap_hard_cap = SLUICE_SOCKMAP_HARD_CAP;
	cfg->bpf.sockmap_global_cap = SLUICE_SOCKMAP_GLOBAL_CAP;
	if (b == NULL)
		return 0;
	if (get_choice(c, "bpf.mode", "mode", b->mode, bpf_mode_names, "use auto, off or require",
	               SLUICE_BPF_AUTO, &e) < 0)
		return -1;
	cfg->bpf.mode = (enum sluice_bpf_mode)e;
	if (get_abs_dir(c, "bpf.pin_path", b->pin_path, &cfg->bpf.pin_path) < 0 ||
	    get_abs_dir(c, "bpf.cgroup", b->cgroup, &cfg->bpf.cgroup) < 0)
		return -1;
	/* The verdict program keeps backlogs in 32 bits: caps stay below
	 * 1 GiB.  A pair cap of 64 KiB is about one TCP window. */
	if (get_size(c, "bpf.sockmap_pair_cap", b->sockmap_pair_cap, 64 << 10, 1ULL << 30,
	             SLUICE_SOCKMAP_PAIR_CAP, &cfg->bpf.sockmap_pair_cap) < 0 ||
	    get_size(c, "bpf.sockmap_hard_cap", b->sockmap_hard_cap, 64 << 10, 1ULL << 30,
	             SLUICE_SOCKMAP_HARD_CAP, &cfg->bpf.sockmap_hard_cap) < 0 ||
	    get_size(c, "bpf.sockmap_global_cap", b->sockmap_global_cap, 64 << 10, 1ULL << 40,
	             SLUICE_SOCKMAP_GLOBAL_CAP, &cfg->bpf.sockmap_global_cap) < 0)
		return -1;
	if (cfg->bpf.sockmap_hard_cap < cfg->bpf.sockmap_pair_cap) {
		fail_path(c, "bpf.sockmap_hard_cap", AT_VALUE, "must be at least sockmap_pair_cap (%llu), got \"%s\"",
		          (unsigned long long)cfg->bpf.sockmap_pair_cap, b->sockmap_hard_cap ? b->sockmap_hard_cap : "");
		return -1;
	}
	if (cfg->bpf.sockmap_global_cap < cfg->bpf.sockmap_hard_cap) {
		fail_path(c, "bpf.sockmap_global_cap", AT_VALUE, "must be at least sockmap_hard_cap (%llu), got \"%s\"",
		          (unsigned long long)cfg->bpf.sockmap_hard_cap,
		          b->sockmap_global_cap ? b->sockmap_global_cap : "");
		return -1;
	}
	return 0;
}

/* ---- public entry points */

static int read_file(struct load_ctx *c, const char *path, unsigned char **data, size_t *len)
{
	unsigned char *buf = NULL;
	size_t used = 0;
	FILE *f = fopen(path, "rb");

	if (f == NULL) {
		if (c->errlen > 0)
			snprintf(c->err, c->errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	buf = malloc(MAX_FILE_BYTES + 1);
	if (buf == NULL) {
		snprintf(c->err, c->errlen, "%s: out of memory", path);
		goto fail;
	}
	used = fread(buf, 1, MAX_FILE_BYTES + 1, f);
	if (ferror(f)) {
		snprintf(c->err, c->errlen, "%s: cannot read: %s", path, strerror(errno));
		goto fail;
	}
	if (used > MAX_FILE_BYTES) {
		snprintf(c->err, c->errlen, "%s: larger than %u bytes", path, MAX_FILE_BYTES);
		goto fail;
	}
	fclose(f);
	*data = buf;
	*len = used;
	return 0;
fail:
	free(buf);
	fclose(f);
	return -1;
}

/* Passes 1-3 over data[0..len) (exactly len bytes; no terminator needed). */
static int load_data(const char *path, const unsigned char *data, size_t len,
                     struct sluice_config **out, char *err, size_t errlen)
{
	struct load_ctx c = { .file = path, .err = err, .errlen = errlen };
	cyaml_config_t cy = {
		.log_fn = cy_log,
		.log_ctx = &c,
		.mem_fn = cyaml_mem,
		.log_level = CYAML_LOG_ERROR,
		.flags = CYAML_CFG_NO_ALIAS,
	};
	struct raw_config *raw = NULL;
	struct sluice_config *cfg = NULL;
	cyaml_err_t ce;
	int rc = -1;

	if (index_build(&c, data, len) < 0)
		goto cleanup;

	ce = cyaml_load_data(data, len, &cy, &top_schema, (cyaml_data_t **)&raw, NULL);
	if (ce != CYAML_OK) {
		cy_report(&c, ce);
		raw = NULL;
		goto cleanup;
	}

	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
		fail_at(&c, (struct loc){ 1, 1 }, "out of memory");
		goto cleanup;
	}
	/* Upstreams before listeners and clients: those refer to pools by name. */
	if (check_top(&c, raw, cfg) < 0 || check_upstreams(&c, raw, cfg) < 0 ||
	    check_listeners(&c, raw, cfg) < 0 || check_clients(&c, raw, cfg) < 0 ||
	    check_tls(&c, raw, cfg) < 0 || check_bpf(&c, raw, cfg) < 0)
		goto cleanup;

	*out = cfg;
	cfg = NULL;
	rc = 0;
cleanup:
	if (raw != NULL)
		cyaml_free(&cy, &top_schema, raw, 0);
	sluice_config_free(cfg);
	index_free(&c);
	return rc;
}

int sluice_config_load(const char *path, struct sluice_config **out, char *err, size_t errlen)
{
	struct load_ctx c = { .file = path, .err = err, .errlen = errlen };
	unsigned char *data = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	if (read_file(&c, path, &data, &len) < 0)
		return -1;
	rc = load_data(path, data, len, out, err, errlen);
	free(data);
	return rc;
}

int sluice_config_load_mem(const char *name, const void *data, size_t len,
                           struct sluice_config **out, char *err, size_t errlen)
{
	*out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	if (len > MAX_FILE_BYTES) {
		snprintf(err, errlen, "%s: larger than %u bytes", name, MAX_FILE_BYTES);
		return -1;
	}
	return load_data(name, data, len, out, err, errlen);
}

void sluice_config_free(struct sluice_config *cfg)
{
	if (cfg == NULL)
		return;
	for (unsigned i = 0; i < cfg->n_listeners; i++) {
		free(cfg->listeners[i].name);
		free(cfg->listeners[i].listen);
		free(cfg->listeners[i].allow);
		free(cfg->listeners[i].deny);
	}
	free(cfg->listeners);
	for (unsigned i = 0; i < cfg->n_upstreams; i++) {
		for (unsigned j = 0; j < cfg->upstreams[i].n_servers; j++)
			free(cfg->upstreams[i].servers[j].address);
		free(cfg->upstreams[i].servers);
		free(cfg->upstreams[i].name);
	}
	free(cfg->upstreams);
	for (unsigned i = 0; i < cfg->n_clients; i++) {
		free(cfg->clients[i].id);
		free(cfg->clients[i].value);
	}
	free(cfg->clients);
	free(cfg->tls.ca);
	free(cfg->tls.cert);
	free(cfg->tls.key);
	free(cfg->tls.crl);
	free(cfg->bpf.pin_path);
	free(cfg->bpf.cgroup);
	free(cfg->path);
	free(cfg);
}
