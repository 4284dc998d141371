# tests/vm/sockmap.sh — guest script: the sockmap datapath on Debian 12's
# kernel (6.1), the other kernel sluice supports besides the host's 6.18.
#
#   tests/vm/run.sh tests/vm/sockmap.sh build/sluice build/tools/echo \
#       build/tools/client "$(command -v jq)" "$(command -v bpftool)"
#
# Runs in the guest under busybox sh, on lo: echo upstream on
# 127.0.0.1:9000, a sockmap listener on 127.0.0.1:7004 with small caps
# (256 KiB soft, 16 MiB hard) so that TCG speeds still pause.  Cases:
#   bulk      16 MiB each way, byte-exact; close line ok, datapath sockmap
#   parallel  8 pairs x 1 MiB each way at once
#   stall     the client stops reading for 3 s while pushing 32 MiB through
#             the echo (both directions back up): byte-exact, paused >= 1
#   integrity 6 x 64 MiB each way with the client's reads paused 0-2.5 s
#   fin       client --fin-on-pause with its reads paused: the FIN reaches a
#             paused client socket that still holds bytes, so sluice copies
#             the tail itself; byte-exact both ways, sockmap_copied > 0
#   overlap   tests/net/overlap.bpf.o on lo's egress sends some segments
#             twice, once with a head the receiver already has (what a
#             retransmission can do); 3 x 8 MiB of zero bytes each way:
#             byte-exact, and the verdict cut the repeated heads off
#             (sockmap_trimmed > 0)
#   after     sockmap_global backlog 0 and no dead pair (bpftool), no kernel
#             warning in dmesg (e.g. "TCP recvmsg seq # bug")
. /guest-lib.sh

for f in "$@"; do
	case "$f" in
	*/sluice) SLUICE=$f ;;
	*/echo) ECHO=$f ;;
	*/client) CLIENT=$f ;;
	*/jq) JQ=$f ;;
	*/bpftool) BPFTOOL=$f ;;
	*/tc) TC=$f ;;
	*/overlap.bpf.o) OVERLAP=$f ;;
	esac
done
: "${SLUICE:?}" "${ECHO:?}" "${CLIENT:?}" "${JQ:?}" "${BPFTOOL:?}" "${TC:?}" "${OVERLAP:?}"
PIN=/sys/fs/bpf/sluice LOG=/tmp/sluice-sockmap.log

mkdir -p /sys/fs/bpf /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "kernel $(uname -r)"

jt() { [ -n "$1" ] && printf '%s\n' "$1" | "$JQ" -e "$2" >/dev/null 2>&1; }
jcheck() { if jt "$2" "$3"; then pass "$1"; else fail "$1" "want $3 in: $2"; fi; }
closes() { grep -a '"event":"close"' "$LOG" 2>/dev/null; }
wait_closes() {
	local n=300
	while [ "$n" -gt 0 ]; do
		[ "$(closes | wc -l)" -ge "$1" ] && return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "wait_closes: $(closes | wc -l) close lines, wanted $1" >&2
	return 1
}

"$ECHO" --listen 127.0.0.1:9000 >/tmp/echo.out 2>&1 &
waitport 9000
cat >/tmp/sockmap.yaml <<EOF
workers: 2
log: { level: info, format: json }
drain: 5s
bpf: { mode: require, pin_path: $PIN, sockmap_pair_cap: 256K, sockmap_hard_cap: 16M }
listeners:
  - name: sm
    listen: "127.0.0.1:7004"
    mode: tcp
    datapath: sockmap
    upstream: echo
    timeouts: { connect: 5s, idle: 300s }
upstreams:
  - name: echo
    servers:
      - { address: "127.0.0.1:9000" }
clients:
  - id: "IP=127.0.0.0/8"
    allow: [echo]
EOF
"$SLUICE" run -c /tmp/sockmap.yaml >"$LOG" 2>&1 &
SPID=$!
if ! waitport 7004 60; then
	fail start "sluice did not listen"; tail -5 "$LOG"; summary; exit 1
fi
# The listeners open before the start-up lines are flushed: wait (5 s at
# most, on TCG) for the sockmap one rather than grep once.
for _ in $(seq 50); do
	grep -aq '"event":"sockmap".*backlog caps' "$LOG" && break
	sleep 0.1
done
grep -a '"event":"sockmap"' "$LOG" | head -2
check sockmap_on grep -aq '"event":"sockmap".*backlog caps' "$LOG"

sha_eq='.error == null and .recv == .sent and .recv_sha256 == .sent_sha256'
# echo_check NAME JSON [EXTRA]: a two-way transfer byte-exact (PASS, and
# EXACT=1 for the close-line checks that follow) or not (FAIL).
echo_check() {
	EXACT=0
	if jt "$2" "$sha_eq${3:+ and $3}"; then pass "$1"; EXACT=1
	else fail "$1" "want $sha_eq${3:+ and $3} in: $2"; fi
}

