# tests/net/sockmap.sh — the sockmap datapath (issue 4): plain TCP pairs
# forwarded by the kernel (bpf/sluice.bpf.c), every transfer checked byte
# for byte, memory sampled under stalls against the configured caps.
# Sourced by run.sh after bpf.sh; needs SLUICE_NET_BPF != off.
#
# A direction whose backlog passes the soft cap pauses its source (out of
# the verdict's SOCKHASH, so TCP flow control stops the sender) and resumes
# under half of it; t_52/t_55 check that stalls end with no reset and no
# byte lost, duplicated or reordered; t_56 makes a FIN arrive while paused
# and checks the tail copy; t_57 forges TCP segments that overlap bytes the
# proxy already has and checks that the verdict does not forward them
# twice (the cause of the corruption that kept the datapath refused until
# session 5, docs/architecture.md).

# sm_config FILE: a sockmap listener on :5004 (pool web, echo upstreams) and
# a splice listener on :5002 for comparison.  Caps from SM_PAIR/SM_HARD/
# SM_GLOBAL (defaults: the built-in ones).
sm_config() {
	cat >"$1" <<YAML
workers: ${WORKERS:-2}
log: { level: info, format: json }
drain: ${DRAIN:-30s}
bpf: { mode: ${BPF_MODE:-$SLUICE_NET_BPF}, pin_path: $BPF_PIN, sockmap_pair_cap: ${SM_PAIR:-4M}, sockmap_hard_cap: ${SM_HARD:-16M}, sockmap_global_cap: ${SM_GLOBAL:-256M} }
listeners:
  - name: sm
    listen: "198.18.0.1:5004"
    mode: tcp
    datapath: sockmap
    upstream: ${SM_POOL:-web}
    timeouts: { idle: ${IDLE_TIMEOUT:-300s} }
  - name: plain
    listen: "198.18.0.1:5002"
    mode: tcp
    upstream: web
upstreams:
  - name: web
    servers:
      - { address: "198.18.1.2:9000" }
      - { address: "198.18.2.2:9000" }
      - { address: "198.18.3.2:9000" }
  - name: fault
    servers:
      - { address: "198.18.1.2:9100" }
clients:
  - id: "IP=198.18.0.0/24"
    allow: [web, fault]
YAML
}

# sm_log_has REGEX: the running sluice's log gets a line matching REGEX
# within 5 s (start-up lines can land just after the port opens)
sm_log_has() {
	local i
	for i in $(seq 50); do grep -qE "$1" "$SLUICE_LOG" && return 0; sleep 0.1; done
	return 1
}

# sm_dp_conns: connections counted on datapath_stats index 4 (sockmap)
sm_dp_conns() {
	bpf_map datapath_stats | jq '[.[] | select(.formatted.key == 4) | .formatted.values[].value.conns] | add // 0'
}

t_50_sockmap_bulk_one_and_32() {
	# 64 MiB each way through one pair, then 32 pairs at once; every byte
	# checked; the close lines say sockmap; datapath_stats[4] counts them.
	sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	sm_log_has '"event":"sockmap".*caps' || { log "FAIL: no sockmap start-up line"; return 1; }
	local out
	out=$(client --connect 198.18.0.1:5004 --send $BULK --half-close --seed 50 --timeout 60) || true
	sm_echo_ok "$out" "one pair, $BULK bytes each way" || return 1
	log "   one pair: $(printf '%s' "$out" | jq -c '{sent,recv,ms}')"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"')" \
		".result==\"ok\" and .datapath==\"sockmap\" and .bytes_in==$BULK and .bytes_out==$BULK" "close line"
	out=$(client --connect 198.18.0.1:5004 --count 32 --parallel 32 --send $((BULK / 8)) --half-close --seed 51 --timeout 120) || true
	expect_json "$out" '.ok == 32 and .failed == 0' "32 pairs at once, $((BULK / 8)) bytes each way each"
	log "   32 pairs: $(printf '%s' "$out" | jq -c .)"
	wait_closes 33 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"' | jq -s -c 'map(select(.result=="ok" and .datapath=="sockmap")) | length')" \
		". == 33" "33 ok sockmap close lines"
	local n; n=$(sm_dp_conns)
	log "   datapath_stats[4].conns = $n"
	[ "$n" = 33 ] || { log "FAIL: datapath_stats index 4 counts $n, want 33"; return 1; }
	sluice_stop
}

