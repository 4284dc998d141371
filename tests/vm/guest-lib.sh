# tests/vm/guest-lib.sh — helpers for guest scripts run by tests/vm/run.sh.
# Sourced inside the VM (busybox ash, not bash):   . /guest-lib.sh
#
#   waitport PORT [SECS]      wait (default 20 s) for a TCP LISTEN socket on PORT
#   waitfor FILE REGEX [SECS] wait (default 20 s) until FILE has a line matching REGEX
#   tls_stat                  kTLS counters as one line of key=value
#   tls_counter NAME          one counter's value; fails if the kernel lacks it
#   check NAME CMD [ARGS...]  run CMD: PASS NAME, or FAIL NAME: CMD ARGS (rc=N)
#   pass NAME / fail NAME WHY record a result decided elsewhere
#   summary                   "N passed, N failed"; non-zero if any failed or none ran
#   sluice_config FILE KTLS WORKERS  a sluice config: one mtls listener on
#                             127.0.0.1:$LPORT to an echo on 127.0.0.1:$UPORT,
#                             certs from $CERTS, client alice allowed
#
# Waits poll instead of sleeping a fixed time: TCG makes every startup slow
# and its speed varies with the host's load.

_vm_pass=0
_vm_fail=0

# 0.1 s steps; a bound keeps a broken guest from spending the whole VM timeout.
_vm_steps() { echo $(( ${1:-20} * 10 )); }

waitport() {
	local hex n
	hex=$(printf '%04X' "$1")
	n=$(_vm_steps "$2")
	while [ "$n" -gt 0 ]; do
		# local_address is field 2 (ADDR:PORT in hex), state 0A is LISTEN.
		cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
			awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' &&
			return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "waitport: nothing listens on port $1 after ${2:-20}s" >&2
	return 1
}

waitfor() {
	local n
	n=$(_vm_steps "$3")
	while [ "$n" -gt 0 ]; do
		grep -aqE "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "waitfor: no /$2/ in $1 after ${3:-20}s" >&2
	return 1
}

# TlsTxSw/TlsRxSw count kTLS setups (software crypto) since boot, the Curr
# ones the sockets that have it now; the Rekey ones exist only on kernels
# that can rekey (absent on 6.1).
tls_stat() {
	[ -r /proc/net/tls_stat ] || { echo "tls_stat: /proc/net/tls_stat missing (tls not loaded?)" >&2; return 1; }
	awk '$1 ~ /^Tls(Curr)?(Tx|Rx)Sw$/ || $1 ~ /^Tls.*Rekey/ { printf "%s%s=%s", sep, $1, $2; sep = " " }
	     END { print "" }' /proc/net/tls_stat
}

tls_counter() {
	awk -v k="$1" '$1 == k { print $2; f = 1 } END { exit !f }' /proc/net/tls_stat 2>/dev/null
}

pass() {
	_vm_pass=$((_vm_pass + 1))
	echo "PASS $1"
}

fail() {
	_vm_fail=$((_vm_fail + 1))
	echo "FAIL $1: $2"
}

check() {
	local name=$1 rc
	shift
	"$@"
	rc=$?
	if [ $rc = 0 ]; then pass "$name"; else fail "$name" "$* (rc=$rc)"; fi
	return 0
}

summary() {
	echo "$_vm_pass passed, $_vm_fail failed"
	[ "$_vm_fail" = 0 ] && [ "$_vm_pass" -gt 0 ]
}

sluice_config() {
	cat >"$1" <<EOF
workers: $3
log: { level: info, format: json }
drain: 5s
tls: { ca: $CERTS/ca.pem, cert: $CERTS/server.pem, key: $CERTS/server.key, ktls: $2 }
listeners:
  - name: web
    listen: "127.0.0.1:$LPORT"
    mode: mtls
    upstream: echo
    timeouts: { handshake: 60s, connect: 5s, idle: 300s, lifetime: 0s }
upstreams:
  - name: echo
    servers:
      - { address: "127.0.0.1:$UPORT" }
clients:
  - id: "CN=alice"
    allow: [echo]
EOF
}
