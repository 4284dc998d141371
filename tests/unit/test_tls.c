/* The checks a resumed session's certificate gets (src/tls.c): validity
 * period and the CRL, on the demo PKI in certs/ (tools/gen-certs); the
 * resumption settings of the server context; and the session cache
 * (src/session.c) under real in-memory handshakes: TLS 1.3 and 1.2 resume,
 * admission decides each resumption, the cache keeps at most its size. */
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

/* What the admit hook was asked, and what it answers. */
static int admit_calls, admit_answer;

static int admit(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	assert_non_null(SSL_SESSION_get0_peer(sess));   /* the client's certificate */
	admit_calls++;
	return admit_answer;
}

static SSL_CTX *server_ctx_sized(bool crl, bool tickets, size_t cache)
{
	struct sluice_tls_cfg cfg = {
		.ca = CERTS "ca.pem", .cert = CERTS "server.pem", .key = CERTS "server.key",
		.crl = crl ? CERTS "crl.pem" : NULL, .verify_depth = 4,
		.tickets = tickets, .ticket_lifetime_ms = 300000, .session_cache = cache,
	};
	char err[256] = "";
	SSL_CTX *ctx = sluice_tls_server_ctx(&cfg, never, admit, err, sizeof(err));

	if (!ctx)
		fail_msg("%s", err);
	return ctx;
}

static SSL_CTX *server_ctx(bool crl, bool tickets)
{
	return server_ctx_sized(crl, tickets, 100);
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
	/* Stateful TLS 1.3 tickets and TLS 1.2 session IDs, both served by
	 * sluice's cache, never OpenSSL's internal one. */
	assert_int_not_equal(SSL_CTX_get_options(on) & SSL_OP_NO_TICKET, 0);
	assert_int_equal(SSL_CTX_get_num_tickets(on), 1);
	assert_int_equal(SSL_CTX_get_timeout(on), 300);
	assert_int_equal(SSL_CTX_get_session_cache_mode(on),
	                 SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL | SSL_SESS_CACHE_NO_AUTO_CLEAR);
	assert_int_equal(SSL_CTX_get_num_tickets(off), 0);
	assert_int_equal(SSL_CTX_get_session_cache_mode(off), SSL_SESS_CACHE_OFF);
	SSL_CTX_free(on);
	SSL_CTX_free(off);
}

/* ---- real handshakes through a BIO pair ---- */

static SSL_CTX *client_ctx(int version)
{
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());

	assert_non_null(c);
	assert_true(SSL_CTX_set_min_proto_version(c, version));
	assert_true(SSL_CTX_set_max_proto_version(c, version));
	assert_int_equal(SSL_CTX_use_certificate_chain_file(c, CERTS "alice.pem"), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(c, CERTS "alice.key", SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_load_verify_locations(c, CERTS "ca.pem", NULL), 1);
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
	return c;
}

static int accept_all(int ok, X509_STORE_CTX *ctx)
{
	(void)ok;
	(void)ctx;
	return 1;
}

/* The server's session ID of the last connect_once(): what sluice keeps
 * when kTLS lets it free the SSL object early. */
static unsigned char last_sid[SSL_MAX_SSL_SESSION_ID_LENGTH];
static unsigned last_sid_len;

/* One connection: handshake, and a byte each way so the TLS 1.3 ticket
 * (sent after the handshake) reaches the client.  Returns the client's
 * session for the next connection (a reference) and whether this one
 * resumed. */
static SSL_SESSION *connect_once(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *offer, bool *resumed)
{
	SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
	BIO *sb, *cb;
	SSL_SESSION *got;
	char byte = 'x';
	int i, sdone = 0, cdone = 0;

	assert_non_null(s);
	assert_non_null(c);
	SSL_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_all);
	assert_true(BIO_new_bio_pair(&sb, 0, &cb, 0));
	SSL_set_bio(s, sb, sb);
	SSL_set_bio(c, cb, cb);
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	if (offer)
		assert_true(SSL_set_session(c, offer));
	for (i = 0; i < 50 && !(sdone && cdone); i++) {
		if (!cdone)
			cdone = SSL_do_handshake(c) == 1;
		if (!sdone)
			sdone = SSL_do_handshake(s) == 1;
	}
	assert_true(sdone && cdone);
	assert_int_equal(SSL_write(s, &byte, 1), 1);
	assert_int_equal(SSL_read(c, &byte, 1), 1);
	assert_int_equal(SSL_write(c, &byte, 1), 1);
	assert_int_equal(SSL_read(s, &byte, 1), 1);
	*resumed = SSL_session_reused(s) == 1;
	assert_int_equal(SSL_session_reused(c), *resumed);
	got = SSL_get1_session(c);
	{
		const unsigned char *id = SSL_SESSION_get_id(SSL_get_session(s), &last_sid_len);

		assert_true(last_sid_len > 0 && last_sid_len <= sizeof(last_sid));
		memcpy(last_sid, id, last_sid_len);
	}
	/* A clean close: OpenSSL drops the session of a connection freed
	 * without close_notify from the cache (ssl_clear_bad_session). */
	(void)SSL_shutdown(s);
	(void)SSL_shutdown(c);
	SSL_free(s);
	SSL_free(c);
	return got;
}

