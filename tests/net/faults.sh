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

# rx_packets I: packets received by upstream I's link
rx_packets() { ip -n ${NSU[$(($1-1))]} -s -j link show dev slu$1$SUF | jq '.[0].stats64.rx.packets'; }

# on_exit_too CMD: undo a change to the hosts even when the test fails:
# CMD runs when the test's subshell exits, before run.sh's own EXIT trap
# (which must see the test's exit status, hence the save and restore).
on_exit_too() {
	local prev
	prev=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT\$//")
	trap -- "__rc=\$?; { $1; } 2>/dev/null || true; (exit \$__rc); $prev" EXIT
}

# no_quarantine: for the memory-bound cases under ASan, whose quarantine
# keeps freed blocks (up to 256 MiB) resident, so RSS would measure it
# rather than sluice; call before sluice_start.
no_quarantine() {
	[ "${SLUICE_SANITIZER:-}" = asan ] && export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
	return 0
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
	# Resets right after the handshake: the RST can reach sluice before it
	# has checked the certificate (TLS 1.3: the client is done first).
	# With the BPF counters the kernel has then seen the socket close
	# before it could be counted (client_open: EEXIST): that is the
	# client's doing, logged client_error "client closed during the
	# handshake" (it was "internal" until the soak found it).
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 100000 --reset-after 1 --seed 23 --count 40 --parallel 8 --timeout 60)
	expect_json "$out" '.ok == 40 and .failed == 0' "40 resets right after the handshake"
	wait_closes 61 '.result=="client_error" or .result=="tls_handshake"'
	log "   40 early resets: $(closes '.result=="client_error"' | jq -r .detail | sort | uniq -c | tr -s ' \n' ' ')"
	[ "$(closes '.result!="client_error" and .result!="ok" and .result!="tls_handshake"' | wc -l)" = 0 ]
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

t_23_upstream_blackhole_connect_timeout() {
	# An upstream that never answers a SYN (its replies are routed into a
	# blackhole in its namespace): the client is served by the next server
	# once the 1 s connect timeout expires; with every server blackholed it
	# gets no_upstream, each server's "connect timeout" in the detail.
	local out t0 ms i rx0
	CONNECT_TIMEOUT=1s config $WORK/c.yaml
	sed -i '/198.18.3.2:9000/d' $WORK/c.yaml   # pool web = up1, up2
	up_stop 1
	sluice_start $WORK/c.yaml 5000
	# A long transfer on up2 (up1 is down): least_conn then prefers up1.
	client --connect 198.18.0.1:5000 $(tlsas alice) --hold 3 --send $((BULK / 4)) --half-close --seed 23 --timeout 60 >$WORK/bg.json &
	local bg=$!
	for i in $(seq 100); do [ "$(established ${NSU[1]} 9000)" -ge 1 ] && break; sleep 0.05; done
	[ "$(established ${NSU[1]} 9000)" -ge 1 ]
	up_start 1
	on_exit_too "ip -n ${NSU[0]} route del blackhole 198.18.1.1/32 2>/dev/null; ip -n ${NSU[1]} route del blackhole 198.18.2.1/32 2>/dev/null"
	ip -n ${NSU[0]} route add blackhole 198.18.1.1/32
	rx0=$(rx_packets 1)
	t0=$(date +%s%N)
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 100000 --half-close --seed 24)
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	sha_ok "$out" "alice via up2 after up1's connect timeout"
	wait_closes 1 '.result=="ok" and .bytes_in == 100000'
	expect_json "$(closes '.result=="ok" and .bytes_in == 100000')" '.upstream=="198.18.2.2:9000" and .duration_ms >= 900' "served by up2 after >= 1 s"
	# up1 did receive the SYNs (a blackhole, not a refusal or a dead link)
	i=$(( $(rx_packets 1) - rx0 ))
	[ "$i" -ge 1 ] || { log "up1 received nothing: not a blackhole"; return 1; }
	log "   up1 blackholed ($i packets reached it, none answered): served by up2 after $ms ms (connect timeout 1 s)"
	wait $bg; sha_ok "$(cat $WORK/bg.json)" "the transfer on up2 meanwhile"
	ip -n ${NSU[1]} route add blackhole 198.18.2.1/32
	t0=$(date +%s%N)
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 100 --half-close || true)
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	expect_json "$out" '.recv == 0 and .error != null' "every upstream blackholed: nothing echoed"
	wait_closes 1 '.result=="no_upstream"'
	expect_json "$(closes '.result=="no_upstream"')" '(.detail|test("198.18.1.2:9000: connect timeout")) and (.detail|test("198.18.2.2:9000: connect timeout")) and .duration_ms >= 1900' "no_upstream after both connect timeouts"
	log "   both blackholed: client closed after $ms ms: $(closes '.result=="no_upstream"' | jq -r .detail)"
	ip -n ${NSU[0]} route del blackhole 198.18.1.1/32
	ip -n ${NSU[1]} route del blackhole 198.18.2.1/32
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 100000 --half-close --seed 25)
	sha_ok "$out" "served again once the routes are back"
	sluice_stop
}

