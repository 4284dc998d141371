# tests/net/bpf.sh — the kernel-kept counters (issue 4), seen the way an
# operator sees them: `bpftool map dump pinned` parsed with jq, compared with
# what `ss` finds in the proxy's namespace and with what the clients hold.
# Sourced by run.sh after cases.sh; needs SLUICE_NET_BPF != off.

# bpf_map NAME: the pinned map as bpftool prints it (JSON)
bpf_map() { bpftool -j map dump pinned "$BPF_PIN/$1"; }

# bpf_upstream_active IP: opened - closed of the upstream server IP:9000
bpf_upstream_active() {
	bpf_map upstream_conns | jq --arg ip "$1" '[.[].formatted.value
		| select(.server.family == 2 and (.server.addr[0:4] | map(tostring) | join(".")) == $ip)
		| .opened - .closed] | add // 0'
}

# bpf_client_slots: the first 8 slots of client_conns (JSON lines).  sluice
# hands slots out from 0 upward and this suite uses a few identities, so
# these are all of them; a full dump (65,536 entries, ~40 MB of JSON) takes
# seconds, which t_42 does once, as an operator would.
bpf_client_slots() {
	local k
	for k in 0 1 2 3 4 5 6 7; do
		bpftool -j map lookup pinned "$BPF_PIN/client_conns" key $k 0 0 0 | jq -c '.formatted.value'
	done
}

# bpf_client_active NAME [SLOTS]: opened - closed of the client identity NAME
bpf_client_active() {
	{ [ -n "${2:-}" ] && printf '%s\n' "$2" || bpf_client_slots; } |
		jq -s --arg n "$1" '[.[] | select(.name == $n) | .opened - .closed] | add // 0'
}

# ss_upstream IP: sockets of the proxy to IP:9000 that TCP still counts as
# a connection (everything but TIME-WAIT: the kernel's counter stops at
# TCP_CLOSE, which a socket reaches on entering TIME-WAIT)
ss_upstream() {
	inp ss -Htan "dst $1:9000" | awk '$1 != "TIME-WAIT"' | wc -l
}

# ss_clients PORT: connections the clients hold on the proxy's PORT
ss_clients() {
	inp ss -Htan "sport = :$1" | awk '$1 != "TIME-WAIT" && $1 != "LISTEN"' | wc -l
}

# bpf_checkpoint ALICE PLAIN: the maps equal ss, server by server, and the
# client counts equal ALICE (CN=alice on :5000) and PLAIN (IP=198.18.0.2 on
# :5002).  Connections take a round trip to settle (a close is counted at
# TCP_CLOSE), so compare until equal, bounded: 10 s.
bpf_checkpoint() {
	local alice=$1 plain=$2 i ip got want line slots
	for i in $(seq 100); do
		line=""; got=""; want=""
		for ip in 198.18.1.2 198.18.2.2 198.18.3.2; do
			got="$got $(bpf_upstream_active $ip)"; want="$want $(ss_upstream $ip)"
		done
		slots=$(bpf_client_slots)
		got="$got $(bpf_client_active CN=alice "$slots") $(bpf_client_active IP=198.18.0.2 "$slots")"
		want="$want $alice $plain"
		line="map:$got / ss and clients:$want (up1 up2 up3 alice plain)"
		[ "$got" = "$want" ] && [ "$(ss_clients 5000)" = "$alice" ] && [ "$(ss_clients 5002)" = "$plain" ] &&
			{ log "   checkpoint: $line"; return 0; }
		sleep 0.1
	done
	log "FAIL: checkpoint never settled: $line; ss clients :5000 $(ss_clients 5000) :5002 $(ss_clients 5002)"
	return 1
}

t_40_bpf_counters_match_ss() {
	# Two workers, three upstreams, a few hundred connections opened and
	# closed in random order (clean closes, client resets, an upstream
	# killed with connections on it, refused connects): at every checkpoint
	# the kernel's counters are what ss and the clients see.
	WORKERS=2 config $WORK/c.yaml; sluice_start $WORK/c.yaml 5000
	bpf_checkpoint 0 0
	# 1. 30 alice mTLS and 20 plain connections held open.
	client --connect 198.18.0.1:5000 $(tlsas alice) --count 30 --parallel 30 --hold 15 --send 1000 --half-close >$WORK/held_tls.json &
	local p_tls=$!
	client --connect 198.18.0.1:5002 --count 20 --parallel 20 --hold 15 --send 1000 --half-close >$WORK/held_tcp.json &
	local p_tcp=$!
	bpf_checkpoint 30 20
	bpf_map upstream_conns | jq -c '.[].formatted.value | {server: (.server.addr[0:4] | map(tostring) | join(".")), opened, established, closed}' | head -3 | sed 's/^/   /' >&2
	# 2. Churn on top: short connections of random sizes, client resets,
	# and upstream 3 killed with connections on it.
	local i pids=()
	for i in $(seq 6); do
		client --connect 198.18.0.1:5002 --count 20 --parallel 5 --send $((RANDOM * 8 + 1)) --seed $i --half-close >$WORK/churn_tcp$i.json &
		pids+=($!)
		client --connect 198.18.0.1:5000 $(tlsas alice) --count 10 --parallel 5 --send $((RANDOM * 4 + 1)) --seed $i --half-close >$WORK/churn_tls$i.json &
		pids+=($!)
	done
	for i in $(seq 10); do
		client --connect 198.18.0.1:5002 --send 1M --reset-after $((RANDOM * 8)) --seed $i >/dev/null &
		pids+=($!)
	done
	sleep 0.3
	up_stop 3
	for i in "${pids[@]}"; do wait $i || true; done
	for i in $(seq 6); do
		expect_json "$(cat $WORK/churn_tcp$i.json)" '.ok + .failed == 20' "tcp churn batch $i ran"
	done
	# The held ones lost their upstream 3 share; the rest are still held.
	local held_tls held_tcp
	held_tls=$(inp ss -Htan state established "sport = :5000" | wc -l)
	held_tcp=$(inp ss -Htan state established "sport = :5002" | wc -l)
	bpf_checkpoint "$held_tls" "$held_tcp"
	# 3. Upstream 3 back; connections to it are counted again.
	up_start 3
	client --connect 198.18.0.1:5002 --count 30 --parallel 10 --send 5000 --half-close >$WORK/after.json
	expect_json "$(cat $WORK/after.json)" '.failed == 0' "30 connections after upstream 3 came back"
	wait $p_tls || true; wait $p_tcp || true
	# 4. Everything closed: every counter back to 0, and opened == closed
	# means nothing was counted twice or missed.
	bpf_checkpoint 0 0
	local opened closed
	opened=$(bpf_map upstream_conns | jq '[.[].formatted.value.opened] | add')
	closed=$(bpf_map upstream_conns | jq '[.[].formatted.value.closed] | add')
	log "   upstream connects counted: opened $opened closed $closed; close lines: $(closes | wc -l)"
	[ "$opened" = "$closed" ] && [ "$opened" -ge 150 ]
	sluice_stop
}