# sm_pairs: the live pairs as bpftool shows them (one compact line each)
sm_pairs() {
	bpf_map sockmap_pairs | jq -c '.[].formatted.value | select(.state != 0)
		| {state, dead_why, dead_backlog, d0: {red: .dir[0].redirected, max: .dir[0].max_backlog, pauses: .dir[0].pauses},
		   d1: {red: .dir[1].redirected, max: .dir[1].max_backlog, pauses: .dir[1].pauses}}'
}
# sm_max_backlog: the largest backlog any pair slot ever had (live or not)
sm_max_backlog() {
	bpf_map sockmap_pairs | jq '[.[].formatted.value.dir[].max_backlog] | max'
}
# sm_pauses: pauses summed over every pair slot
sm_pauses() {
	bpf_map sockmap_pairs | jq '[.[].formatted.value.dir[].pauses] | add'
}
# sm_kpauses: of those, the ones the kernel took at a segment the source
# sent (sockmap_pause in bpf/sluice.bpf.c), with no worker involved
sm_kpauses() {
	bpf_map sockmap_pairs | jq '[.[].formatted.value.dir[].kpauses] | add'
}
mem_avail_kb() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
# TCP memory of the proxy's namespace, in pages (/proc/net/sockstat "mem")
sockstat_tcp_pages() { inp cat /proc/net/sockstat | awk '/^TCP:/ {for (i = 2; i < NF; i++) if ($i == "mem") print $(i+1)}'; }

# sm_sample SECONDS: every second, MemAvailable and sockstat; prints the
# lowest MemAvailable (kB) and the highest TCP mem (pages) seen
sm_sample() {
	local i lo hi m t
	lo=$(mem_avail_kb); hi=$(sockstat_tcp_pages)
	for i in $(seq "$1"); do
		sleep 1
		m=$(mem_avail_kb); t=$(sockstat_tcp_pages)
		[ "$m" -lt "$lo" ] && lo=$m
		[ "$t" -gt "$hi" ] && hi=$t
	done
	echo "$lo $hi"
}
# fault_start MODE ARGS...: tools/fault-upstream on 198.18.1.2:9100 (pool
# "fault"); its per-connection JSON lines go to $WORK/fault.json
fault_start() {
	inu 1 python3 tools/fault-upstream --listen 198.18.1.2:9100 "$@" >$WORK/fault.json 2>&1 &
	FAULT_PID=$!; PIDS+=($!)
	wait_port ${NSU[0]} 9100
}
fault_stop() { kill "$FAULT_PID" 2>/dev/null; wait "$FAULT_PID" 2>/dev/null || true; }