t_24_upstream_resets_mid_stream() {
	# The upstream echoes 4 MiB of a 64 MiB upload, then resets.  That
	# client is closed (upstream_error) having received an exact prefix of
	# its bytes; a transfer through a healthy upstream runs meanwhile.
	faulty_config $WORK/c.yaml 198.18.1.2:9100
	fault_up 1 9100 reset --after $((4 * 1024 * 1024))
	sluice_start $WORK/c.yaml 5010
	warm_up 5000
	local fd0 out rep
	fd0=$(fd_count $SLUICE_PID)
	client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 24 --timeout 120 >$WORK/bg.json &
	local bg=$!
	out=$(client --connect 198.18.0.1:5010 $(tlsas alice) --send 64M --half-close --seed 25 --timeout 60 || true)
	expect_json "$out" '.error != null and .recv < .sent and .mismatch_at == null' "the reset upstream's client is closed, bytes so far a correct prefix"
	rep=$(fault_report 9100 1)
	expect_json "$rep" '.end == "reset_sent" and .read >= 4194304' "the upstream reset after 4 MiB"
	wait_closes 1 '.result=="upstream_error"'
	log "   client: $(printf '%s' "$out" | jq -c '{sent,recv,mismatch_at,error}')"
	log "   upstream: read $(printf '%s' "$rep" | jq .read), echoed $(printf '%s' "$rep" | jq .sent), then RST; sluice: $(closes '.result=="upstream_error"' | jq -c '{result,detail,bytes_in,bytes_out}')"
	# the same through the splice datapath
	out=$(client --connect 198.18.0.1:5011 --send 64M --half-close --seed 26 --timeout 60 || true)
	expect_json "$out" '.error != null and .recv < .sent and .mismatch_at == null' "plain TCP: closed, correct prefix"
	wait_closes 2 '.result=="upstream_error"'
	log "   tcp: $(closes '.result=="upstream_error" and .listener=="faultytcp"' | jq -c '{detail,bytes_in,bytes_out}')"
	wait $bg; sha_ok "$(cat $WORK/bg.json)" "concurrent alice transfer through a healthy upstream"
	wait_fds $SLUICE_PID $((fd0 + 4))   # + a cached pipe per worker (splice listener)
	log "   sluice fds: $fd0 before, $(fd_count $SLUICE_PID) after"
	kill $FAULT_PID
	sluice_stop
}