# bulk
out=$("$CLIENT" --connect 127.0.0.1:7004 --send 16M --half-close --seed 1 --timeout 120)
echo_check bulk_16M_each_way "$out" ".sent == 16777216"
wait_closes 1
[ $EXACT = 0 ] || jcheck bulk_close_line "$(closes | tail -1)" '.result == "ok" and .datapath == "sockmap" and .bytes_in == 16777216'

# parallel
out=$("$CLIENT" --connect 127.0.0.1:7004 --count 8 --parallel 8 --send 1M --half-close --seed 2 --timeout 120)
jcheck parallel_8_pairs "$out" '.ok == 8 and .failed == 0'
wait_closes 9

# stall
out=$("$CLIENT" --connect 127.0.0.1:7004 --send 32M --pause-read 3 --half-close --seed 3 --timeout 180)
echo_check stall_32M_byte_exact "$out" ".sent == 33554432"
wait_closes 10
cl=$(closes | tail -1)
echo "stall: $(printf '%s' "$cl" | "$JQ" -c '{result,sockmap_pauses,sockmap_kernel_pauses,sockmap_copied,duration_ms}')"
[ $EXACT = 0 ] || jcheck stall_paused_and_ok "$cl" '.result == "ok" and .sockmap_pauses >= 1'
# The kernel pauses at the source's next segment (bpf sockmap_pause), not
# only the worker: 6.1's read loop and ACKs must allow it too.
[ $EXACT = 0 ] || jcheck stall_paused_by_kernel "$cl" '.sockmap_kernel_pauses >= 1'

# integrity: 6 x 64 MiB each way, the client's reads paused 0-2.5 s
i=0
while [ $i -lt 6 ]; do
	p=$(( (i * 7) % 6 ))
	out=$("$CLIENT" --connect 127.0.0.1:7004 --send 64M --pause-read "$(( p / 2 )).$(( p % 2 * 5 ))" --half-close --seed $((20 + i)) --timeout 300)
	echo_check "integrity_${i}_64M_byte_exact" "$out" ".sent == 67108864"
	i=$((i + 1))
done
wait_closes 16
echo "integrity: $(closes | tail -6 | "$JQ" -s -c '{ok: map(select(.result == "ok")) | length, pauses: map(.sockmap_pauses) | add, kernel_pauses: map(.sockmap_kernel_pauses) | add}')"
jcheck integrity_all_ok "$(closes | tail -6 | "$JQ" -s -c '.')" "map(select(.result == \"ok\" and .datapath == \"sockmap\")) | length == 6"

# fin: up to 3 tries for a FIN that meets a paused socket holding bytes
copied=0 i=0
while [ $i -lt 3 ] && [ "$copied" = 0 ]; do
	i=$((i + 1))
	out=$("$CLIENT" --connect 127.0.0.1:7004 --send 64M --fin-on-pause --pause-read 3 --seed $((10 + i)) --timeout 180)
	echo_check "fin_try${i}_byte_exact" "$out" ".paused_seen"
	wait_closes $((16 + i))
	cl=$(closes | tail -1)
	echo "fin try $i: sent $(printf '%s' "$out" | "$JQ" .sent), $(printf '%s' "$cl" | "$JQ" -c '{result,sockmap_pauses,sockmap_copied}')"
	[ $EXACT = 0 ] || jcheck "fin_try${i}_ok" "$cl" '.result == "ok"'
	[ $EXACT = 0 ] || copied=$(printf '%s' "$cl" | "$JQ" '.sockmap_copied // 0')
done
check fin_tail_copied [ "$copied" -gt 0 ]

# overlap
n0=$(closes | wc -l)
"$TC" qdisc add dev lo clsact && "$TC" filter add dev lo egress bpf direct-action obj "$OVERLAP" sec tc
i=0
while [ $i -lt 3 ]; do
	out=$("$CLIENT" --connect 127.0.0.1:7004 --send 8M --half-close --seed 0 --timeout 180)
	echo_check "overlap_${i}_8M_zero_bytes" "$out" ".sent == 8388608"
	i=$((i + 1))
done
"$TC" qdisc del dev lo clsact
wait_closes $((n0 + 3))
cl=$(closes | tail -3 | "$JQ" -s -c '{ok: map(select(.result == "ok")) | length, trimmed: map(.sockmap_trimmed) | add}')
echo "overlap: $cl"
jcheck overlap_cut_off "$cl" '.ok == 3 and .trimmed > 0'

# after
g=$("$BPFTOOL" -j map dump pinned $PIN/sockmap_global | "$JQ" -c '.[0].formatted.value')
jcheck global_backlog_zero_no_dead "$g" '.backlog == 0 and .dead_pairs == 0'
if dmesg | grep -E 'WARNING|seq # bug|BUG:' >/tmp/dmesg.bad; then
	fail dmesg_clean "$(head -3 /tmp/dmesg.bad)"
else
	pass dmesg_clean
fi
kill "$SPID"
summary
