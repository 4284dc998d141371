# tests/net/lib.sh — the network-namespace harness.
#
# Hosts: a client, a proxy and three upstreams, each its own netns, joined
# to the proxy by veth links (addresses from 198.18.0.0/15 and 2001:db8::/32):
#
#   client 198.18.0.2 / 2001:db8::2  ── proxy 198.18.0.1 / 2001:db8::1
#   up<i>  198.18.<i>.2 / 2001:db8:<i>::2 ── proxy 198.18.<i>.1 / 2001:db8:<i>::1
#
# Everything made here is removed by net_teardown (trapped on EXIT).

SUF=${SUF:-$$}
NSC=slc$SUF; NSP=slp$SUF
NSU=(slu1$SUF slu2$SUF slu3$SUF)
PIDS=()

log() { printf '%s\n' "$*" >&2; }

net_setup() {
	ip netns add $NSC; ip netns add $NSP
	for n in "${NSU[@]}"; do ip netns add $n; done
	for n in $NSC $NSP "${NSU[@]}"; do ip -n $n link set lo up; done
	ip link add slc0$SUF type veth peer name slpc$SUF
	ip link set slc0$SUF netns $NSC; ip link set slpc$SUF netns $NSP
	ip -n $NSC addr add 198.18.0.2/24 dev slc0$SUF
	ip -n $NSC addr add 2001:db8::2/64 dev slc0$SUF nodad
	ip -n $NSP addr add 198.18.0.1/24 dev slpc$SUF
	ip -n $NSP addr add 2001:db8::1/64 dev slpc$SUF nodad
	ip -n $NSC link set slc0$SUF up; ip -n $NSP link set slpc$SUF up
	local i
	for i in 1 2 3; do
		local u=${NSU[$((i-1))]}
		ip link add slu$i$SUF type veth peer name slp$i$SUF
		ip link set slu$i$SUF netns $u; ip link set slp$i$SUF netns $NSP
		ip -n $u addr add 198.18.$i.2/24 dev slu$i$SUF
		ip -n $u addr add 2001:db8:$i::2/64 dev slu$i$SUF nodad
		ip -n $NSP addr add 198.18.$i.1/24 dev slp$i$SUF
		ip -n $NSP addr add 2001:db8:$i::1/64 dev slp$i$SUF nodad
		ip -n $u link set slu$i$SUF up; ip -n $NSP link set slp$i$SUF up
		ip -n $u route add default via 198.18.$i.1
		ip -n $u -6 route add default via 2001:db8:$i::1
	done
	ip -n $NSC route add default via 198.18.0.1
	ip -n $NSC -6 route add default via 2001:db8::1
}

net_teardown() {
	local p i
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	for i in 1 2 3; do kill -9 $(up_pids $i) 2>/dev/null; done
	wait 2>/dev/null
	for n in $NSC $NSP "${NSU[@]}"; do ip netns del $n 2>/dev/null; done
}

# nsenter execs the command in place (ip netns exec forks and waits), so
# $! is the program itself and signals in the tests reach it.
inns() { local ns=$1; shift; nsenter --net=/run/netns/$ns "$@"; }
inc() { inns $NSC "$@"; }   # on the client host
inp() { inns $NSP "$@"; }   # on the proxy host
inu() { local i=$1; shift; inns ${NSU[$((i-1))]} "$@"; }  # on upstream i

# wait_port NS PORT: until something listens there (bounded: 10 s)
wait_port() {
	local ns=$1 port=$2 i
	for i in $(seq 100); do
		inns "$ns" ss -Hltn "sport = :$port" | grep -q . && return 0
		sleep 0.1
	done
	log "nothing listening on port $port in $ns"; return 1
}

# established NS PORT: number of established TCP connections on local PORT
established() {
	inns "$1" ss -Htn state established "sport = :$2" | wc -l
}

