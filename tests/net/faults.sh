# tests/net/faults.sh — fault injection cases (issue 6), sourced by run.sh
# after cases.sh; same conventions (t_NN_name, one subshell each, set -e,
# helpers from lib.sh and cases.sh).  Each case also runs a healthy
# transfer while the fault happens and checks it byte for byte.

# fds RSS of a process (sluice): open descriptors, resident KiB
fd_count() { ls /proc/$1/fd | wc -l; }
rss_kib() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }

# wait_fds PID N: until the process has at most N fds (bounded: 15 s)
wait_fds() {
	local i
	for i in $(seq 150); do
		[ "$(fd_count $1)" -le "$2" ] && return 0
		sleep 0.1
	done
	log "sluice still has $(fd_count $1) fds, expected <= $2:"; ls -l /proc/$1/fd | tail -5 >&2
	return 1
}

# faulty_config FILE ADDR...: the suite's config plus listeners "faulty"
# (198.18.0.1:5010, mtls) and "faultytcp" (198.18.0.1:5011, tcp) on a pool
# "faulty" of the given servers, allowed to alice and to the client host.
faulty_config() {
	local f=$1 a; shift
	config "$f"
	local servers=""
	for a in "$@"; do servers="$servers      - { address: \"$a\" }\n"; done
	sed -i -e "/^listeners:\$/a\\
  - name: faulty\\
    listen: \"198.18.0.1:5010\"\\
    mode: mtls\\
    upstream: faulty\\
    timeouts: { handshake: 5s, connect: ${CONNECT_TIMEOUT:-1s}, idle: 300s, lifetime: 0s }\\
  - name: faultytcp\\
    listen: \"198.18.0.1:5011\"\\
    mode: tcp\\
    upstream: faulty" \
		-e "/^upstreams:\$/a\\
  - name: faulty\\
    balance: least_conn\\
    servers:\\
$(printf "$servers" | sed 's/$/\\/')
" \
		-e 's/allow: \[web, web6\]/allow: [web, web6, faulty]/' \
		-e '/id: "IP=198.18.0.0\/24"/{n;s/allow: \[web\]/allow: [web, faulty]/}' "$f"
	"$SLUICE" check -c "$f" >/dev/null || { log "faulty_config: bad config:"; cat "$f" >&2; return 1; }
}

# fault_up I PORT MODE [ARGS]: tools/fault-upstream on 198.18.I.2:PORT;
# its per-connection reports go to $WORK/fault.PORT.out, its pid to FAULT_PID
FAULT_PID=
fault_up() {
	local i=$1 port=$2 mode=$3; shift 3
	nsenter --net=/run/netns/${NSU[$((i-1))]} python3 "$ROOT/tools/fault-upstream" \
		--listen "198.18.$i.2:$port" --mode $mode "$@" >$WORK/fault.$port.out 2>$WORK/fault.$port.err &
	FAULT_PID=$!; PIDS+=($!)
	wait_port ${NSU[$((i-1))]} $port
}
# fault_report PORT N: the N-th report line of that fault upstream (bounded wait: 10 s)
fault_report() {
	local i
	for i in $(seq 100); do
		[ "$(wc -l <$WORK/fault.$1.out)" -ge $((${2:-1} + 1)) ] && break
		sleep 0.1
	done
	sed -n "$((${2:-1} + 1))p" $WORK/fault.$1.out
}

# warm_up PORT: one small transfer so per-worker pools exist before a baseline
warm_up() {
	local out
	out=$(client --connect 198.18.0.1:$1 $(tlsas alice) --send 100000 --half-close --seed 99)
	sha_ok "$out" "warm-up transfer"
	wait_closes 1 '.result=="ok"'
}

t_20_client_reset_mid_transfer() {
	# Clients that complete the mTLS handshake, start a 64 MiB upload and
	# vanish with an RST after 1 MiB.  Each is closed (client_error), its
	# upstream connection with it; nothing leaks; a concurrent client's
	# transfer is unaffected.
	config $WORK/c.yaml; sluice_start $WORK/c.yaml 5000
	warm_up 5000
	local fd0 out n
	fd0=$(fd_count $SLUICE_PID)
	client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 20 --timeout 120 >$WORK/bg.json &
	local bg=$!
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 64M --reset-after 1M --seed 21)
	expect_json "$out" '.reset_sent == true and .error == null and .handshake == "ok" and .sent >= 1048576' "one client resets after 1 MiB"
	log "   resetter: sent $(printf '%s' "$out" | jq .sent), received $(printf '%s' "$out" | jq .recv) (a correct prefix), then RST"
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 64M --reset-after 1M --seed 22 --count 20 --parallel 5 --timeout 60)
	expect_json "$out" '.ok == 20 and .failed == 0' "20 more resetters, 5 at a time"
	wait_closes 21 '.result=="client_error"'
	log "   21 resets: $(closes '.result=="client_error"' | jq -r .detail | sort | uniq -c | tr -s ' \n' ' ')"
	wait $bg; sha_ok "$(cat $WORK/bg.json)" "concurrent alice transfer during the resets"
	wait_closes 1 '.result=="ok" and .bytes_in > 1000000'
	n=$(( $(established ${NSU[0]} 9000) + $(established ${NSU[1]} 9000) + $(established ${NSU[2]} 9000) ))
	[ "$n" = 0 ] || { log "upstreams still hold $n connections"; return 1; }
	wait_fds $SLUICE_PID $fd0
	log "   sluice fds: $fd0 before, $(fd_count $SLUICE_PID) after; no upstream connection left"
	sluice_stop
}

