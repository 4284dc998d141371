/* Result codes shared by every stage of the data path, so each caller handles
 * "try again later" the same way (nginx's NGX_OK/NGX_AGAIN idea). */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

enum sluice_rc {
	SLUICE_OK = 0,
	SLUICE_ERR = -1,      /* failed; errno or an err buffer says why */
	SLUICE_AGAIN = -2,    /* would block; wait for readiness */
	SLUICE_DONE = -3,     /* this direction/stage finished (EOF) */
	SLUICE_DECLINED = -4, /* a policy said no (not an error) */
};

#define SLUICE_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic milliseconds; the one clock for deadlines. */
uint64_t sluice_now_ms(void);

#endif
