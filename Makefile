# sluice — one entry point: build, test, demo, bench, deps, clean.
# Every build output lands under build/ (build/asan and build/tsan for the
# sanitizer variants of the same sources).

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2 -g
SAN     ?=
CFLAGS  := $(OPT) $(SAN) -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude -Isrc \
           -I$(BUILD)/bpf -fno-strict-aliasing -pthread
LDLIBS  += -lssl -lcrypto -lcyaml -lyaml -lbpf -lelf -lz -pthread

# The BPF object (bpf/sluice.bpf.c) and its skeleton; only src/bpf.c
# includes the skeleton.  -mcpu=v3: atomic exchange/cmpxchg (kernel >= 5.12).
CLANG      ?= clang
BPFTOOL    ?= bpftool
BPF_CFLAGS := -O2 -g -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 \
              -I/usr/include/x86_64-linux-gnu -Ibpf -Wall -Werror

SRCS     := $(filter-out src/main.c,$(wildcard src/*.c))
OBJS     := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
TOOLS    := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c))
UNITS    := $(patsubst tests/unit/%.c,$(BUILD)/unit/%,$(wildcard tests/unit/test_*.c))

DEB_PKGS := build-essential clang pkg-config libssl-dev openssl libcyaml-dev \
            libyaml-dev libcmocka-dev iproute2 procps jq valgrind socat \
            libclang-rt-14-dev strace libbpf-dev bpftool libelf-dev zlib1g-dev

.PHONY: all deps test unit net net-asan net-tsan valgrind demo clean sanitizers fuzz bench vm vm-rekey vm-measure bpf-test vm-bpf vm-sockmap soak soak-churn soak-sockmap soak-asan

all: $(BUILD)/sluice $(TOOLS)

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h include/sluice/*.h bpf/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/bpf/sluice.bpf.o: bpf/sluice.bpf.c $(wildcard bpf/*.h) | $(BUILD)/bpf
	$(CLANG) $(BPF_CFLAGS) -c -o $@ $<

# Test-only tc program: segments that overlap bytes already received
# (tests/net/sockmap.sh t_57, tests/vm/sockmap.sh).
$(BUILD)/bpf/overlap.bpf.o: tests/net/overlap.bpf.c | $(BUILD)/bpf
	$(CLANG) $(BPF_CFLAGS) -c -o $@ $<

$(BUILD)/bpf/sluice.skel.h: $(BUILD)/bpf/sluice.bpf.o
	$(BPFTOOL) gen skeleton $< name sluice_skel > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/bpf.o: $(BUILD)/bpf/sluice.skel.h

# Kernel test of the counters (root, bpffs, cgroup v2; own netns + mount ns).
$(BUILD)/bpf/counters: tests/bpf/counters.c $(BUILD)/libsluice.a | $(BUILD)/bpf
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libsluice.a $(LDLIBS)

$(BUILD)/libsluice.a: $(OBJS)
	ar rcs $@ $^

$(BUILD)/sluice: src/main.c $(BUILD)/libsluice.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libsluice.a $(LDLIBS)

$(BUILD)/tools/%: tools/%.c $(wildcard tools/*.h) | $(BUILD)/tools
	$(CC) $(CFLAGS) -o $@ $< -lssl -lcrypto -pthread

$(BUILD)/unit/%: tests/unit/%.c $(BUILD)/libsluice.a | $(BUILD)/unit
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libsluice.a $(LDLIBS) -lcmocka

$(BUILD)/obj $(BUILD)/tools $(BUILD)/unit $(BUILD)/bpf:
	mkdir -p $@

bpf-test: $(BUILD)/bpf/counters
	tests/bpf/counters.sh $(BUILD)/bpf/counters

# The sockmap datapath on Debian 12's 6.1: stalls, a FIN while paused, dmesg.
vm-sockmap: all $(BUILD)/bpf/overlap.bpf.o
	VM_TIMEOUT=900 VM_MODULES="sch_ingress cls_bpf" tests/vm/run.sh tests/vm/sockmap.sh $(BUILD)/sluice \
	  $(BUILD)/tools/echo $(BUILD)/tools/client $$(command -v jq) $$(command -v bpftool) $$(command -v tc) \
	  $(BUILD)/bpf/overlap.bpf.o

# The same object through Debian 12's 6.1 verifier, counters checked there too.
vm-bpf: $(BUILD)/bpf/counters
	VM_MODULES="inet_diag tcp_diag" tests/vm/run.sh tests/vm/bpf.sh $(BUILD)/bpf/counters \
	  $$(command -v bpftool) $$(command -v jq) $$(command -v ss)

# Installs every Debian package that build, tests and demo need. Idempotent.
deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get)"; exit 1; fi
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "deps: all installed"; fi

unit: $(UNITS)
	@set -e; for t in $(UNITS); do echo "== $$t"; $$t; done

# Sanitizer builds of the same tree, used by the integration suite.
$(BUILD)/asan/sluice: FORCE
	$(MAKE) --no-print-directory BUILD=$(BUILD)/asan CC=clang OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" $(BUILD)/asan/sluice
$(BUILD)/tsan/sluice: FORCE
	$(MAKE) --no-print-directory BUILD=$(BUILD)/tsan CC=clang OPT="-O1 -g" \
	  SAN="-fsanitize=thread" $(BUILD)/tsan/sluice
FORCE:

net: all $(BUILD)/bpf/overlap.bpf.o
	tests/net/run.sh $(BUILD)/sluice

net-asan: all $(BUILD)/bpf/overlap.bpf.o $(BUILD)/asan/sluice
	SLUICE_SANITIZER=asan tests/net/run.sh $(BUILD)/asan/sluice

net-tsan: all $(BUILD)/tsan/sluice
	SLUICE_SANITIZER=tsan SLUICE_NET_BPF=off tests/net/run.sh $(BUILD)/tsan/sluice

# The kTLS proof: Debian's 6.1 kernel (tls module) under qemu TCG runs
# tests/vm/ktls.sh against this build (tests/vm/run.sh fetches and caches
# the kernel under $(BUILD)/vm).
VM_CERTS := $(BUILD)/vm-certs
$(VM_CERTS)/ca.pem: tools/gen-certs
	tools/gen-certs $(VM_CERTS) >/dev/null
vm: all $(VM_CERTS)/ca.pem
	tests/vm/run.sh tests/vm/ktls.sh $(BUILD)/sluice $(BUILD)/tools/echo $(BUILD)/tools/client /usr/bin/jq $(VM_CERTS)
# The same suite on a kernel that can rekey TLS 1.3 (>= 6.14): Debian's
# newest cloud kernel from trixie-backports (7.x), for the KeyUpdate cases;
# bulk is smaller there, as the 6.1 run already moves 64 MiB per suite.
vm-rekey: all $(VM_CERTS)/ca.pem
	printf 'CASES="bulk closes resume"\nBULK=8M\n' >$(BUILD)/vm-rekey.env
	VM_SUITE=trixie-backports tests/vm/run.sh tests/vm/ktls.sh $(BUILD)/sluice $(BUILD)/tools/echo \
	  $(BUILD)/tools/client /usr/bin/jq $(VM_CERTS) $(BUILD)/vm-rekey.env
# syscalls and userspace-copied bytes per MiB, ktls vs userspace (docs/bench.md)
vm-measure: all $(VM_CERTS)/ca.pem
	VM_TIMEOUT=1200 tests/vm/run.sh tests/vm/measure.sh $(BUILD)/sluice $(BUILD)/tools/echo $(BUILD)/tools/client /usr/bin/strace \
	  $(BUILD)/tools/loadgen $(VM_CERTS)

valgrind: $(UNITS)
	@set -e; for t in $(UNITS); do echo "== valgrind $$t"; \
	  valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite $$t; done

SOAK_SECONDS ?= 600
# Churn of good, refused and garbage clients through one sluice for
# SOAK_SECONDS, then: no byte mismatch, RSS and fds back to the baseline,
# counters back to zero (tests/soak/run.sh prints the figures); then the
# sockmap datapath's integrity soak, 50 x 1 GiB with random reader stalls
# (tests/net/sockmap.sh t_55; about 15-30 min).  make test runs only the
# churn, for 60 s: the 50 x 1 GiB soak alone would take CI past its
# budget, and make net already runs t_55 as 8 x 128 MiB.
soak: soak-churn soak-sockmap
soak-churn: all
	tests/soak/run.sh $(BUILD)/sluice $(SOAK_SECONDS)
soak-sockmap: all
	SM_SOAK_N=50 SM_SOAK_SIZE=1073741824 timeout 3600 tests/net/run.sh $(BUILD)/sluice t_55_sockmap_integrity_with_random_stalls
# The same under ASan+UBSan with the atomics (bpf off): a sanitizer report,
# a leak or a counter left above zero fails it.
soak-asan: all $(BUILD)/asan/sluice
	SLUICE_SANITIZER=asan SLUICE_NET_BPF=off tests/soak/run.sh $(BUILD)/asan/sluice $(SOAK_SECONDS)

FUZZ_SECONDS ?= 60
# libFuzzer targets (clang, ASan+UBSan): replays tests/fuzz/regressions/, then
# fuzzes each target for FUZZ_SECONDS; any finding fails.
fuzz:
	BUILD=$(BUILD) CLANG=clang tests/fuzz/run.sh $(FUZZ_SECONDS)

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) valgrind
	$(MAKE) bpf-test
	$(MAKE) net
	$(MAKE) net-asan
	$(MAKE) net-tsan
	$(MAKE) soak-churn SOAK_SECONDS=60
	$(MAKE) soak-asan SOAK_SECONDS=60
	$(MAKE) vm
	$(MAKE) vm-rekey
	$(MAKE) vm-bpf
	$(MAKE) vm-sockmap
	$(MAKE) fuzz FUZZ_SECONDS=30
	$(MAKE) bench QUICK=1
	@echo "make test: all suites passed"

# Benchmarks against HAProxy, nginx stream, stunnel and socat (docs/bench.md).
# QUICK=1: the CI smoke run (< 2 min, no thresholds; writes build/bench-quick.md).
# Needs root: installs the peers with apt-get if missing.
bench: all
	tools/bench $(if $(QUICK),--quick)

demo: deps all
	tools/demo.sh

clean:
	rm -rf $(BUILD)