t_25_upstream_half_closes() {
	# The upstream sends 1 MiB and shuts its write side at once, while the
	# client is still uploading 64 MiB: the client gets exactly those bytes
	# and then EOF (close_notify), and all of its 64 MiB still reach the
	# upstream; both directions compared by SHA-256, TLS and plain TCP.
	faulty_config $WORK/c.yaml 198.18.1.2:9100
	fault_up 1 9100 halfclose --after $((1024 * 1024))
	sluice_start $WORK/c.yaml 5010
	local out rep n=0 port
	for port in 5010 5011; do
		n=$((n + 1))
		if [ $port = 5010 ]; then
			out=$(client --connect 198.18.0.1:$port $(tlsas alice) --send $BULK --expect 1M --half-close --seed 25 --timeout 120)
		else
			out=$(client --connect 198.18.0.1:$port --send $BULK --expect 1M --half-close --seed 25 --timeout 120)
		fi
		rep=$(fault_report 9100 $n)
		expect_json "$out" '.error == null and .recv == 1048576 and .eof == true and .sent == '$BULK "client on $port: 1 MiB then EOF, its upload complete"
		[ $port = 5011 ] || expect_json "$out" '.close_notify == true' "TLS: the upstream's FIN became close_notify"
		[ "$(printf '%s' "$out" | jq -r .recv_sha256)" = "$(printf '%s' "$rep" | jq -r .sent_sha256)" ] \
			|| { log "bytes received differ from what the upstream sent: $out / $rep"; return 1; }
		[ "$(printf '%s' "$out" | jq -r .sent_sha256)" = "$(printf '%s' "$rep" | jq -r .read_sha256)" ] && \
			expect_json "$rep" '.read == '$BULK' and .end == "eof"' "upstream got every byte" \
			|| { log "bytes the upstream read differ from what the client sent: $out / $rep"; return 1; }
		log "   $port: client got $(printf '%s' "$out" | jq .recv) B + EOF while sending; upstream read $(printf '%s' "$rep" | jq .read) B, sha256 equal both ways"
	done
	wait_closes 2 '.result=="ok" and (.listener|startswith("faulty"))'
	closes '.listener|startswith("faulty")' | jq -s -e 'map(select(.bytes_in == '$BULK' and .bytes_out == 1048576)) | length == 2' >/dev/null
	kill $FAULT_PID
	sluice_stop
}

t_26_upstream_slow_reader() {
	# The upstream reads 8 MiB/s with a 64 KiB receive buffer; the client
	# uploads 32 MiB.  Backpressure reaches the client through sluice:
	# sluice's RSS does not grow with the bytes held back, it does not spin,
	# every byte arrives (sha256 at the upstream), and another client is
	# served at full speed meanwhile.
	faulty_config $WORK/c.yaml 198.18.1.2:9100
	fault_up 1 9100 slow --rate $((8 * 1024 * 1024)) --rcvbuf 65536
	no_quarantine; sluice_start $WORK/c.yaml 5010
	warm_up 5000
	local rss0 rssmax ticks0 ticks1 t0 ms out rep r i
	rss0=$(rss_kib $SLUICE_PID); rssmax=$rss0
	ticks0=$(cpu_ticks $SLUICE_PID); t0=$(date +%s%N)
	client --connect 198.18.0.1:5010 $(tlsas alice) --send 32M --expect 0 --half-close --seed 26 --timeout 60 >$WORK/slow.json &
	local slow=$!
	sleep 1
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 27)
	sha_ok "$out" "another client during the slow upload"
	for i in $(seq 300); do
		kill -0 $slow 2>/dev/null || break
		r=$(rss_kib $SLUICE_PID); [ $r -gt $rssmax ] && rssmax=$r
		sleep 0.1
	done
	wait $slow
	ms=$(( ($(date +%s%N) - t0) / 1000000 )); ticks1=$(cpu_ticks $SLUICE_PID)
	out=$(cat $WORK/slow.json); rep=$(fault_report 9100 1)
	expect_json "$out" '.error == null and .sent == 33554432 and .recv == 0' "slow upload complete"
	expect_json "$rep" '.read == 33554432 and .end == "eof"' "the slow upstream read it all"
	[ "$(printf '%s' "$out" | jq -r .sent_sha256)" = "$(printf '%s' "$rep" | jq -r .read_sha256)" ] || { log "sha256 differs"; return 1; }
	log "   32 MiB into an 8 MiB/s reader: $ms ms, sluice RSS $rss0 -> max $rssmax KiB (+$((rssmax - rss0))), CPU $((ticks1 - ticks0)) ticks"
	[ $ms -ge 3000 ] || { log "finished in $ms ms: the upstream cannot have been the bottleneck"; return 1; }
	[ $((rssmax - rss0)) -lt 4096 ] || { log "sluice RSS grew by $((rssmax - rss0)) KiB"; return 1; }
	[ $(( (ticks1 - ticks0) * 10 )) -lt $(( ms / 2 )) ] || { log "sluice used more than half a core while throttled"; return 1; }
	kill $FAULT_PID
	sluice_stop
}

