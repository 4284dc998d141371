/* Client identity: names read from certificates built in memory, matching
 * against clients[] entries, first-match order, and the logged name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "common.h"
#include "identity.h"

struct san {
	int type;           /* GEN_URI or GEN_DNS */
	const char *value;
	int len;            /* -1 = strlen(value) */
};

static EVP_PKEY *test_key;

/* A self-signed EC P-256 certificate with an optional CN and the given
 * SANs, built with the same APIs a CA would use. */
static X509 *make_cert(const char *cn, const struct san *sans, size_t n_sans)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	size_t i;

	assert_non_null(x);
	assert_non_null(name);
	assert_int_equal(X509_set_version(x, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"sluice test", -1, -1, 0);
	if (cn != NULL)
		assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_ASC,
		                                            (const unsigned char *)cn, -1, -1, 0), 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	X509_NAME_free(name);
	assert_int_equal(X509_set_pubkey(x, test_key), 1);

	if (n_sans > 0) {
		GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();

		for (i = 0; i < n_sans; i++) {
			GENERAL_NAME *gn = GENERAL_NAME_new();
			ASN1_IA5STRING *s = ASN1_IA5STRING_new();
			int len = sans[i].len >= 0 ? sans[i].len : (int)strlen(sans[i].value);

			/* ASN1_STRING_set takes an explicit length, so embedded
			 * NULs reach the certificate as they would from a CA. */
			assert_int_equal(ASN1_STRING_set(s, sans[i].value, len), 1);
			GENERAL_NAME_set0_value(gn, sans[i].type, s);
			sk_GENERAL_NAME_push(gens, gn);
		}
		assert_int_equal(X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0), 1);
		GENERAL_NAMES_free(gens);
	}
	assert_true(X509_sign(x, test_key, EVP_sha256()) > 0);
	return x;
}

static int setup_key(void **state)
{
	(void)state;
	test_key = EVP_EC_gen("P-256");
	return test_key != NULL ? 0 : -1;
}

static int teardown_key(void **state)
{
	(void)state;
	EVP_PKEY_free(test_key);
	return 0;
}

static struct sluice_client_cfg client(enum sluice_id_kind kind, const char *value)
{
	struct sluice_client_cfg c;

	memset(&c, 0, sizeof(c));
	c.kind = kind;
	c.value = (char *)value;
	return c;
}

static struct sluice_client_cfg client_ip(const char *v4, unsigned prefix)
{
	struct sluice_client_cfg c = client(SLUICE_ID_IP, NULL);

	c.cidr.family = AF_INET;
	c.cidr.prefix = prefix;
	assert_int_equal(inet_pton(AF_INET, v4, c.cidr.addr), 1);
	return c;
}

static struct sockaddr_in sin4(const char *v4, unsigned short port)
{
	struct sockaddr_in sa;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, v4, &sa.sin_addr), 1);
	return sa;
}

static void test_cn_and_sans_extracted_in_order(void **state)
{
	static const struct san sans[] = {
		{ GEN_DNS, "api.example.com", -1 },
		{ GEN_URI, "spiffe://td/ns/prod/sa/api", -1 },
		{ GEN_DNS, "API2.example.com", -1 },
		{ GEN_URI, "spiffe://td/ns/prod/sa/web", -1 },
	};
	struct sluice_identity id;
	X509 *x = make_cert("alice", sans, SLUICE_ARRAY_LEN(sans));

	(void)state;
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);  /* the identity must own copies */
	assert_string_equal(id.cn, "alice");
	assert_int_equal(id.n_uris, 2);
	assert_string_equal(id.uris[0], "spiffe://td/ns/prod/sa/api");
	assert_string_equal(id.uris[1], "spiffe://td/ns/prod/sa/web");
	assert_int_equal(id.n_dns, 2);
	assert_string_equal(id.dns[0], "api.example.com");
	assert_string_equal(id.dns[1], "API2.example.com");
	assert_false(id.has_peer);
	sluice_identity_clear(&id);
	assert_null(id.cn);
	assert_int_equal(id.n_uris, 0);
}