t_51_sockmap_half_close_both_ways_and_reset() {
	SM_POOL=fault sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	# Upstream ends first: it sends 3 MB then FIN, and keeps reading the
	# client's 5 MB until the client's FIN.  Both directions byte-exact.
	fault_start --mode halfclose --after 3000000
	local want out
	want=$(python3 -c 'import hashlib; b=bytes(i % 251 for i in range(251)); print(hashlib.sha256((b * (3000000 // 251 + 1))[:3000000]).hexdigest())')
	out=$(client --connect 198.18.0.1:5004 --send 5000000 --seed 53 --expect 3000000 --expect-sha256 $want --half-close --timeout 30)
	expect_json "$out" '.error == null and .recv == 3000000 and .sent == 5000000 and .eof == true' "upstream-first half-close, client side"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(tail -1 $WORK/fault.json)" ".read == 5000000 and .read_sha256 == $(printf '%s' "$out" | jq .sent_sha256) and .end == \"eof\"" \
		"upstream-first half-close, upstream side"
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="sockmap" and .bytes_in==5000000 and .bytes_out==3000000' "close line"
	fault_stop
	sluice_stop
	# Client-first half-close is every echo transfer (t_50).  An abrupt
	# client RST mid-transfer: the pair ends as client_error and the
	# upstream gets an RST too (not a FIN that would pass a cut stream off
	# as complete); a transfer alongside is undisturbed.
	sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	client --connect 198.18.0.1:5004 --send $BULK --half-close --seed 54 --timeout 60 >$WORK/along.json &
	local ap=$!
	out=$(client --connect 198.18.0.1:5004 --send 16M --reset-after 2M --seed 55 --timeout 30)
	expect_json "$out" '.reset_sent == true' "client reset mid-transfer"
	wait $ap || true
	sm_echo_ok "$(cat $WORK/along.json)" "the transfer alongside" || return 1
	wait_closes 2 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm" and .result!="ok"')" '.result=="client_error" and .datapath=="sockmap" and (.detail|test("reset"))' \
		"close line of the reset pair"
	log "   reset: $(closes '.result!="ok"' | jq -c '{result,detail,bytes_in,bytes_out}')"
	sluice_stop
}

t_56_sockmap_fin_while_paused_is_copied() {
	# The client's FIN arrives while its direction is paused: the client
	# socket (now CLOSE_WAIT) cannot go back into the verdict's map, so
	# userspace copies what its receive queue still holds (dir_tail).  The
	# upstream reads nothing for 2 s; the client (--fin-on-pause) sends until the
	# proxy's socket stops draining (its window halves: paused), then
	# half-closes at once.  Each run must pause, end ok and be byte-exact
	# (the copy must not lose, duplicate or reorder), and at least 2 of the
	# 4 must have copied: the FIN usually meets the paused socket, but the
	# source can resume just before it (seen once in CI: 3 pauses, nothing
	# left to copy), and then the FIN takes the verdict's path.
	SM_PAIR=64K SM_HARD=16M SM_POOL=fault sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	fault_start --mode slow --rate 1e12 --stall 2 --rcvbuf 65536
	local i out cl f copied=0
	for i in 1 2 3 4; do
		out=$(client --connect 198.18.0.1:5004 --send 64M --fin-on-pause --expect-any --seed $((70 + i)) --timeout 30) || true
		expect_json "$out" '.error == null and .paused_seen' "run $i: the window halved, then the client half-closed" || return 1
		wait_closes $i '.listener=="sm"' || return 1
		for f in $(seq 100); do [ "$(grep -c '"end"' $WORK/fault.json)" -ge $i ] && break; sleep 0.1; done
		expect_json "$(grep '"end"' $WORK/fault.json | tail -1)" ".read == $(printf '%s' "$out" | jq .sent) and .read_sha256 == $(printf '%s' "$out" | jq .sent_sha256) and .end == \"eof\"" \
			"run $i: the upstream read every byte in order, then the FIN" || return 1
		cl=$(closes '.listener=="sm"' | tail -1)
		log "   run $i: $(printf '%s' "$out" | jq -c '{sent}') $(printf '%s' "$cl" | jq -c '{result,sockmap_pauses,sockmap_copied,duration_ms}')"
		expect_json "$cl" ".result==\"ok\" and .sockmap_pauses >= 1" "run $i: paused, ended ok" || return 1
		if [ "$(printf '%s' "$cl" | jq '.sockmap_copied')" -gt 0 ]; then copied=$((copied + 1)); fi
	done
	log "   $copied of 4 runs ended with a tail copy"
	[ $copied -ge 2 ] || { log "FAIL: only $copied of 4 runs had the FIN meet a paused socket: the tail copy was barely exercised"; return 1; }
	fault_stop
	sluice_stop
}