t_41_bpf_kill9_then_restart() {
	# kill -9 with connections open: the kernel counts every close by
	# itself (nothing leaks in the pinned maps), and the next sluice on
	# the same pin path removes the dead one's pins and cgroup and starts
	# from zero.
	config $WORK/c.yaml; sluice_start $WORK/c.yaml 5000
	local cg out
	cg=$(grep -m1 '"event":"bpf"' "$SLUICE_LOG" | jq -r .msg | sed -n 's/.* in cgroup \([^,]*\),.*/\1/p')
	[ -d "$cg" ] || { log "no cgroup in the bpf log line"; return 1; }
	client --connect 198.18.0.1:5000 $(tlsas alice) --count 12 --parallel 12 --hold 30 --send 10 --timeout 60 >/dev/null 2>&1 &
	local holders=$!
	bpf_checkpoint 12 0
	kill -9 "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true; SLUICE_PID=
	wait $holders 2>/dev/null || true
	# The pins outlive the process; the counters drain to 0 on their own.
	bpf_checkpoint 0 0
	log "   after kill -9: $(bpf_map upstream_conns | jq -c '[.[].formatted.value | {opened, closed}] | .[0:3]')"
	sluice_start $WORK/c.yaml 5000
	[ ! -d "$cg" ] || { log "FAIL: the dead sluice's cgroup $cg is still there"; return 1; }
	expect_json "$(bpf_map upstream_conns | jq '[.[].formatted.value.opened] | add')" '. == 0' "a restart starts from zero"
	out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send 1M --half-close)
	sha_ok "$out" "a transfer after the restart"
	bpf_checkpoint 0 0
	sluice_stop
	# A clean stop removes what it made: pins and cgroup.
	[ -z "$(ls "$BPF_PIN" 2>/dev/null)" ] || { log "FAIL: pins left after stop: $(ls $BPF_PIN)"; return 1; }
}

t_42_bpf_operator_view_and_datapath_totals() {
	# What docs/operations.md tells an operator to run, and the per-CPU
	# totals per datapath agree with the close lines.
	config $WORK/c.yaml; sluice_start $WORK/c.yaml 5000
	local out i
	for i in 1 2 3; do
		out=$(client --connect 198.18.0.1:5002 --send $((i * 300000)) --seed $i --half-close); sha_ok "$out" "tcp $i"
		out=$(client --connect 198.18.0.1:5000 $(tlsas alice) --send $((i * 200000)) --seed $i --half-close); sha_ok "$out" "mtls $i"
	done
	client --connect 198.18.0.1:5000 $(tlsas bob) --send 10 >/dev/null 2>&1 || true   # refused: datapath none
	wait_closes 7 true
	log "   bpftool map dump pinned $BPF_PIN/upstream_conns (first entry):"
	bpftool map dump pinned "$BPF_PIN/upstream_conns" | sed -n '1,16p' | sed 's/^/      /' >&2
	local dp want got
	# datapath index: 0 none, 1 splice, 2 userspace, 3 ktls (bpf/sluice_maps.h)
	for dp in "0 null" "1 splice" "2 userspace"; do
		set -- $dp
		got=$(bpf_map datapath_stats | jq -c --argjson k $1 '.[] | select(.formatted.key == $k) | .formatted.values
			| {conns: (map(.value.conns) | add), bytes_in: (map(.value.bytes_in) | add), bytes_out: (map(.value.bytes_out) | add)}')
		want=$(closes "$( [ $2 = null ] && echo '.datapath == null' || echo ".datapath == \"$2\"" )" |
			jq -s -c '{conns: length, bytes_in: (map(.bytes_in) | add // 0), bytes_out: (map(.bytes_out) | add // 0)}')
		log "   datapath $2: map $got, close lines $want"
		[ "$got" = "$want" ] || { log "FAIL: datapath $2 totals differ"; return 1; }
	done
	sluice_stop
}