static void test_no_cn_uri_only(void **state)
{
	static const struct san sans[] = { { GEN_URI, "spiffe://td/job/batch", -1 } };
	struct sluice_identity id;
	struct sluice_client_cfg any = client(SLUICE_ID_ANY, NULL);
	struct sluice_client_cfg cn = client(SLUICE_ID_CN, "batch");
	char name[SLUICE_ID_NAME_LEN];
	X509 *x = make_cert(NULL, sans, 1);

	(void)state;
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);
	assert_null(id.cn);
	assert_int_equal(id.n_uris, 1);
	assert_int_equal(id.n_dns, 0);
	assert_false(sluice_identity_match(&id, &cn));
	assert_true(sluice_identity_match(&id, &any));
	sluice_identity_name(&id, &any, name, sizeof(name));
	assert_string_equal(name, "URI=spiffe://td/job/batch");
	sluice_identity_clear(&id);
}

static void test_embedded_nul_and_long_names_skipped(void **state)
{
	char long_name[SLUICE_ID_NAME_MAX + 2];
	char max_name[SLUICE_ID_NAME_MAX + 1];
	struct san sans[] = {
		{ GEN_DNS, "evil.example.com\0.good.example.com", 34 },
		{ GEN_DNS, "ok.example.com", -1 },
		{ GEN_URI, long_name, -1 },
		{ GEN_URI, max_name, -1 },
		{ GEN_DNS, "", 0 },
	};
	struct sluice_client_cfg evil = client(SLUICE_ID_DNS, "evil.example.com");
	struct sluice_identity id;
	X509 *x;

	(void)state;
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';    /* 1025 bytes: one too many */
	memset(max_name, 'b', sizeof(max_name) - 1);
	max_name[sizeof(max_name) - 1] = '\0';      /* exactly 1 KiB: kept */
	x = make_cert("bob", sans, SLUICE_ARRAY_LEN(sans));
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);
	assert_int_equal(id.n_dns, 1);
	assert_string_equal(id.dns[0], "ok.example.com");
	assert_int_equal(id.n_uris, 1);
	assert_int_equal(strlen(id.uris[0]), SLUICE_ID_NAME_MAX);
	assert_false(sluice_identity_match(&id, &evil));
	sluice_identity_clear(&id);
}

static void test_names_capped(void **state)
{
	struct san sans[SLUICE_ID_MAX_NAMES + 3];
	char vals[SLUICE_ID_MAX_NAMES + 3][32];
	struct sluice_identity id;
	size_t i;
	X509 *x;

	(void)state;
	for (i = 0; i < SLUICE_ARRAY_LEN(sans); i++) {
		snprintf(vals[i], sizeof(vals[i]), "spiffe://td/n%zu", i);
		sans[i] = (struct san){ GEN_URI, vals[i], -1 };
	}
	x = make_cert("c", sans, SLUICE_ARRAY_LEN(sans));
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);
	assert_int_equal(id.n_uris, SLUICE_ID_MAX_NAMES);
	assert_string_equal(id.uris[SLUICE_ID_MAX_NAMES - 1], vals[SLUICE_ID_MAX_NAMES - 1]);
	sluice_identity_clear(&id);
}

static void test_bmpstring_cn_read_as_utf8(void **state)
{
	static const unsigned char bmp[] = { 0, 'c', 0, 'a', 0, 'r', 0, 'o', 0, 'l' };
	struct sluice_identity id;
	X509_NAME_ENTRY *e;
	X509 *x = make_cert(NULL, NULL, 0);

	(void)state;
	e = X509_NAME_ENTRY_create_by_NID(NULL, NID_commonName, V_ASN1_BMPSTRING, bmp, sizeof(bmp));
	assert_non_null(e);
	assert_int_equal(X509_NAME_add_entry(X509_get_subject_name(x), e, -1, 0), 1);
	X509_NAME_ENTRY_free(e);
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);
	assert_non_null(id.cn);
	assert_string_equal(id.cn, "carol");
	sluice_identity_clear(&id);
}

