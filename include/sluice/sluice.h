/* sluice — public API: a proxy is created from a config file, run, stopped.
 *
 * The CLI in src/main.c is a thin layer over these calls; an embedding
 * program can do the same. All functions return 0 on success and a negative
 * value on failure, with a human-readable reason written into err.
 */
#ifndef SLUICE_SLUICE_H
#define SLUICE_SLUICE_H

#include <stddef.h>

#define SLUICE_VERSION "0.1.0"

typedef struct sluice_proxy sluice_proxy;

/* Loads and validates the config at path and prepares everything that can
 * fail before traffic flows (TLS contexts, listening sockets).  On a config
 * error err holds "FILE:LINE:COLUMN: message". */
int sluice_proxy_create(const char *config_path, sluice_proxy **out,
                        char *err, size_t errlen);

/* Runs the workers until sluice_proxy_stop(); returns 0 after a clean drain. */
int sluice_proxy_run(sluice_proxy *p);

/* Asks a running proxy to stop accepting and drain.  Async-signal-safe. */
void sluice_proxy_stop(sluice_proxy *p);

void sluice_proxy_destroy(sluice_proxy *p);

/* Validates a config without binding anything: 0 if good. */
int sluice_config_check(const char *config_path, char *err, size_t errlen);

const char *sluice_version(void);

#endif
