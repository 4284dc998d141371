#!/usr/bin/env bash
# demo.sh — `make demo`: three echo upstreams, sluice in front of them with
# sluice.example.yaml, a few mTLS connections as alice (answered by the
# upstreams, spread by least_conn) and one as bob (verified but not allowed,
# refused).  Then leaves everything running until Ctrl-C.
#
# Run from anywhere; works in the repo root.  Needs build/sluice and
# build/tools/echo (make all), openssl, ss (iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE=${SLUICE:-build/sluice}
ECHO=build/tools/echo
CONFIG=sluice.example.yaml
PORT=5000
UPSTREAM_PORTS=(9101 9102 9103)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

for f in "$SLUICE" "$ECHO"; do
	[ -x "$f" ] || die "$f is missing: build first (make all, or make demo)"
done
command -v openssl >/dev/null || die "openssl CLI not found (make deps)"
command -v ss >/dev/null || die "ss not found (make deps: iproute2)"

listening() { # PORT -> 0 if something listens on 127.0.0.1:PORT (TCP)
	[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
}
for p in "$PORT" "${UPSTREAM_PORTS[@]}"; do
	listening "$p" && die "port $p is already in use (another demo running?)"
done

if [ ! -f certs/ca.pem ]; then
	say "generating test certificates into certs/"
	tools/gen-certs certs
fi

logdir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo.XXXXXX")
pids=()
# shellcheck disable=SC2317  # invoked from the traps
cleanup() {
	trap - EXIT INT TERM
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for _ in $(seq 20); do
		local alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ "$alive" = 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo
	echo "demo: stopped everything it started (logs kept in $logdir)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # PORT PID NAME: up to 5 s for a listener, failing early if PID died
	local i
	for i in $(seq 50); do
		listening "$1" && return 0
		kill -0 "$2" 2>/dev/null || { echo "demo: $3 exited; its log:" >&2; cat "$logdir/$3.log" >&2; return 1; }
		sleep 0.1
	done
	echo "demo: $3 is not listening on port $1 after 5 s; its log:" >&2
	cat "$logdir/$3.log" >&2
	return 1
}

say "starting three echo upstreams (--prefix: each reply says which one answered)"
for i in 1 2 3; do
	port=${UPSTREAM_PORTS[$((i - 1))]}
	"$ECHO" --listen "127.0.0.1:$port" --prefix --name "up$i" >"$logdir/up$i.log" 2>&1 &
	pids+=($!)
	wait_port "$port" "$!" "up$i"
	echo "up$i on 127.0.0.1:$port"
done

say "starting sluice: $SLUICE run -c $CONFIG"
"$SLUICE" run -c "$CONFIG" >"$logdir/sluice.log" 2>&1 &
sluice_pid=$!
pids+=("$sluice_pid")
wait_port "$PORT" "$sluice_pid" sluice
echo "sluice is listening on 127.0.0.1:$PORT (log: $logdir/sluice.log)"

s_client() { # NAME LINE HOLD -> the reply lines, or what went wrong
	{ printf '%s\n' "$2"; sleep "$3"; } |
		timeout 10 openssl s_client -connect "127.0.0.1:$PORT" \
			-cert "certs/$1.pem" -key "certs/$1.key" -CAfile certs/ca.pem \
			-quiet -no_ign_eof 2>"$logdir/s_client-$1.err" || true
}

say "alice (CN=alice, allowed to reach pool web): four connections at once"
alice_pids=()
for n in 1 2 3 4; do
	s_client alice "hello from alice #$n" 1.5 >"$logdir/alice-$n.out" &
	alice_pids+=($!)
done
for j in "${alice_pids[@]}"; do wait "$j" || true; done
for n in 1 2 3 4; do
	reply=$(cat "$logdir/alice-$n.out")
	if [ -n "$reply" ]; then
		echo "alice #$n -> $reply"
	else
		echo "alice #$n -> (no reply) $(grep -m1 -i error "$logdir/s_client-alice.err" || true)"
	fi
done
echo "(least_conn, weights 2/1/1: connections open at the same time spread over up1..up3)"

say "bob (CN=bob: a valid certificate, but allow: [] — refused)"
reply=$(s_client bob "hello from bob" 1)
if [ -n "$reply" ]; then
	echo "bob got a reply (unexpected!): $reply"
else
	echo "bob got no reply; openssl s_client said:"
	grep -v "^depth=\|^verify return\|Can't use SSL_get_servername" "$logdir/s_client-bob.err" | sed 's/^/  /' | head -5 || true
fi
sleep 0.3
echo "sluice's log about bob:"
if ! grep -i 'bob' "$logdir/sluice.log" | tail -n 3 | sed 's/^/  /' | grep .; then
	echo "  (no line mentioning bob yet; full log: $logdir/sluice.log)"
fi

echo
echo "sluice is running on 127.0.0.1:$PORT; try:"
echo "  openssl s_client -connect 127.0.0.1:$PORT -cert certs/alice.pem -key certs/alice.key -CAfile certs/ca.pem -quiet"
echo "Ctrl-C stops everything.  sluice's log follows:"
echo
tail -n 0 -f "$logdir/sluice.log" &
pids+=($!)
set +e
wait "$sluice_pid"
rc=$?
echo "demo: sluice exited with status $rc"
exit "$rc"