t_27_many_slow_readers_memory_bounded() {
	# 200 TLS clients stop reading while three upstreams push N bytes each
	# at them.  sluice's RSS stays bounded (a few pages per connection, no
	# growth while they are stalled: the bytes wait in kernel socket
	# queues); then they read again and every byte arrives in order.
	local n=$((4 * 1024 * 1024)) pause=5 i p pids=() rss0 rss1 rss2 fd0 q out
	[ -z "${SLUICE_SANITIZER:-}" ] || n=$((1024 * 1024))
	faulty_config $WORK/c.yaml 198.18.1.2:9200 198.18.2.2:9200 198.18.3.2:9200
	for i in 1 2 3; do
		nsenter --net=/run/netns/${NSU[$((i-1))]} "$TOOLS/echo" --listen "198.18.$i.2:9200" --source $n --seed 27 >/dev/null 2>&1 &
		pids+=($!); PIDS+=($!)
		wait_port ${NSU[$((i-1))]} 9200
	done
	no_quarantine; sluice_start $WORK/c.yaml 5010
	warm_up 5000
	rss0=$(rss_kib $SLUICE_PID); fd0=$(fd_count $SLUICE_PID)
	client --connect 198.18.0.1:5010 $(tlsas alice) --expect $n --check-stream --seed 27 --pause-read $pause \
		--count 200 --parallel 200 --timeout 120 >$WORK/many.json &
	local many=$!
	# wait for the 200 pairs, then let the queues fill
	for i in $(seq 100); do [ "$(fd_count $SLUICE_PID)" -ge $((fd0 + 400)) ] && break; sleep 0.1; done
	[ "$(fd_count $SLUICE_PID)" -ge $((fd0 + 400)) ] || { log "only $(fd_count $SLUICE_PID) fds: the 200 pairs did not form"; return 1; }
	sleep 1.5; rss1=$(rss_kib $SLUICE_PID)
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send $((BULK / 4)) --half-close --seed 28)
	sha_ok "$out" "another client while 200 are stalled"
	sleep 0.5; rss2=$(rss_kib $SLUICE_PID)
	q=$(inp ss -Htn | awk '{r += $2; s += $3} END {printf "%d %d", r / 1048576, s / 1048576}')
	wait $many
	out=$(cat $WORK/many.json)
	expect_json "$out" '.ok == 200 and .failed == 0 and .recv == '$((200 * n)) "200 stalled clients, then every byte in order"
	log "   200 stalled readers x $((n / 1048576)) MiB: sluice RSS $rss0 KiB idle, $rss1 and $rss2 KiB stalled (+$(( (rss2 - rss0) / 200 )) KiB per connection); kernel queues in the proxy netns: recv $(echo $q | cut -d' ' -f1) MiB, send $(echo $q | cut -d' ' -f2) MiB"
	log "   then all 200 read: $(printf '%s' "$out" | jq -c '{ok,failed,recv,ms}')"
	# TSan's shadow memory multiplies every resident byte (~4x here)
	local per=256; [ "${SLUICE_SANITIZER:-}" != tsan ] || per=1024
	[ $((rss2 - rss0)) -lt $((200 * per)) ] || { log "more than $per KiB per stalled connection"; return 1; }
	[ $((rss2 - rss1)) -lt 4096 ] || { log "RSS still growing while stalled: $rss1 -> $rss2 KiB"; return 1; }
	wait_fds $SLUICE_PID $fd0
	for p in "${pids[@]}"; do kill $p; done
	sluice_stop
}
