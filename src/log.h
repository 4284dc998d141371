/* Logging: one line per event, JSON (one object per line) or text
 * (key=value), written with a single write(2) so lines from several workers
 * never interleave.  The per-connection close line is built field by field
 * with struct sluice_logline; other events use sluice_log(). */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"

void sluice_log_setup(enum sluice_log_level level, enum sluice_log_format format);
bool sluice_log_enabled(enum sluice_log_level level);

/* An event with a free-text message: {"ts":…,"level":…,"event":…,"msg":…}. */
void sluice_log(enum sluice_log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define SLUICE_LOGLINE_MAX 4096

struct sluice_logline {
	char buf[SLUICE_LOGLINE_MAX];
	size_t len;
	bool truncated;
};

/* Starts a line with ts, level and event. */
void sluice_logline_begin(struct sluice_logline *l, enum sluice_log_level level, const char *event);
void sluice_logline_str(struct sluice_logline *l, const char *key, const char *val); /* NULL -> null */
void sluice_logline_u64(struct sluice_logline *l, const char *key, uint64_t val);
void sluice_logline_bool(struct sluice_logline *l, const char *key, bool val);
void sluice_logline_emit(struct sluice_logline *l);

#endif
