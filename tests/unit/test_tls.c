/* The checks a resumed session's certificate gets (src/tls.c): validity
 * period and the CRL, on the demo PKI in certs/ (tools/gen-certs), and the
 * ticket settings of the server context. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#include <openssl/pem.h>

#include "tls.h"

#define CERTS "certs/"

static X509 *load(const char *name)
{
	FILE *f = fopen(name, "r");
	X509 *x;

	assert_non_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static int never(int ok, X509_STORE_CTX *ctx)
{
	(void)ok;
	(void)ctx;
	return 0;
}

static SSL_CTX *server_ctx(bool crl, bool tickets)
{
	struct sluice_tls_cfg cfg = {
		.ca = CERTS "ca.pem", .cert = CERTS "server.pem", .key = CERTS "server.key",
		.crl = crl ? CERTS "crl.pem" : NULL, .verify_depth = 4,
		.tickets = tickets, .ticket_lifetime_ms = 300000,
	};
	char err[256] = "";
	SSL_CTX *ctx = sluice_tls_server_ctx(&cfg, never, NULL, err, sizeof(err));

	if (!ctx)
		fail_msg("%s", err);
	return ctx;
}

static void test_revoked_by_crl(void **state)
{
	SSL_CTX *ctx = server_ctx(true, true);
	X509 *revoked = load(CERTS "revoked.pem"), *alice = load(CERTS "alice.pem");
	X509 *stranger = load(CERTS "stranger.pem");

	(void)state;
	assert_true(sluice_tls_revoked(ctx, revoked));
	assert_false(sluice_tls_revoked(ctx, alice));
	/* Another CA's certificate with whatever serial: that CA's CRL is
	 * not ours to apply. */
	assert_false(sluice_tls_revoked(ctx, stranger));
	X509_free(revoked);
	X509_free(alice);
	X509_free(stranger);
	SSL_CTX_free(ctx);
}

static void test_no_crl_nothing_revoked(void **state)
{
	SSL_CTX *ctx = server_ctx(false, true);
	X509 *revoked = load(CERTS "revoked.pem");

	(void)state;
	assert_false(sluice_tls_revoked(ctx, revoked));
	X509_free(revoked);
	SSL_CTX_free(ctx);
}

static void test_validity_period(void **state)
{
	X509 *expired = load(CERTS "expired.pem"), *notyet = load(CERTS "notyet.pem");
	X509 *alice = load(CERTS "alice.pem");

	(void)state;
	assert_false(sluice_tls_cert_current(expired));
	assert_false(sluice_tls_cert_current(notyet));
	assert_true(sluice_tls_cert_current(alice));
	X509_free(expired);
	X509_free(notyet);
	X509_free(alice);
}

static void test_ticket_settings(void **state)
{
	SSL_CTX *on = server_ctx(false, true), *off = server_ctx(false, false);

	(void)state;
	assert_int_equal(SSL_CTX_get_options(on) & SSL_OP_NO_TICKET, 0);
	assert_int_equal(SSL_CTX_get_num_tickets(on), 1);
	assert_int_equal(SSL_CTX_get_timeout(on), 300);
	assert_int_not_equal(SSL_CTX_get_options(off) & SSL_OP_NO_TICKET, 0);
	assert_int_equal(SSL_CTX_get_num_tickets(off), 0);
	/* Stateless tickets only: no server-side session cache in either. */
	assert_int_equal(SSL_CTX_get_session_cache_mode(on), SSL_SESS_CACHE_OFF);
	SSL_CTX_free(on);
	SSL_CTX_free(off);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_revoked_by_crl),
		cmocka_unit_test(test_no_crl_nothing_revoked),
		cmocka_unit_test(test_validity_period),
		cmocka_unit_test(test_ticket_settings),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
