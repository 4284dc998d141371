/* Addresses and CIDR blocks: parsing operator input ("127.0.0.1:5000",
 * "[::1]:5000", "10.0.0.0/8") and matching peers against CIDR lists. */
#ifndef SLUICE_ADDR_H
#define SLUICE_ADDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

struct sluice_sockaddr {
	struct sockaddr_storage ss;
	socklen_t len;
};

/* An IPv4 or IPv6 endpoint in 28 bytes: what each connection keeps of its
 * client for the log line (a sockaddr_storage is 128, and every byte of an
 * idle connection counts). */
union sluice_ipaddr {
	struct sockaddr sa;
	struct sockaddr_in in4;
	struct sockaddr_in6 in6;
};

struct sluice_cidr {
	int family;        /* AF_INET or AF_INET6 */
	uint8_t addr[16];  /* network byte order, host bits zeroed */
	unsigned prefix;   /* 0..32 or 0..128 */
};

/* "HOST:PORT" with a numeric IPv4 host, or "[V6]:PORT".  Port 1..65535
 * (0 allowed only when allow_port0, for tests binding ephemeral ports).
 * Returns 0 or -1 with a short reason in *why. */
int sluice_addr_parse(const char *s, struct sluice_sockaddr *out, const char **why);
/* The same with port 0 accepted when allow_port0 (ephemeral test ports);
 * sluice_addr_parse() is this with allow_port0 false. */
int sluice_addr_parse_ex(const char *s, struct sluice_sockaddr *out, bool allow_port0,
                         const char **why);

/* "a.b.c.d/n", "v6/n", or a bare address (= /32 or /128). */
int sluice_cidr_parse(const char *s, struct sluice_cidr *out, const char **why);

/* An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) matches IPv4 blocks. */
bool sluice_cidr_match(const struct sluice_cidr *c, const struct sockaddr *sa);
bool sluice_cidr_list_match(const struct sluice_cidr *list, unsigned n,
                            const struct sockaddr *sa);

/* sa (len bytes) into out when it is AF_INET or AF_INET6, the only
 * families a listener accepts; otherwise out becomes AF_UNSPEC, which
 * sluice_addr_str() prints as "?". */
void sluice_ipaddr_set(union sluice_ipaddr *out, const struct sockaddr *sa, socklen_t len);

/* "1.2.3.4:5" / "[::1]:5" into buf; returns buf. */
char *sluice_addr_str(const struct sockaddr *sa, char *buf, size_t len);
/* Host part only ("1.2.3.4", "::1"), v4-mapped shown as v4. */
char *sluice_addr_host_str(const struct sockaddr *sa, char *buf, size_t len);

#endif