static void test_match_kinds(void **state)
{
	static const struct san sans[] = {
		{ GEN_URI, "spiffe://td/ns/prod/sa/api", -1 },
		{ GEN_DNS, "Api.Example.COM", -1 },
	};
	struct sluice_identity id;
	X509 *x = make_cert("alice", sans, SLUICE_ARRAY_LEN(sans));
	struct {
		struct sluice_client_cfg c;
		bool want;
	} cases[] = {
		{ client(SLUICE_ID_ANY, NULL), true },
		{ client(SLUICE_ID_CN, "alice"), true },
		{ client(SLUICE_ID_CN, "Alice"), false },       /* CN is exact */
		{ client(SLUICE_ID_CN, "alic"), false },
		{ client(SLUICE_ID_URI, "spiffe://td/ns/prod/sa/api"), true },
		{ client(SLUICE_ID_URI, "spiffe://td/ns/prod/sa/ap"), false },
		{ client(SLUICE_ID_URI, "spiffe://td/ns/prod/*"), true },
		{ client(SLUICE_ID_URI, "spiffe://td/ns/dev/*"), false },
		{ client(SLUICE_ID_URI, "*"), true },
		{ client(SLUICE_ID_URI, "SPIFFE://td/ns/prod/sa/api"), false },
		{ client(SLUICE_ID_DNS, "api.example.com"), true },  /* case-insensitive */
		{ client(SLUICE_ID_DNS, "api.example.co"), false },
		{ client(SLUICE_ID_DNS, "alice"), false },
		{ client_ip("0.0.0.0", 0), false },             /* no peer on an mtls identity */
	};
	size_t i;

	(void)state;
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	X509_free(x);
	for (i = 0; i < SLUICE_ARRAY_LEN(cases); i++) {
		if (sluice_identity_match(&id, &cases[i].c) != cases[i].want)
			fail_msg("case %zu (kind %d value %s): expected %s", i, cases[i].c.kind,
			         cases[i].c.value ? cases[i].c.value : "-",
			         cases[i].want ? "match" : "no match");
	}
	sluice_identity_clear(&id);
}

static void test_peer_identity_and_ip_match(void **state)
{
	struct sockaddr_in sa = sin4("198.18.0.2", 40000);
	struct sluice_client_cfg in = client_ip("198.18.0.0", 15);
	struct sluice_client_cfg out = client_ip("10.0.0.0", 8);
	struct sluice_client_cfg any = client(SLUICE_ID_ANY, NULL);
	struct sluice_client_cfg cn = client(SLUICE_ID_CN, "alice");
	struct sluice_identity id;
	char name[SLUICE_ID_NAME_LEN];

	(void)state;
	sluice_identity_from_peer(&id, (struct sockaddr *)&sa);
	assert_true(id.has_peer);
	assert_int_equal(id.peer.len, sizeof(sa));
	assert_true(sluice_identity_match(&id, &in));
	assert_false(sluice_identity_match(&id, &out));
	assert_false(sluice_identity_match(&id, &cn));
	sluice_identity_name(&id, &in, name, sizeof(name));
	assert_string_equal(name, "IP=198.18.0.2");
	sluice_identity_name(&id, &any, name, sizeof(name));
	assert_string_equal(name, "IP=198.18.0.2");
	sluice_identity_clear(&id);
	assert_false(id.has_peer);
}

static void test_find_client_first_match_in_order(void **state)
{
	static const struct san sans[] = {
		{ GEN_URI, "spiffe://td/ns/prod/sa/api", -1 },
		{ GEN_DNS, "api.example.com", -1 },
	};
	struct sluice_client_cfg clients[] = {
		client(SLUICE_ID_CN, "bob"),
		client(SLUICE_ID_DNS, "API.example.com"),
		client(SLUICE_ID_URI, "spiffe://td/ns/prod/*"),
		client(SLUICE_ID_ANY, NULL),
	};
	struct sluice_config cfg;
	struct sluice_identity id, nobody;
	X509 *x = make_cert("alice", sans, SLUICE_ARRAY_LEN(sans));
	X509 *y = make_cert("mallory", NULL, 0);

	(void)state;
	memset(&cfg, 0, sizeof(cfg));
	cfg.clients = clients;
	cfg.n_clients = SLUICE_ARRAY_LEN(clients);
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	assert_int_equal(sluice_identity_from_cert(&nobody, y), 0);
	X509_free(x);
	X509_free(y);

	assert_int_equal(sluice_identity_find_client(&cfg, &id), 1);     /* DNS before URI */
	assert_int_equal(sluice_identity_find_client(&cfg, &nobody), 3); /* falls to "*" */
	cfg.n_clients = 3;
	assert_int_equal(sluice_identity_find_client(&cfg, &nobody), -1);
	cfg.n_clients = 0;
	assert_int_equal(sluice_identity_find_client(&cfg, &id), -1);
	sluice_identity_clear(&id);
	sluice_identity_clear(&nobody);
}

