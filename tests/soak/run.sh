#!/usr/bin/env bash
# Soak: churn through one sluice for a while, then check it came back to
# where it started.
#   tests/soak/run.sh [SLUICE_BINARY] [SECONDS]     (default build/sluice, $SOAK_SECONDS or 600)
#
# The network-namespace hosts of tests/net (lib.sh): a client, the proxy,
# three echo upstreams.  Six loops run side by side until the time is up
# (each also capped in iterations, every client capped by --timeout):
#
#   tls     alice over mTLS (IPv4): random sizes 0..8 MiB, TLS 1.2 or 1.3,
#           with or without half-close, some pausing their reads 1 s
#   tls6    bob over mTLS (IPv6 listener), random sizes
#   tcp     plain TCP (splice datapath), random sizes
#   refused bad certificates (expired, not yet valid, revoked, unrelated CA,
#           self-signed, no certificate, chain without a CRL, server-only
#           EKU) and an unauthorized client (bob on pool web)
#   garbage random bytes instead of a ClientHello; silent connections
#           (closed at the 2 s handshake deadline)
#   resets  alice uploads and resets (SO_LINGER 0) part-way
#
# Every good transfer is checked byte for byte by the client (SHA-256 of
# what it sent against what the echo returned); every refused one must get
# nothing back.  At the end:
#   - no byte mismatch, no unexpected failure, and exactly one close line
#     per connection made (nothing lost or stuck);
#   - sluice's fds back to the baseline (sockets and other fds exactly;
#     cached pipes within their cap), RSS back within a margin of it;
#   - the shared counters are back to zero: alice's max_conns (64) admits
#     64 concurrent connections and refuses the 65th, and three connections
#     held at once land one per upstream (least-conn sees no phantom load);
#   - sluice exits 0 on SIGTERM with no sanitizer report.
# The figures are printed.  SOAK_SEED picks the random sequence (default 1).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
SLUICE=$(readlink -f "${1:-build/sluice}")
DURATION=${2:-${SOAK_SECONDS:-600}}
TOOLS=$ROOT/build/tools
SEED=${SOAK_SEED:-1}
[ "$(id -u)" = 0 ] || { echo "tests/soak: needs root (network namespaces)"; exit 1; }
[ -x "$SLUICE" ] && [ -x "$TOOLS/echo" ] && [ -x "$TOOLS/client" ] || { echo "build first: make"; exit 1; }
case "$DURATION" in ''|*[!0-9]*) echo "tests/soak: SECONDS must be a whole number"; exit 2 ;; esac
# BPF counters as in tests/net: SLUICE_NET_BPF=require (default: the
# counters the end checks are the kernel's) or off (the atomics); a private
# mount namespace with its own bpffs, so pins never meet another run's.
SLUICE_NET_BPF=${SLUICE_NET_BPF:-require}
if [ "$SLUICE_NET_BPF" != off ] && [ -z "${SLUICE_NET_MNTNS:-}" ]; then
	exec env SLUICE_NET_MNTNS=1 unshare --mount --propagation private "$0" "$SLUICE" "$DURATION"
fi
if [ -n "${SLUICE_NET_MNTNS:-}" ]; then
	mount -t bpf bpf /sys/fs/bpf || { echo "tests/soak: cannot mount bpffs"; exit 1; }
fi

WORK=$(mktemp -d /tmp/sluice-soak.XXXXXX)
CERTS=$WORK/certs
SUF=k$$
. tests/net/lib.sh
TEST_NAME=soak

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=66}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:exitcode=66:second_deadlock_stack=1}
# Under ASan the quarantine keeps freed blocks resident (up to 256 MiB):
# RSS would measure it, not sluice.
[ "${SLUICE_SANITIZER:-}" != asan ] || ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
MAXSIZE=$((8 * 1024 * 1024))
[ -z "${SLUICE_SANITIZER:-}" ] || MAXSIZE=$((2 * 1024 * 1024))