# up_start I: echo upstreams on 198.18.I.2:9000 and [2001:db8:I::2]:9000.
# Simple commands (not functions) in the background, so the pid is the
# program's; up_stop finds them by their namespace, so any subshell can stop
# what another started.
up_start() {
	local i=$1 ns=${NSU[$(($1-1))]}
	nsenter --net=/run/netns/$ns "$TOOLS/echo" --listen "198.18.$i.2:9000" --name up$i >/dev/null 2>&1 &
	nsenter --net=/run/netns/$ns "$TOOLS/echo" --listen "[2001:db8:$i::2]:9000" --name up${i}v6 >/dev/null 2>&1 &
	wait_port $ns 9000
}
up_pids() { ip netns pids ${NSU[$(($1-1))]} 2>/dev/null; }   # only echo servers run there
up_stop() {
	local i=$1 n
	kill $(up_pids $i) 2>/dev/null || true
	for n in $(seq 100); do [ -z "$(up_pids $i)" ] && return 0; sleep 0.05; done
	log "upstream $i did not stop"; return 1
}
# every upstream listening (a failed test may have left one stopped)
up_all() {
	local i
	for i in 1 2 3; do
		[ "$(up_pids $i | wc -l)" = 2 ] || { up_stop $i; up_start $i; }
	done
}

SLUICE_PID=; SLUICE_LOG=
# sluice_start CONFIG PORT: runs sluice on the proxy host, logs to $WORK/<test>.<n>.log
sluice_start() {
	local n=1
	while [ -e "$WORK/${TEST_NAME:-sluice}.$n.log" ]; do n=$((n+1)); done
	SLUICE_LOG=$WORK/${TEST_NAME:-sluice}.$n.log
	nsenter --net=/run/netns/$NSP "$SLUICE" run -c "$1" 2>"$SLUICE_LOG" &
	SLUICE_PID=$!; PIDS+=($!)
	wait_port $NSP "$2" || { cat "$SLUICE_LOG" >&2; return 1; }
}

# sluice_stop: SIGTERM, wait (bounded), expect exit 0 and no sanitizer report
sluice_stop() {
	local rc i
	[ -n "$SLUICE_PID" ] || return 0
	kill -TERM "$SLUICE_PID" 2>/dev/null
	for i in $(seq 300); do kill -0 "$SLUICE_PID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$SLUICE_PID" 2>/dev/null; then
		log "sluice did not exit within 30 s of SIGTERM"; kill -9 "$SLUICE_PID"; wait "$SLUICE_PID"; SLUICE_PID=; return 1
	fi
	wait "$SLUICE_PID"; rc=$?
	SLUICE_PID=
	if grep -qE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer|runtime error:' "$SLUICE_LOG"; then
		log "sanitizer report in $SLUICE_LOG:"; grep -A30 -E 'Sanitizer|runtime error' "$SLUICE_LOG" | head -60 >&2
		return 1
	fi
	[ "$rc" = 0 ] || { log "sluice exited $rc"; tail -5 "$SLUICE_LOG" >&2; return 1; }
}

# closes [jq filter]: the close lines of the current log (compact JSON)
closes() {
	grep '"event":"close"' "$SLUICE_LOG" | jq -c "select(${1:-true})"
}

# wait_closes N FILTER: until N close lines match (bounded: 15 s)
wait_closes() {
	local n=$1 f=$2 i
	for i in $(seq 150); do
		[ "$(closes "$f" | wc -l)" -ge "$n" ] && return 0
		sleep 0.1
	done
	log "expected $n close lines matching $f, found $(closes "$f" | wc -l):"; closes >&2
	return 1
}

# client ARGS: the test client on the client host; prints its JSON line
client() { inc "$TOOLS/client" "$@"; }
# alice/bob/...: mTLS client flags for a cert name in $CERTS
tlsas() { echo --tls --ca "$CERTS/ca.pem" --cert "$CERTS/$1.pem" --key "$CERTS/$1.key"; }

# expect_json JSON JQ-EXPR WHAT
expect_json() {
	if ! printf '%s' "$1" | jq -e "$2" >/dev/null 2>&1; then
		log "FAIL: $3: expected ($2) in: $1"; return 1
	fi
}
