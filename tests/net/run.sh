#!/usr/bin/env bash
# Integration suite: sluice between real hosts in network namespaces.
#   tests/net/run.sh [SLUICE_BINARY] [TEST_NAME...]
# Each test prints what it checked; the last line is "N passed, N failed".
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
SLUICE=${1:-build/sluice}; shift || true
SLUICE=$(readlink -f "$SLUICE")
TOOLS=$ROOT/build/tools
[ "$(id -u)" = 0 ] || { echo "tests/net: needs root (network namespaces)"; exit 1; }
# BPF counters: SLUICE_NET_BPF=require (default: every case runs on the
# kernel's counters, and sluice refuses to start without them) or off (the
# atomics).  A private mount namespace gets its own bpffs, so pins of
# concurrent runs and of the host never meet.
SLUICE_NET_BPF=${SLUICE_NET_BPF:-require}
if [ "$SLUICE_NET_BPF" != off ] && [ -z "${SLUICE_NET_MNTNS:-}" ]; then
	exec env SLUICE_NET_MNTNS=1 unshare --mount --propagation private "$0" "$SLUICE" "$@"
fi
if [ -n "${SLUICE_NET_MNTNS:-}" ]; then
	mount -t bpf bpf /sys/fs/bpf || { echo "tests/net: cannot mount bpffs"; exit 1; }
fi
[ -x "$SLUICE" ] && [ -x "$TOOLS/echo" ] && [ -x "$TOOLS/client" ] || { echo "build first: make"; exit 1; }

WORK=$(mktemp -d /tmp/sluice-net.XXXXXX)
BPF_PIN=/sys/fs/bpf/sluice
CERTS=$WORK/certs
. tests/net/lib.sh

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=66}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:exitcode=66:second_deadlock_stack=1}
# Sanitized builds are several times slower: bulk sizes shrink, checks don't.
case "${SLUICE_SANITIZER:-}" in
	"") BULK=$((64 * 1024 * 1024)) ;;
	*)  BULK=$((16 * 1024 * 1024)) ;;
esac

cleanup() { sluice_stop >/dev/null 2>&1; exec 2>/dev/null; net_teardown; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

net_setup
SLUICE_SERVER_SANS="IP:198.18.0.1,IP:2001:db8::1" tools/gen-certs "$CERTS" >/dev/null
for i in 1 2 3; do up_start $i; done

# config FILE [listener/client overrides via env]: a config for this suite
config() {
	local f=$1
	cat >"$f" <<YAML
workers: ${WORKERS:-2}
log: { level: info, format: json }
drain: ${DRAIN:-30s}
tls: { ca: $CERTS/ca.pem, cert: $CERTS/server.pem, key: $CERTS/server.key, crl: $CERTS/crl.pem }
bpf: { mode: ${BPF_MODE:-$SLUICE_NET_BPF}, pin_path: $BPF_PIN }
listeners:
  - name: web
    listen: "198.18.0.1:5000"
    mode: mtls
    upstream: web
    timeouts: { handshake: ${HS_TIMEOUT:-5s}, connect: ${CONNECT_TIMEOUT:-1s}, idle: ${IDLE_TIMEOUT:-300s}, lifetime: ${LIFETIME:-0s} }
  - name: web6
    listen: "[2001:db8::1]:5001"
    mode: mtls
    upstream: web6
  - name: plain
    listen: "198.18.0.1:5002"
    mode: tcp
    upstream: web
  - name: guarded
    listen: "198.18.0.1:5003"
    mode: mtls
    upstream: web
    deny_cidrs: ["198.18.0.0/24"]
upstreams:
  - name: web
    balance: least_conn
    servers:
      - { address: "198.18.1.2:9000" }
      - { address: "198.18.2.2:9000" }
      - { address: "198.18.3.2:9000" }
  - name: web6
    balance: least_conn
    servers:
      - { address: "[2001:db8:1::2]:9000" }
      - { address: "[2001:db8:2::2]:9000" }
clients:
  - id: "CN=alice"
    allow: [web, web6]
    max_conns: ${ALICE_MAX:-0}
    conn_rate: ${ALICE_RATE:-0}
    conn_burst: ${ALICE_BURST:-0}
  - id: "URI=spiffe://sluice.test/carol"
    allow: [web]
  - id: "CN=bob"
    allow: [web6]
  - id: "IP=198.18.0.0/24"
    allow: [web]
YAML
}

PASS=0; FAIL=0; FAILED=()
run_test() {
	local name=$1
	local rc
	TEST_NAME=$name
	up_all
	log "== $name"
	# A subshell per test: set -e applies, and its EXIT trap stops a sluice
	# the test left running when it failed half-way.
	(
		trap 'rc=$?; if [ $rc != 0 ] && [ -n "$SLUICE_LOG" ]; then
			log "   --- sluice log tail ($SLUICE_LOG):"; tail -15 "$SLUICE_LOG" >&2; fi
			sluice_stop >/dev/null 2>&1; exit $rc' EXIT
		set -e; [ -z "${TRACE:-}" ] || set -x
		"$name"
	)
	rc=$?
	if [ $rc = 0 ]; then
		PASS=$((PASS+1)); log "   ok: $name"
	else
		FAIL=$((FAIL+1)); FAILED+=("$name"); log "   FAILED: $name"
	fi
}

. tests/net/cases.sh
[ "$SLUICE_NET_BPF" = off ] || . tests/net/bpf.sh
[ "$SLUICE_NET_BPF" = off ] || . tests/net/sockmap.sh
. tests/net/faults.sh

TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=($(declare -F | awk '{print $3}' | grep '^t_'))
for t in "${TESTS[@]}"; do run_test "$t"; done
[ $FAIL -eq 0 ] || log "failed: ${FAILED[*]}"
echo "net${SLUICE_SANITIZER:+ ($SLUICE_SANITIZER)}: $PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