cleanup() { sluice_stop >/dev/null 2>&1; exec 2>/dev/null; net_teardown; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { log "soak: FAIL: $*"; log "soak: work dir kept: $WORK"; KEEP=1; exit 1; }

net_setup
SLUICE_SERVER_SANS="IP:198.18.0.1,IP:2001:db8::1" tools/gen-certs "$CERTS" >/dev/null
for i in 1 2 3; do up_start $i; done

# session_cache: a small cache, so it is full within the first seconds and
# the RSS check below still catches a leak (the default 5000 sessions would
# hold ~56 MiB on its own; each full handshake here adds a session).
cat >$WORK/soak.yaml <<YAML
workers: 2
log: { level: info, format: json }
drain: 10s
tls: { ca: $CERTS/ca.pem, cert: $CERTS/server.pem, key: $CERTS/server.key, crl: $CERTS/crl.pem, session_cache: 256 }
bpf: { mode: $SLUICE_NET_BPF, pin_path: /sys/fs/bpf/sluice }
listeners:
  - name: web
    listen: "198.18.0.1:5000"
    mode: mtls
    upstream: web
    timeouts: { handshake: 2s, connect: 1s, idle: 30s, lifetime: 0s }
  - name: web6
    listen: "[2001:db8::1]:5001"
    mode: mtls
    upstream: web6
    timeouts: { handshake: 2s, connect: 1s, idle: 30s, lifetime: 0s }
  - name: plain
    listen: "198.18.0.1:5002"
    mode: tcp
    upstream: web
    timeouts: { handshake: 2s, connect: 1s, idle: 30s, lifetime: 0s }
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
      - { address: "[2001:db8:3::2]:9000" }
clients:
  - id: "CN=alice"
    allow: [web, web6]
    max_conns: 64
  - id: "CN=bob"
    allow: [web6]
  - id: "IP=198.18.0.0/24"
    allow: [web]
YAML
"$SLUICE" check -c $WORK/soak.yaml >/dev/null || fail "config"
sluice_start $WORK/soak.yaml 5000 || fail "sluice did not start"
PID=$SLUICE_PID

rss() { awk '/^VmRSS/ {print $2}' /proc/$PID/status; }
fds_other() { ls -l /proc/$PID/fd | grep -vc 'pipe:'; }   # includes ls's "total" line: same each time
fds_pipe() { ls -l /proc/$PID/fd | grep -c 'pipe:'; }
# Pipes cached per worker: at most min(64, fd limit / 64 / workers), two fds each.
PIPE_CAP=$((2 * 2 * 64))

# ---- the loops -----------------------------------------------------------
# Each appends one line per client run to $WORK/tally.<kind>:
#   CONNS OK_OR_EXPECTED BAD BYTES
# and the client's JSON to $WORK/bad.<kind> when something is wrong.

size() {   # a random transfer size: mostly small, sometimes up to MAXSIZE
	case $((RANDOM % 10)) in
	0) echo 0 ;;
	1|2|3|4) echo $((RANDOM % 65536 + 1)) ;;
	5|6|7|8) echo $(( (RANDOM * 32 + RANDOM % 32) % (1024 * 1024) + 1)) ;;
	9) echo $(( (RANDOM * 256 + RANDOM % 256) % MAXSIZE + 1)) ;;
	esac
}

# good KIND ADDR COUNT PARALLEL [client flags...]: echo transfers that must all succeed
good_run() {
	local kind=$1 addr=$2 count=$3 par=$4; shift 4
	local n extra=() out ok
	n=$(size)
	[ $((RANDOM % 2)) = 0 ] && extra+=(--half-close)
	out=$(client --connect "$addr" "$@" --send $n --seed $RANDOM --count $count --parallel $par --timeout 60 "${extra[@]}" 2>&1)
	ok=$(printf '%s' "$out" | jq -r '.ok // 0' 2>/dev/null || echo 0)
	echo "$count $ok $((count - ok)) $((2 * n * count))" >>$WORK/tally.$kind
	[ "$ok" = "$count" ] || echo "$n $* ${extra[*]}: $out" >>$WORK/bad.$kind
}