t_21_half_open_flood() {
	# 2400 TCP connections that never send a byte (no ClientHello), held by
	# three processes of 800 (well under the 20000-fd limit of each).  sluice
	# keeps serving a real client meanwhile, closes every one of them at the
	# 3 s handshake deadline, and its fd count returns to the baseline.
	HS_TIMEOUT=3s config $WORK/c.yaml; sluice_start $WORK/c.yaml 5000
	warm_up 5000
	local fd0 peak=0 i p pids=() out t0
	fd0=$(fd_count $SLUICE_PID)
	for p in 1 2 3; do
		inc timeout 40 python3 -c '
import json, select, socket, sys, time
n = int(sys.argv[1])
t0 = time.time()
socks = {}
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex(("198.18.0.1", 5000))
    socks[s.fileno()] = s
# 1: every connect completes (writable, no SO_ERROR)
p = select.poll()
for fd in socks:
    p.register(fd, select.POLLOUT)
pending, connected = set(socks), 0
while pending and time.time() < t0 + 15:
    for fd, ev in p.poll(500):
        if fd in pending:
            pending.discard(fd)
            p.unregister(fd)
            if socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
t_conn = time.time()
# 2: hold, send nothing; count the ones the proxy closes (EOF or reset)
p = select.poll()
for fd in socks:
    p.register(fd, select.POLLIN)
open_ = set(socks)
closed, first, last = 0, None, None
while open_ and time.time() < t0 + 30:
    for fd, ev in p.poll(500):
        if fd not in open_:
            continue
        try:
            data = socks[fd].recv(1)
        except OSError:
            data = b""
        if data == b"":
            open_.discard(fd); p.unregister(fd); closed += 1
            now = time.time() - t0
            first = now if first is None else first
            last = now
print(json.dumps({"n": n, "connected": connected, "closed": closed,
                  "connect_s": round(t_conn - t0, 2),
                  "first_close_s": first and round(first, 2), "last_close_s": last and round(last, 2)}))
' 800 >$WORK/ho$p.json &
		pids+=($!)
	done
	# All 2400 accepted (sluice holds an fd for each), then a real transfer.
	for i in $(seq 150); do
		p=$(fd_count $SLUICE_PID); [ $p -gt $peak ] && peak=$p
		[ $p -ge $((fd0 + 2400)) ] && break
		sleep 0.1
	done
	[ $peak -ge $((fd0 + 2400)) ] || { log "sluice never held the 2400 connections (peak $peak fds, baseline $fd0)"; return 1; }
	t0=$(date +%s%N)
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 21)
	sha_ok "$out" "alice while 2400 half-open connections are held"
	log "   alice: $((BULK / 4)) bytes each way in $(( ($(date +%s%N) - t0) / 1000000 )) ms with $peak fds open in sluice (baseline $fd0)"
	for p in 1 2 3; do
		wait ${pids[$((p-1))]}
		expect_json "$(cat $WORK/ho$p.json)" '.connected == 800 and .closed == 800' "holder $p: all 800 connected, all closed by sluice"
		log "   holder $p: $(cat $WORK/ho$p.json)"
	done
	wait_closes 2400 '.result=="timeout_handshake"'
	closes '.result=="timeout_handshake"' | jq -s -e 'length == 2400 and (map(.duration_ms) | min >= 2900 and max < 15000)' >/dev/null \
		|| { log "timeout_handshake durations out of range: $(closes '.result=="timeout_handshake"' | jq -s -c 'map(.duration_ms) | [min, max]')"; return 1; }
	log "   2400 closed timeout_handshake after $(closes '.result=="timeout_handshake"' | jq -s -r 'map(.duration_ms) | "\(min)..\(max)"') ms"
	wait_fds $SLUICE_PID $fd0
	log "   sluice fds: baseline $fd0, peak $peak, after $(fd_count $SLUICE_PID)"
	sluice_stop
}

