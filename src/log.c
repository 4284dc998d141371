/* Logging.  Owns the process-wide level and format (set once at start-up,
 * read-only afterwards, so workers read them without locks). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static enum sluice_log_level log_level = SLUICE_LOG_INFO;
static enum sluice_log_format log_format = SLUICE_LOG_JSON;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void sluice_log_setup(enum sluice_log_level level, enum sluice_log_format format)
{
	log_level = level;
	log_format = format;
}

bool sluice_log_enabled(enum sluice_log_level level)
{
	return level >= log_level;
}

static void put(struct sluice_logline *l, const char *s, size_t n)
{
	/* Keep 2 bytes for the closing "}\n" that emit appends. */
	size_t room = sizeof(l->buf) - 2 - l->len;

	if (n > room) {
		n = room;
		l->truncated = true;
	}
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void putc_(struct sluice_logline *l, char c)
{
	put(l, &c, 1);
}

/* JSON string escaping; in text format values with spaces, quotes or '='
 * are quoted the same way so a line stays machine-splittable. */
static void put_escaped(struct sluice_logline *l, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	putc_(l, '"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[6];

		switch (c) {
		case '"': put(l, "\\\"", 2); break;
		case '\\': put(l, "\\\\", 2); break;
		case '\n': put(l, "\\n", 2); break;
		case '\r': put(l, "\\r", 2); break;
		case '\t': put(l, "\\t", 2); break;
		default:
			if (c < 0x20 || c == 0x7f) {
				memcpy(esc, "\\u00", 4);
				esc[4] = hex[c >> 4];
				esc[5] = hex[c & 15];
				put(l, esc, 6);
			} else {
				putc_(l, (char)c);
			}
		}
	}
	putc_(l, '"');
}

static bool text_needs_quotes(const char *s)
{
	if (!*s)
		return true;
	for (; *s; s++)
		if (*s <= ' ' || *s == '"' || *s == '=' || *s == '\\' || *s == 0x7f)
			return true;
	return false;
}

static void put_key(struct sluice_logline *l, const char *key)
{
	if (log_format == SLUICE_LOG_JSON) {
		putc_(l, ',');
		put_escaped(l, key);
		putc_(l, ':');
	} else {
		putc_(l, ' ');
		put(l, key, strlen(key));
		putc_(l, '=');
	}
}

void sluice_logline_begin(struct sluice_logline *l, enum sluice_log_level level, const char *event)
{
	struct timespec ts;
	struct tm tm;
	char tbuf[64];
	int n;

	l->len = 0;
	l->truncated = false;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(tbuf, sizeof(tbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
	             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	             ts.tv_nsec / 1000000);
	if (log_format == SLUICE_LOG_JSON) {
		put(l, "{\"ts\":\"", 7);
		put(l, tbuf, (size_t)n);
		putc_(l, '"');
	} else {
		put(l, tbuf, (size_t)n);
	}
	sluice_logline_str(l, "level", level_names[level]);
	sluice_logline_str(l, "event", event);
}

void sluice_logline_str(struct sluice_logline *l, const char *key, const char *val)
{
	put_key(l, key);
	if (!val)
		put(l, log_format == SLUICE_LOG_JSON ? "null" : "-", log_format == SLUICE_LOG_JSON ? 4 : 1);
	else if (log_format == SLUICE_LOG_JSON || text_needs_quotes(val))
		put_escaped(l, val);
	else
		put(l, val, strlen(val));
}

void sluice_logline_u64(struct sluice_logline *l, const char *key, uint64_t val)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)val);

	put_key(l, key);
	put(l, num, (size_t)n);
}

void sluice_logline_bool(struct sluice_logline *l, const char *key, bool val)
{
	put_key(l, key);
	put(l, val ? "true" : "false", val ? 4 : 5);
}

void sluice_logline_emit(struct sluice_logline *l)
{
	size_t off = 0;

	/* A truncated JSON value may be cut mid-string; close it so the line
	 * still parses (the reader sees the cut text, not a broken line). */
	if (log_format == SLUICE_LOG_JSON) {
		if (l->truncated) {
			l->len = sizeof(l->buf) - 8;
			memcpy(l->buf + l->len, "…\"", 4);
			l->len += 4;
		}
		l->buf[l->len++] = '}';
	}
	l->buf[l->len++] = '\n';
	while (off < l->len) {
		ssize_t n = write(STDERR_FILENO, l->buf + off, l->len - off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* stderr gone: nothing better to do with a log line */
		}
		off += (size_t)n;
	}
}

void sluice_log(enum sluice_log_level level, const char *event, const char *fmt, ...)
{
	struct sluice_logline l;
	char msg[2048];
	va_list ap;

	if (!sluice_log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	sluice_logline_begin(&l, level, event);
	sluice_logline_str(&l, "msg", msg);
	sluice_logline_emit(&l);
}