loop() {   # KIND: runs until END or MAXITER
	local kind=$1 it=0 v args c
	RANDOM=$((SEED * 1000 + ${#kind} * 7 + $(printf '%d' "'$kind")))
	while [ $(date +%s) -lt $END ] && [ $it -lt 100000 ]; do
		it=$((it + 1))
		case $kind in
		tls)
			args=($(tlsas alice))
			v=$((RANDOM % 3)); [ $v = 1 ] && args+=(--tls-version 1.2); [ $v = 2 ] && args+=(--tls-version 1.3)
			[ $((RANDOM % 8)) = 0 ] && args+=(--pause-read 1)
			good_run tls 198.18.0.1:5000 8 4 "${args[@]}" ;;
		tls6)
			good_run tls6 "[2001:db8::1]:5001" 4 2 $(tlsas bob) ;;
		tcp)
			good_run tcp 198.18.0.1:5002 8 4 ;;
		refused)
			c=(expired notyet revoked stranger selfsigned chain-long serverauth-only nocert bob)
			c=${c[$((RANDOM % ${#c[@]}))]}
			if [ $c = nocert ]; then args=(--tls --ca $CERTS/ca.pem --no-cert); else args=($(tlsas $c)); fi
			out=$(client --connect 198.18.0.1:5000 "${args[@]}" --send 100 --count 4 --parallel 4 --timeout 30 2>&1 || true)
			# every one refused: none ok, nothing echoed
			if printf '%s' "$out" | jq -e '.ok == 0 and .failed == 4 and .recv == 0' >/dev/null 2>&1; then
				echo "4 4 0 0" >>$WORK/tally.refused
			else
				echo "4 0 4 0" >>$WORK/tally.refused; echo "$c: $out" >>$WORK/bad.refused
			fi ;;
		garbage)
			if [ $((RANDOM % 4)) = 0 ]; then
				# silent: connect, send nothing; sluice closes at the 2 s deadline
				out=$(client --connect 198.18.0.1:5000 --hold 4 --expect-any --count 2 --parallel 2 --timeout 10 2>&1 || true)
				if printf '%s' "$out" | jq -e '.ok + .failed == 2 and .recv == 0' >/dev/null 2>&1; then
					echo "2 2 0 0" >>$WORK/tally.garbage
				else
					echo "2 0 2 0" >>$WORK/tally.garbage; echo "silent: $out" >>$WORK/bad.garbage
				fi
			else
				out=$(client --connect 198.18.0.1:5000 --garbage $((RANDOM % 16384 + 1)) --count 4 --parallel 4 --timeout 30 2>&1)
				if printf '%s' "$out" | jq -e '.ok == 4' >/dev/null 2>&1; then
					echo "4 4 0 0" >>$WORK/tally.garbage
				else
					echo "4 0 4 0" >>$WORK/tally.garbage; echo "garbage: $out" >>$WORK/bad.garbage
				fi
			fi ;;
		resets)
			out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send $MAXSIZE --reset-after $(( (RANDOM * 32) % (MAXSIZE / 2) + 1)) \
				--seed $RANDOM --count 4 --parallel 2 --timeout 60 2>&1)
			if printf '%s' "$out" | jq -e '.ok == 4' >/dev/null 2>&1; then
				echo "4 4 0 0" >>$WORK/tally.resets
			else
				echo "4 0 4 0" >>$WORK/tally.resets; echo "reset: $out" >>$WORK/bad.resets
			fi
			sleep 0.2 ;;
		esac
	done
}

KINDS="tls tls6 tcp refused garbage resets"
LOOP_PIDS=()
run_loops() {   # SECONDS: all loops side by side, their pids in LOOP_PIDS
	local k
	END=$(( $(date +%s) + $1 ))
	LOOP_PIDS=()
	for k in $KINDS; do loop $k & LOOP_PIDS+=($!); done
}
closes_n() { grep -c '"event":"close"' "$SLUICE_LOG"; }
conns_n() { cat $WORK/tally.* 2>/dev/null | awk '{n += $1} END {print n + 0}'; }
# wait_all_closed: one close line per connection made (bounded: 30 s)
wait_all_closed() {
	local i
	for i in $(seq 300); do [ "$(closes_n)" -ge "$(conns_n)" ] && return 0; sleep 0.1; done
	return 1
}

# ---- warm-up: every kind once, so pools and arenas exist; then the baseline
log "soak: $DURATION s, seed $SEED, sluice $SLUICE${SLUICE_SANITIZER:+ ($SLUICE_SANITIZER)}, bpf $SLUICE_NET_BPF"
T0=$(date +%s)
run_loops 3
for p in "${LOOP_PIDS[@]}"; do wait $p; done
wait_all_closed || fail "warm-up: $(closes_n) close lines for $(conns_n) connections"
sleep 0.5
RSS0=$(rss); FDO0=$(fds_other); FDP0=$(fds_pipe); C0=$(conns_n)
log "soak: baseline after warm-up ($C0 connections): RSS $RSS0 KiB, fds $FDO0 + $FDP0 pipe ends"

# ---- the soak
run_loops $DURATION
RSSMAX=$RSS0; SAMPLES=""; next=$(( $(date +%s) + DURATION / 6 + 1 ))
while [ $(date +%s) -lt $END ]; do
	r=$(rss); [ "$r" -gt $RSSMAX ] && RSSMAX=$r
	if [ $(date +%s) -ge $next ]; then SAMPLES="$SAMPLES $r"; next=$((next + DURATION / 6 + 1)); fi
	kill -0 $PID 2>/dev/null || fail "sluice died: $(tail -5 $SLUICE_LOG)"
	sleep 1
done
for p in "${LOOP_PIDS[@]}"; do wait $p; done
wait_all_closed || fail "$(closes_n) close lines for $(conns_n) connections: some connection never ended"
sleep 1
RSS1=$(rss); FDO1=$(fds_other); FDP1=$(fds_pipe)

# ---- figures
log "soak: per kind (warm-up included): connections, as expected, bad, bytes (both ways)"
for k in $KINDS; do
	awk -v k=$k '{n += $1; g += $2; b += $3; by += $4} END {printf "soak:   %-8s %7d %7d %4d %15.0f\n", k, n, g, b, by}' $WORK/tally.$k >&2
done
log "soak: close lines by result: $(grep '"event":"close"' $SLUICE_LOG | jq -r .result | sort | uniq -c | tr -s ' \n' ' ')"
log "soak: RSS KiB: baseline $RSS0, samples$SAMPLES, peak $RSSMAX, final $RSS1 ($((RSS1 - RSS0)) vs baseline)"
log "soak: fds: baseline $FDO0 + $FDP0 pipe ends, final $FDO1 + $FDP1 pipe ends (pipe cache cap $PIPE_CAP)"
log "soak: sluice CPU $(awk '{printf "%.1f s", ($14+$15)/100}' /proc/$PID/stat) over $(( $(date +%s) - T0 )) s"

# ---- checks
rc=0
for k in $KINDS; do
	if [ -s $WORK/bad.$k ]; then
		log "soak: FAIL: $k: $(wc -l <$WORK/bad.$k) bad runs, first: $(head -1 $WORK/bad.$k | cut -c1-600)"; rc=1
	fi
done
n=$(closes_n); c=$(conns_n)
[ "$n" = "$c" ] || { log "soak: FAIL: $n close lines for $c connections"; rc=1; }
good=$(cat $WORK/tally.tls $WORK/tally.tls6 $WORK/tally.tcp | awk '{g += $2} END {print g + 0}')
okl=$(grep '"event":"close"' $SLUICE_LOG | jq -r 'select(.result=="ok") | 1' | wc -l)
[ "$okl" = "$good" ] || { log "soak: FAIL: $okl close lines say ok, $good good transfers made"; rc=1; }
bad_results=$(grep '"event":"close"' $SLUICE_LOG | jq -r '.result' | grep -cvE '^(ok|client_error|tls_handshake|unauthorized|timeout_handshake)$' || true)
[ "$bad_results" = 0 ] || { log "soak: FAIL: $bad_results close lines with an unexpected result"; rc=1; }
[ "$FDO1" = "$FDO0" ] || { log "soak: FAIL: non-pipe fds $FDO0 -> $FDO1"; ls -l /proc/$PID/fd >&2; rc=1; }
[ "$FDP1" -le $PIPE_CAP ] || { log "soak: FAIL: $FDP1 pipe ends cached (cap $PIPE_CAP)"; rc=1; }
# RSS margin: 8 MiB or 25 % of the baseline, whichever is larger (malloc
# keeps some freed memory; a leak grows with the churn, far past this).
margin=$(( RSS0 / 4 > 8192 ? RSS0 / 4 : 8192 ))
[ $((RSS1 - RSS0)) -le $margin ] || { log "soak: FAIL: RSS $RSS0 -> $RSS1 KiB (margin $margin)"; rc=1; }

# Counters back to zero: alice's max_conns 64 is all free again ...
n0=$(closes_n)
client --connect 198.18.0.1:5000 $(tlsas alice) --hold 3 --send 1000 --half-close --count 64 --parallel 64 --timeout 60 >$WORK/held.json &
held=$!
for i in $(seq 100); do
	[ $(( $(established ${NSU[0]} 9000) + $(established ${NSU[1]} 9000) + $(established ${NSU[2]} 9000) )) -ge 64 ] && break
	sleep 0.1
done
out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 100 2>&1 || true)
printf '%s' "$out" | jq -e '.recv == 0 and .error != null' >/dev/null || { log "soak: FAIL: a 65th alice connection was admitted: $out"; rc=1; }
wait $held || true
jq -e '.ok == 64' $WORK/held.json >/dev/null || { log "soak: FAIL: 64 concurrent alice connections after the soak: $(cat $WORK/held.json)"; rc=1; }
for i in $(seq 100); do [ $(( $(closes_n) - n0 )) -ge 65 ] && break; sleep 0.1; done
[ "$(grep '"event":"close"' $SLUICE_LOG | tail -n +$((n0 + 1)) | grep -c '"result":"max_conns"')" = 1 ] \
	|| { log "soak: FAIL: expected exactly one max_conns refusal after the soak"; rc=1; }