static void test_identity_name_follows_matched_entry(void **state)
{
	static const struct san sans[] = {
		{ GEN_DNS, "first.example.com", -1 },
		{ GEN_URI, "spiffe://td/a", -1 },
		{ GEN_URI, "spiffe://td/b/x", -1 },
		{ GEN_DNS, "Second.Example.com", -1 },
	};
	struct sluice_client_cfg cn = client(SLUICE_ID_CN, "alice");
	struct sluice_client_cfg uri = client(SLUICE_ID_URI, "spiffe://td/b/*");
	struct sluice_client_cfg dns = client(SLUICE_ID_DNS, "second.example.com");
	struct sluice_client_cfg any = client(SLUICE_ID_ANY, NULL);
	struct sluice_identity id, nocn, bare;
	char name[SLUICE_ID_NAME_LEN];
	X509 *x = make_cert("alice", sans, SLUICE_ARRAY_LEN(sans));
	X509 *y = make_cert(NULL, sans, SLUICE_ARRAY_LEN(sans));
	X509 *z = make_cert(NULL, &sans[0], 1);
	X509 *w = make_cert(NULL, NULL, 0);

	(void)state;
	assert_int_equal(sluice_identity_from_cert(&id, x), 0);
	assert_int_equal(sluice_identity_from_cert(&nocn, y), 0);

	sluice_identity_name(&id, &cn, name, sizeof(name));
	assert_string_equal(name, "CN=alice");
	sluice_identity_name(&id, &uri, name, sizeof(name));
	assert_string_equal(name, "URI=spiffe://td/b/x");       /* the matched one */
	sluice_identity_name(&id, &dns, name, sizeof(name));
	assert_string_equal(name, "DNS=Second.Example.com");    /* as in the certificate */
	sluice_identity_name(&id, &any, name, sizeof(name));
	assert_string_equal(name, "CN=alice");
	sluice_identity_name(&nocn, &any, name, sizeof(name));
	assert_string_equal(name, "URI=spiffe://td/a");
	sluice_identity_clear(&nocn);

	assert_int_equal(sluice_identity_from_cert(&nocn, z), 0);
	sluice_identity_name(&nocn, &any, name, sizeof(name));
	assert_string_equal(name, "DNS=first.example.com");
	assert_int_equal(sluice_identity_from_cert(&bare, w), 0);
	sluice_identity_name(&bare, &any, name, sizeof(name));
	assert_string_equal(name, "*");

	/* A short buffer truncates but stays terminated. */
	sluice_identity_name(&id, &cn, name, 4);
	assert_string_equal(name, "CN=");

	sluice_identity_clear(&id);
	sluice_identity_clear(&nocn);
	sluice_identity_clear(&bare);
	X509_free(x);
	X509_free(y);
	X509_free(z);
	X509_free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cn_and_sans_extracted_in_order),
		cmocka_unit_test(test_no_cn_uri_only),
		cmocka_unit_test(test_embedded_nul_and_long_names_skipped),
		cmocka_unit_test(test_names_capped),
		cmocka_unit_test(test_bmpstring_cn_read_as_utf8),
		cmocka_unit_test(test_match_kinds),
		cmocka_unit_test(test_peer_identity_and_ip_match),
		cmocka_unit_test(test_find_client_first_match_in_order),
		cmocka_unit_test(test_identity_name_follows_matched_entry),
	};

	return cmocka_run_group_tests(tests, setup_key, teardown_key);
}