static void resume_round(int version)
{
	SSL_CTX *sctx = server_ctx(false, true), *cctx = client_ctx(version);
	SSL_SESSION *sess, *next;
	bool resumed;

	admit_calls = 0;
	admit_answer = 0;
	sess = connect_once(sctx, cctx, NULL, &resumed);
	assert_false(resumed);
	assert_int_equal(admit_calls, 0);
	assert_int_equal(sluice_session_cache_count(sctx), 1);

	/* Admitted: resumes, asking admission once. */
	next = connect_once(sctx, cctx, sess, &resumed);
	assert_true(resumed);
	assert_int_equal(admit_calls, 1);
	SSL_SESSION_free(next);

	/* Refused by admission: a full handshake instead, never a failure. */
	admit_answer = -1;
	next = connect_once(sctx, cctx, sess, &resumed);
	assert_false(resumed);
	assert_int_equal(admit_calls, 2);
	SSL_SESSION_free(next);
	SSL_SESSION_free(sess);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);     /* frees the cache: valgrind checks nothing leaks */
}

static void test_resume_tls13(void **state)
{
	(void)state;
	resume_round(TLS1_3_VERSION);
}

static void test_resume_tls12(void **state)
{
	(void)state;
	resume_round(TLS1_2_VERSION);
}

/* A full cache drops its oldest session: that one no longer resumes, the
 * newest still does. */
static void test_cache_bound(void **state)
{
	SSL_CTX *sctx = server_ctx_sized(false, true, 3), *cctx = client_ctx(TLS1_3_VERSION);
	SSL_SESSION *s[5], *next;
	bool resumed;
	int i;

	(void)state;
	admit_answer = 0;
	for (i = 0; i < 5; i++) {
		s[i] = connect_once(sctx, cctx, NULL, &resumed);
		assert_false(resumed);
	}
	assert_int_equal(sluice_session_cache_count(sctx), 3);
	next = connect_once(sctx, cctx, s[0], &resumed);
	assert_false(resumed);
	SSL_SESSION_free(next);
	next = connect_once(sctx, cctx, s[4], &resumed);
	assert_true(resumed);
	SSL_SESSION_free(next);
	assert_true(sluice_session_cache_count(sctx) <= 3);
	for (i = 0; i < 5; i++)
		SSL_SESSION_free(s[i]);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

/* sluice_session_forget: the rule OpenSSL applies in SSL_free (no
 * close_notify sent: the session goes), applied by ID at close for a
 * connection whose SSL object is long gone.  The session of the other
 * connection stays; an unknown ID is a no-op. */
static void forget_round(int version)
{
	SSL_CTX *sctx = server_ctx(false, true), *cctx = client_ctx(version);
	SSL_SESSION *a, *b, *next;
	unsigned char a_sid[SSL_MAX_SSL_SESSION_ID_LENGTH], none[8] = { 0 };
	unsigned a_len;
	bool resumed;

	admit_answer = 0;
	a = connect_once(sctx, cctx, NULL, &resumed);
	memcpy(a_sid, last_sid, last_sid_len);
	a_len = last_sid_len;
	b = connect_once(sctx, cctx, NULL, &resumed);
	assert_int_equal(sluice_session_cache_count(sctx), 2);
	sluice_session_forget(sctx, none, sizeof(none));
	assert_int_equal(sluice_session_cache_count(sctx), 2);
	sluice_session_forget(sctx, a_sid, a_len);
	assert_int_equal(sluice_session_cache_count(sctx), 1);
	next = connect_once(sctx, cctx, a, &resumed);
	assert_false(resumed);
	SSL_SESSION_free(next);
	next = connect_once(sctx, cctx, b, &resumed);
	assert_true(resumed);
	SSL_SESSION_free(next);
	SSL_SESSION_free(a);
	SSL_SESSION_free(b);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void test_forget_tls13(void **state)
{
	(void)state;
	forget_round(TLS1_3_VERSION);
}

static void test_forget_tls12(void **state)
{
	(void)state;
	forget_round(TLS1_2_VERSION);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_revoked_by_crl),
		cmocka_unit_test(test_no_crl_nothing_revoked),
		cmocka_unit_test(test_validity_period),
		cmocka_unit_test(test_ticket_settings),
		cmocka_unit_test(test_resume_tls13),
		cmocka_unit_test(test_resume_tls12),
		cmocka_unit_test(test_cache_bound),
		cmocka_unit_test(test_forget_tls13),
		cmocka_unit_test(test_forget_tls12),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