# sm_stall_case NAME SECONDS CLIENT_ARGS...: a transfer with a stall, memory
# sampled for SECONDS; the client's JSON goes to $WORK/stall.json.  Every
# backlog must stay within the hard cap and memory near the caps.
sm_stall_case() {
	local name=$1 secs=$2; shift 2
	local before lohi lo hi cp maxbl
	before=$(mem_avail_kb)
	client "$@" >$WORK/stall.json 2>&1 &
	cp=$!
	lohi=$(sm_sample "$secs"); lo=${lohi% *}; hi=${lohi#* }
	wait $cp || true
	maxbl=$(sm_max_backlog)
	log "   $name: MemAvailable dropped by at most $(( (before - lo) / 1024 )) MiB, proxy TCP mem peak $hi pages; largest backlog $maxbl bytes (soft cap $((4 << 20)), hard cap $((16 << 20))), $(sm_pauses) pauses ($(sm_kpauses) by the kernel)"
	[ "$maxbl" -le $((16 << 20)) ] || { log "FAIL: backlog $maxbl above the hard cap"; return 1; }
	# Without a bound the kernel grew ~355 MB/s, 3.5 GiB in 10 s (design.md);
	# the bound here is the caps (2 x 16 MiB) plus whatever else this host does.
	[ $(( (before - lo) / 1024 )) -lt 256 ] || { log "FAIL: MemAvailable dropped by more than 256 MiB"; return 1; }
}

t_52_sockmap_stalls_pause_without_loss() {
	# One-sided: the upstream reads nothing for 10 s while the client pushes
	# 256 MiB, then reads it all.  Two-sided: the client pauses its reads
	# 10 s while pushing 256 MiB through an echo, which then stops reading
	# too.  Both end ok, byte-exact, with the backlog paused under the caps.
	SM_POOL=fault sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	fault_start --mode slow --rate 1e12 --stall 10
	sm_stall_case one-sided 11 --connect 198.18.0.1:5004 --send 256M --expect-any --half-close --seed 61 --timeout 40 || return 1
	wait_closes 1 '.listener=="sm"'
	local out; out=$(cat $WORK/stall.json)
	expect_json "$out" '.error == null and .sent == 268435456' "one-sided stall: the client sent everything"
	expect_json "$(tail -1 $WORK/fault.json)" ".read == 268435456 and .read_sha256 == $(printf '%s' "$out" | jq .sent_sha256)" \
		"one-sided stall: the upstream read every byte, in order"
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="sockmap"' "one-sided stall: no reset"
	log "   one-sided: $(closes '.listener=="sm"' | jq -c '{result,bytes_in,duration_ms}')"
	[ "$(sm_pauses)" -ge 1 ] || { log "FAIL: the stall never paused the source"; return 1; }
	# The pause is the kernel's own (at the source's next ACK), not the
	# worker's: that is what keeps the overshoot past the soft cap small
	# with a 2 MiB receive buffer.
	[ "$(sm_kpauses)" -ge 1 ] || { log "FAIL: no pause was taken in the kernel"; return 1; }
	fault_stop
	sluice_stop
	sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	sm_stall_case two-sided 11 --connect 198.18.0.1:5004 --send 256M --pause-read 10 --half-close --seed 56 --timeout 40 || return 1
	wait_closes 1 '.listener=="sm"'
	sm_echo_ok "$(cat $WORK/stall.json)" "two-sided stall: 256 MiB each way" || return 1
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="sockmap"' "two-sided stall: no reset"
	log "   two-sided: $(closes '.listener=="sm"' | jq -c '{result,bytes_in,bytes_out,duration_ms}')"
	[ "$(sm_pauses)" -ge 2 ] || { log "FAIL: both directions should have paused"; return 1; }
	local g; g=$(bpf_map sockmap_global | jq -c '.[0].formatted.value')
	log "   sockmap_global after both: $g"
	expect_json "$g" '.backlog == 0 and .dead_pairs == 0' "global backlog back to 0, no pair died"
	sluice_stop
}

t_53_sockmap_hard_cap_breach_disturbs_nothing_else() {
	# The hard cap is the safety net under the pause.  At hard cap == soft
	# cap (64 KiB) it is passed before a pause can take: the stalled pair
	# dies (sockmap_backlog, RST to its client) while a splice transfer and
	# sockmap request/response pairs go on.
	SM_PAIR=64K SM_HARD=64K SM_GLOBAL=1M sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	client --connect 198.18.0.1:5002 --send $BULK --half-close --seed 57 --timeout 60 >$WORK/splice.json &
	local sp=$!
	local out
	out=$(client --connect 198.18.0.1:5004 --send 64M --pause-read 5 --half-close --seed 58 --timeout 10 || true)
	expect_json "$out" '.reset == true or (.error // "" | test("reset"))' "the stalled client sees a reset, not a clean end"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"')" '.result=="sockmap_backlog" and (.detail|test("cap"))' "close line of the dead pair"
	log "   dead pair: $(closes '.listener=="sm"' | jq -c '{result,detail}')"
	out=$(client --connect 198.18.0.1:5004 --count 20 --parallel 4 --send 2000 --half-close --seed 59 --timeout 30)
	expect_json "$out" '.ok == 20 and .failed == 0' "small sockmap transfers after the breach"
	wait $sp || true
	sha_ok "$(cat $WORK/splice.json)" "the splice transfer alongside"
	sluice_stop
}

t_54_sockmap_by_default_and_fallbacks() {
	# On these kernels (6.1+) a sockmap listener gets the datapath under
	# bpf.mode auto and require; without BPF (bpf.mode off) it splices with
	# a warning saying why.  Older kernels are refused with the reason
	# (tests/unit/test_sockmap.c: the policy from uname -r strings).
	local out
	BPF_MODE=auto sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	sm_log_has '"event":"sockmap".*backlog caps' || { log "FAIL: no sockmap start line"; return 1; }
	out=$(client --connect 198.18.0.1:5004 --send 1M --half-close --seed 60)
	sha_ok "$out" "1 MiB under bpf.mode auto"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="sockmap"' "auto: it used sockmap"
	sluice_stop
	BPF_MODE=require sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	out=$(client --connect 198.18.0.1:5004 --send 1M --half-close --seed 62)
	sha_ok "$out" "1 MiB under bpf.mode require"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="sockmap"' "require: it used sockmap"
	sluice_stop
	BPF_MODE=off sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	sm_log_has '"event":"sockmap".*BPF unavailable' || { log "FAIL: no warning without BPF"; return 1; }
	log "   without BPF: $(grep '"event":"sockmap"' "$SLUICE_LOG" | jq -r .msg)"
	out=$(client --connect 198.18.0.1:5004 --send 1M --half-close --seed 63)
	sha_ok "$out" "1 MiB without BPF"
	wait_closes 1 '.listener=="sm"'
	expect_json "$(closes '.listener=="sm"')" '.result=="ok" and .datapath=="splice"' "it spliced without BPF"
	sluice_stop
}

# sm_echo_ok JSON WHAT: a two-way transfer through a sockmap pair and the
# echo upstream, byte-exact (0) or not (1).  A stream that differs
# mid-stream says where the bytes it got there really come from in the
# sent stream (client's mismatch_from): later means lost, earlier repeated.
sm_echo_ok() {
	printf '%s' "$1" | jq -e '.recv_sha256 == .sent_sha256 and .recv == .sent and .error == null' >/dev/null 2>&1 && return 0
	if printf '%s' "$1" | jq -e '.mismatch_at != null' >/dev/null 2>&1; then
		log "FAIL: $2: $(printf '%s' "$1" | jq -r '"the bytes received from \(.mismatch_at) on are the stream'"'"'s bytes from \(.mismatch_from // "nowhere near") (\(if .mismatch_from == null then "not the stream" elif .mismatch_from > .mismatch_at then "\(.mismatch_from - .mismatch_at) lost" else "\(.mismatch_at - .mismatch_from) repeated" end))"')"
		return 1
	fi
	log "FAIL: $2: $(printf '%s' "$1" | jq -c '{sent,recv,eof,reset,error}')"
	return 1
}

# sm_soak_why CLIENT_JSON: what a failed transfer saw, shortest first
sm_soak_why() {
	log "   client: $(printf '%s' "$1" | jq -c '{sent,recv,eof,reset,error,ms}')"
	wait_closes 1 '.result!="ok"' >/dev/null 2>&1
	log "   sluice: $(closes '.result!="ok"' | jq -c '{listener,result,detail,bytes_in,bytes_out,sockmap_pauses,sockmap_copied,duration_ms}')"
	log "   pairs: $(sm_pairs | tail -2)"
}
sm_soak() {
	local n=$1 size=$2 i out t0=$SECONDS stall f
	SM_POOL=web sm_config $WORK/c.yaml
	sed -i 's/^  - name: plain/  - name: stalling\n    listen: "198.18.0.1:5006"\n    mode: tcp\n    datapath: sockmap\n    upstream: fault\n  - name: plain/' $WORK/c.yaml
	sluice_start $WORK/c.yaml 5004
	fault_start --mode slow --rate 1e12 --stall 3 --stall-random
	for i in $(seq 0 $((n - 1))); do
		if [ $((i % 2)) = 0 ]; then
			stall=$(awk -v r=$RANDOM 'BEGIN {printf "%.1f", r % 31 / 10}')
			out=$(client --connect 198.18.0.1:5004 --send $size --pause-read $stall --half-close --seed $((100 + i)) --timeout 600) || true
			sm_echo_ok "$out" "transfer $i: $size bytes each way, client stalled ${stall}s" || { sm_soak_why "$out"; return 1; }
		else
			out=$(client --connect 198.18.0.1:5006 --send $size --expect-any --half-close --seed $((100 + i)) --timeout 600) || true
			for f in $(seq 100); do [ "$(grep -c '"end"' $WORK/fault.json)" -ge $(((i + 1) / 2)) ] && break; sleep 0.1; done
			expect_json "$(grep '"end"' $WORK/fault.json | tail -1)" ".read == $size and .read_sha256 == $(printf '%s' "$out" | jq .sent_sha256)" \
				"transfer $i: $size bytes, upstream stalled 0-3 s" || { sm_soak_why "$out"; return 1; }
		fi
	done
	wait_closes $n '.listener=="sm" or .listener=="stalling"'
	local bad copied trimmed
	bad=$(closes '(.listener=="sm" or .listener=="stalling") and .result!="ok"' | wc -l)
	copied=$(closes '.listener=="sm" or .listener=="stalling"' | jq -s '[.[].sockmap_copied] | add')
	trimmed=$(closes '.listener=="sm" or .listener=="stalling"' | jq -s '[.[].sockmap_trimmed] | add')
	log "   $n x $size: $((SECONDS - t0)) s, $(sm_pauses) pauses ($(sm_kpauses) by the kernel), largest backlog $(sm_max_backlog) bytes, $copied bytes tail-copied, $trimmed repeated bytes cut off, $bad not ok"
	[ "$bad" = 0 ] || { closes '.result!="ok"' >&2; return 1; }
	fault_stop
	sluice_stop
}

t_55_sockmap_integrity_with_random_stalls() {
	# 8 x 128 MiB (4 x 32 MiB under a sanitizer); tests/soak runs 50 x 1 GiB.
	# Under a sanitizer the worker reacts several times slower, so the
	# pause can come after the default 16 MiB hard cap and the pair is
	# reset (docs/architecture.md, "The pause is not instant": seen once in
	# CI's ASan run, 16,756,792 bytes).  This test is about the bytes; t_52
	# and t_53 test the caps, so here the hard cap is 64 MiB.
	if [ -n "${SLUICE_SANITIZER:-}" ]; then SM_HARD=64M sm_soak 4 $((32 << 20)); else sm_soak ${SM_SOAK_N:-8} ${SM_SOAK_SIZE:-$((128 << 20))}; fi
}


# overlap_on / overlap_off: tests/net/overlap.bpf.c (tc, egress) on the
# client's and the upstreams' links: some segments towards the proxy are
# sent twice, once with a head the proxy's socket already has.
OVERLAP_OBJ=${OVERLAP_OBJ:-$ROOT/build/bpf/overlap.bpf.o}
overlap_devs() {
	echo "$NSC slc0$SUF"
	local i; for i in 1 2 3; do echo "${NSU[$((i-1))]} slu$i$SUF"; done
}
overlap_on() {
	local ns dev
	while read -r ns dev; do
		inns $ns tc qdisc add dev $dev clsact
		inns $ns tc filter add dev $dev egress bpf direct-action obj "$OVERLAP_OBJ" sec tc
	done < <(overlap_devs)
}
overlap_off() {
	local ns dev
	while read -r ns dev; do inns $ns tc qdisc del dev $dev clsact 2>/dev/null || true; done < <(overlap_devs)
}
# tcp_dsack_old: the proxy host's count of segments that came with bytes it
# already had (the kernel's own view of the overlaps: TcpExtTCPDSACKOldSent)
tcp_dsack_old() { inp nstat -az TcpExtTCPDSACKOldSent | awk '$1 == "TcpExtTCPDSACKOldSent" {print $2}'; }

t_57_sockmap_overlapping_segments_not_repeated() {
	# TCP queues a retransmitted segment that overlaps bytes it already
	# has as it is, and 6.x hands the verdict whole skbs: forwarded as
	# they are, those heads reach the peer twice (the two-way corruption
	# that kept the datapath refused).  overlap.bpf.o makes such segments
	# on demand; the transfers are zero bytes (client --seed 0), so a
	# repeated head shows as a stream too long.  Through splice as the
	# control, then sockmap: both byte-exact; the kernel saw overlaps
	# (DSACKs on the proxy host) and the verdict cut some off
	# (sockmap_trimmed), else the test proved nothing.
	local i out n=${SM_OVERLAP_N:-6} size=$((16 << 20)) port k trimmed bad d0 d1 dsack
	SM_POOL=web sm_config $WORK/c.yaml; sluice_start $WORK/c.yaml 5004
	overlap_on
	for port in 5002 5004; do
		d0=$(tcp_dsack_old)
		for i in $(seq 0 $((n - 1))); do
			out=$(client --connect 198.18.0.1:$port --send $size --half-close --pause-read $((i % 2)) --seed 0 --timeout 120) || true
			expect_json "$out" ".recv == .sent and .recv_sha256 == .sent_sha256 and .error == null" \
				"port $port transfer $i: $size zero bytes each way, with overlapping segments" || { overlap_off; return 1; }
		done
		d1=$(tcp_dsack_old)
		[ $port = 5004 ] && dsack=$((d1 - d0))
		log "   port $port: $((d1 - d0)) segments with bytes the proxy already had"
	done
	overlap_off
	wait_closes $n '.listener=="sm"'
	bad=$(closes '.listener=="sm" and .result!="ok"' | wc -l)
	trimmed=$(closes '.listener=="sm"' | jq -s '[.[].sockmap_trimmed] | add')
	log "   sockmap: $trimmed repeated bytes cut off by the verdict, $bad not ok"
	[ "$bad" = 0 ] || { closes '.result!="ok"' >&2; return 1; }
	[ "$dsack" -gt 0 ] && [ "$trimmed" -gt 0 ] || { log "FAIL: no overlapping segment reached the verdict: the cut was not exercised"; return 1; }
	sluice_stop
}