t_22_certificate_chain_depth_selfsigned_uri_only() {
	# A chain longer than tls.verify_depth and a self-signed leaf are refused
	# in the handshake with the verifier's reason; a certificate with no CN
	# and only a URI SAN is admitted where a clients[] entry allows that URI
	# (and refused where none does).  A transfer runs meanwhile.
	local out
	config $WORK/c.yaml
	sed -i 's|^tls: { \(.*\) }$|tls: { \1, verify_depth: 2 }|' $WORK/c.yaml
	printf '  - id: "URI=spiffe://sluice.test/nocn"\n    allow: [web6]\n' >>$WORK/c.yaml
	grep -q 'verify_depth: 2' $WORK/c.yaml
	sluice_start $WORK/c.yaml 5000
	client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 22 --hold 1 >$WORK/bg.json &
	local bg=$!
	out=$(client --connect "[2001:db8::1]:5001" $(tlsas uri-only) --send 100000 --half-close --seed 3)
	sha_ok "$out" "uri-only (empty subject, SAN URI only) on web6, allowed by its URI"
	wait_closes 1 '.listener=="web6" and .result=="ok"'
	expect_json "$(closes '.listener=="web6" and .result=="ok"')" '.identity=="URI=spiffe://sluice.test/nocn"' "uri-only identity"
	out=$(client --connect "[2001:db8::1]:5001" $(tlsas carol-uri) --send 100 || true)
	expect_json "$out" '.recv == 0 and .error != null' "carol-uri (URI not allowed on web6) refused"
	wait_closes 1 '.result=="unauthorized"'
	expect_json "$(closes '.result=="unauthorized"')" '.identity=="URI=spiffe://sluice.test/carol"' "carol's close line"
	out=$(client --connect 198.18.0.1:5000 $(tlsas selfsigned) --send 100 || true)
	expect_json "$out" '.recv == 0 and .error != null' "self-signed leaf refused"
	out=$(client --connect 198.18.0.1:5000 $(tlsas chain-long) --send 100 || true)
	expect_json "$out" '.recv == 0 and .error != null' "chain longer than verify_depth 2 refused"
	wait_closes 2 '.result=="tls_handshake"'
	closes '.result=="tls_handshake"' | jq -s -e 'map(.detail) | sort == ["certificate chain too long", "self-signed certificate"]' >/dev/null \
		|| { log "unexpected tls_handshake details:"; closes '.result=="tls_handshake"' >&2; return 1; }
	log "   uri-only: admitted as URI=spiffe://sluice.test/nocn; carol-uri: unauthorized on web6"
	log "   refused: $(closes '.result=="tls_handshake"' | jq -r '"\(.identity // "-"): \(.detail)"' | tr '\n' ';')"
	wait $bg; sha_ok "$(cat $WORK/bg.json)" "concurrent alice transfer"
	sluice_stop
	# One level deeper is allowed: the same chain is admitted at depth 3
	# (without a CRL: sluice checks the leaf's CRL, and int3 publishes none).
	config $WORK/c.yaml
	sed -i 's|^tls: { \(.*\), crl: [^ ,}]* }$|tls: { \1, verify_depth: 3 }|' $WORK/c.yaml
	grep -q 'verify_depth: 3 }' $WORK/c.yaml && ! grep -q 'crl:' $WORK/c.yaml
	sluice_start $WORK/c.yaml 5000
	out=$(client --connect 198.18.0.1:5000 $(tlsas chain-long) --send 100000 --half-close --seed 4)
	sha_ok "$out" "chain-long at verify_depth 3"
	wait_closes 1 '.result=="ok"'
	expect_json "$(closes '.result=="ok"')" '.identity=="CN=alice"' "chain-long identity"
	sluice_stop
	# With a CRL configured, a leaf whose issuer has no CRL fails closed.
	config $WORK/c.yaml
	sed -i 's|^tls: { \(.*\) }$|tls: { \1, verify_depth: 3 }|' $WORK/c.yaml
	sluice_start $WORK/c.yaml 5000
	out=$(client --connect 198.18.0.1:5000 $(tlsas chain-long) --send 100 || true)
	expect_json "$out" '.recv == 0 and .error != null' "chain-long with a CRL but none from its issuer"
	wait_closes 1 '.result=="tls_handshake"'
	expect_json "$(closes '.result=="tls_handshake"')" '.detail=="unable to get certificate CRL"' "fail-closed CRL check"
	log "   chain-long: admitted at verify_depth 3 without a CRL; with crl.pem: \"unable to get certificate CRL\""
	sluice_stop
}
