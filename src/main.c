/* sluice CLI: run, check, version.  A thin layer over include/sluice/sluice.h. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <sluice/sluice.h>

static sluice_proxy *running;

static void on_signal(int sig)
{
	(void)sig;
	if (running)
		sluice_proxy_stop(running);
}

static int usage(void)
{
	fprintf(stderr, "usage: sluice run -c FILE\n"
	                "       sluice check -c FILE\n"
	                "       sluice version\n");
	return 2;
}

static const char *config_arg(int argc, char **argv)
{
	if (argc == 4 && (strcmp(argv[2], "-c") == 0 || strcmp(argv[2], "--config") == 0))
		return argv[3];
	return NULL;
}

int main(int argc, char **argv)
{
	char err[1024];
	const char *path;
	struct sigaction sa;
	int rc;

	if (argc < 2)
		return usage();
	if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
		printf("sluice %s\n", sluice_version());
		return 0;
	}
	path = config_arg(argc, argv);
	if (!path)
		return usage();
	if (strcmp(argv[1], "check") == 0) {
		if (sluice_config_check(path, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			return 2;
		}
		printf("%s: ok\n", path);
		return 0;
	}
	if (strcmp(argv[1], "run") != 0)
		return usage();

	/* A peer that vanishes must cost an EPIPE, not the process. */
	signal(SIGPIPE, SIG_IGN);
	/* Every proxied connection costs two fds (and a pipe pair while bytes
	 * are in flight); the soft limit is often 1024 while the hard one is
	 * far higher.  Take what we are allowed, as HAProxy and nginx do. */
	{
		struct rlimit rl;

		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
				fprintf(stderr, "sluice: cannot raise the open-files limit: %m\n");
		}
	}
	if (sluice_proxy_create(path, &running, err, sizeof(err)) < 0) {
		fprintf(stderr, "sluice: %s\n", err);
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	rc = sluice_proxy_run(running);
	sluice_proxy_destroy(running);
	return rc == 0 ? 0 : 1;
}