# ... and least-conn sees every server idle: three held connections, one each.
client --connect 198.18.0.1:5000 $(tlsas alice) --hold 2 --send 1000 --half-close --count 3 --parallel 3 --timeout 30 >$WORK/three.json &
held=$!
for i in $(seq 50); do
	[ $(( $(established ${NSU[0]} 9000) + $(established ${NSU[1]} 9000) + $(established ${NSU[2]} 9000) )) -ge 3 ] && break
	sleep 0.1
done
spread="$(established ${NSU[0]} 9000)/$(established ${NSU[1]} 9000)/$(established ${NSU[2]} 9000)"
wait $held || true
[ "$spread" = 1/1/1 ] || { log "soak: FAIL: three connections spread $spread over the upstreams (a leaked count?)"; rc=1; }
jq -e '.ok == 3' $WORK/three.json >/dev/null || { log "soak: FAIL: $(cat $WORK/three.json)"; rc=1; }
log "soak: after: 64 concurrent alice connections admitted, the 65th refused (max_conns); 3 held connections spread $spread"
# ... and, with BPF, the kernel's own counters read as an operator would:
# every server and every client identity back to 0 active, and as many
# upstream closes counted as opens (nothing counted twice or missed).
if [ "$SLUICE_NET_BPF" != off ]; then
	for i in $(seq 100); do
		up=$(bpftool -j map dump pinned /sys/fs/bpf/sluice/upstream_conns | jq '[.[].formatted.value | .opened - .closed] | add')
		cl=$(bpftool -j map dump pinned /sys/fs/bpf/sluice/client_conns | jq '[.[].formatted.value | .opened - .closed] | add')
		[ "$up" = 0 ] && [ "$cl" = 0 ] && break
		sleep 0.1
	done
	opened=$(bpftool -j map dump pinned /sys/fs/bpf/sluice/upstream_conns | jq '[.[].formatted.value.opened] | add')
	[ "$up" = 0 ] && [ "$cl" = 0 ] || { log "soak: FAIL: BPF counters not back to 0: upstream active $up, client active $cl"; rc=1; }
	log "soak: BPF maps: upstream active $up (of $opened connects counted), client active $cl"
fi

sluice_stop || { log "soak: FAIL: sluice did not stop cleanly"; rc=1; }
if [ $rc = 0 ]; then
	echo "soak${SLUICE_SANITIZER:+ ($SLUICE_SANITIZER)}: passed ($(conns_n) connections in $DURATION s, no byte mismatch, RSS ${RSS0}->${RSS1} KiB, fds back to baseline)"
else
	echo "soak${SLUICE_SANITIZER:+ ($SLUICE_SANITIZER)}: FAILED (work dir kept: $WORK)"; KEEP=1
fi
exit $rc
