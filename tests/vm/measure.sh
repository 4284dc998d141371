# tests/vm/measure.sh — what the kTLS datapath saves: sluice's syscalls and
# the bytes it copies through userspace per MiB moved, ktls vs userspace.
#
#   tests/vm/run.sh tests/vm/measure.sh build/sluice build/tools/echo \
#       build/tools/client /usr/bin/strace CERTDIR [SETTINGS.env]
#
# Guest script (busybox sh), not a pass/fail test: it prints tables. For
# each of tls.ktls: auto and off, sluice runs under `strace -f` (every
# thread, every syscall, -s 0) while one TLS connection moves $SIZE bytes
# each way through an echo upstream (TLS 1.3 AES-128-GCM unless $VERSION /
# $CIPHER say otherwise). From the trace:
#   syscalls per MiB moved, by name (MiB moved = bytes_in + bytes_out)
#   bytes through userspace: the sum of what read/write/recv*/send*/readv/
#     writev returned (for the userspace datapath that is ciphertext and
#     plaintext both, copied in and out of the process), per MiB moved
#   bytes spliced: the sum of what splice returned (socket -> pipe and
#     pipe -> socket each count, so 2 per byte moved; zero-copy)
# Start-up (config and certificate files) and the handshake are included;
# at 64 MiB they are noise. Timings under TCG mean nothing and are not shown.
# Then, when build/tools/loadgen is among the files, idle memory: sluice's
# VmRSS growth per connection while loadgen holds $IDLE_N idle TLS
# $VERSION connections, for tls.ktls auto (tickets on and off) and off,
# after 20 warm-up connections (one-time allocations out of the delta).
# IDLE_N is 3000 (sluice then holds 6000 fds of the guest's 8192): with 400,
# what the first few hundred connections cost once (tables that double,
# malloc's arena growing) was ~1 KB of the 2 KB per connection, and the
# figure moved by 300 B from run to run at 1000.
# Settings (*.env FILE): SIZE (64M), VERSION (1.3), CIPHER (TLS_AES_128_GCM_SHA256),
# IDLE_N (3000).
. /guest-lib.sh

SIZE=64M VERSION=1.3 CIPHER=TLS_AES_128_GCM_SHA256 IDLE_N=3000
SLUICE= ECHO= CLIENT= STRACE= CERTS= LOADGEN=
for f in "$@"; do
	case "$f" in
	*/sluice) SLUICE=$f ;;
	*/echo) ECHO=$f ;;
	*/client) CLIENT=$f ;;
	*/strace) STRACE=$f ;;
	*/loadgen) LOADGEN=$f ;;
	*.env) . "$f" ;;
	*) [ -d "$f" ] && [ -f "$f/ca.pem" ] && CERTS=$f ;;
	esac
done
for v in SLUICE ECHO CLIENT STRACE CERTS; do
	eval "[ -n \"\$$v\" ]" || { echo "measure.sh: no $v among the files: $*"; exit 2; }
done
LPORT=7000 UPORT=9000

"$ECHO" --listen 127.0.0.1:$UPORT >/dev/null 2>&1 &
EPID=$!
waitport $UPORT || exit 1

# run MODE: one traced transfer; leaves /tmp/trace.MODE and /tmp/sluice-MODE.log
run() {
	local mode=$1 cfg=/tmp/measure-$1.yaml spid tpid n
	sluice_config "$cfg" "$mode" 1
	"$STRACE" -f -qq -s 0 -o /tmp/trace.$mode "$SLUICE" run -c "$cfg" 2>/tmp/sluice-$mode.log &
	tpid=$!
	waitport $LPORT 60 || { cat /tmp/sluice-$mode.log; return 1; }
	"$CLIENT" --connect 127.0.0.1:$LPORT --tls --ca "$CERTS/ca.pem" --cert "$CERTS/alice.pem" \
		--key "$CERTS/alice.key" --tls-version "$VERSION" --cipher "$CIPHER" --send "$SIZE" \
		--half-close --timeout 600 >/tmp/client-$mode.json
	echo "client ($mode): $(cat /tmp/client-$mode.json)" | cut -c1-220
	waitfor /tmp/sluice-$mode.log '"event":"close"' 30
	spid=$(pidof sluice)
	kill -TERM $spid
	wait $tpid
	grep -a '"event":"close"' /tmp/sluice-$mode.log | sed 's/^/close: /'
}

# table MODE: the per-MiB table from the trace
table() {
	local mode=$1 line moved
	line=$(grep -a '"event":"close"' /tmp/sluice-$mode.log | tail -1)
	moved=$(( $(echo "$line" | sed -n 's/.*"bytes_in":\([0-9]*\).*/\1/p') + \
	          $(echo "$line" | sed -n 's/.*"bytes_out":\([0-9]*\).*/\1/p') ))
	dp=$(echo "$line" | sed -n 's/.*"datapath":"\([a-z]*\)".*/\1/p')
	awk -v mode="$mode" -v dp="$dp" -v moved="$moved" '
	# strace -f lines: "PID name(args) = RET", "PID name(args <unfinished ...>",
	# "PID <... name resumed>...) = RET"; signals and exits are skipped.
	{
		name = ""; ret = ""
		if ($2 ~ /^<\.\.\./) { name = $3 }
		else if ($0 ~ /<unfinished \.\.\.>$/) { next }
		else { s = $2; sub(/\(.*/, "", s); name = s }
		if (name == "" || name ~ /^[-+]/) next
		if (match($0, /\) += -?[0-9]+/)) { r = substr($0, RSTART, RLENGTH); sub(/^\) += /, "", r); ret = r + 0 }
		n[name]++; total++
		if (ret > 0 && name ~ /^(read|write|readv|writev|recvfrom|sendto|recvmsg|sendmsg|pread64|pwrite64)$/) { ub += ret; bb[name] += ret }
		if (ret > 0 && name == "splice") { sb += ret; bb[name] += ret }
	}
	END {
		mib = moved / 1048576
		printf "\n== sluice, tls.ktls: %s (datapath %s): %.1f MiB moved (bytes_in + bytes_out)\n", mode, dp, mib
		printf "   %-16s %10s %12s %16s %14s\n", "syscall", "count", "per MiB", "bytes", "bytes/MiB"
		cmd = "sort -k2,2nr"
		for (k in n) if (n[k] / mib >= 0.05 || bb[k] > 0)
			printf "   %-16s %10d %12.2f %16d %14.0f\n", k, n[k], n[k] / mib, bb[k], bb[k] / mib | cmd
		close(cmd)
		printf "   %-16s %10d %12.2f\n", "ALL", total, total / mib
		printf "   bytes through userspace (read/write/recv*/send*): %d = %.0f per MiB moved\n", ub, ub / mib
		printf "   bytes spliced (each byte counts in and out):       %d = %.0f per MiB moved\n", sb, sb / mib
		printf "SUMMARY %s datapath=%s syscalls_per_mib=%.2f userspace_bytes_per_mib=%.0f spliced_bytes_per_mib=%.0f\n",
		       mode, dp, total / mib, ub / mib, sb / mib
	}' /tmp/trace.$mode
}

echo "measure: SIZE=$SIZE each way, TLS $VERSION $CIPHER, strace -f on sluice (1 worker)"
for mode in auto off; do
	run $mode && table $mode
done
echo
echo "== comparison (per MiB moved through sluice)"
for mode in auto off; do table $mode; done 2>/dev/null | grep '^SUMMARY' | sed 's/^SUMMARY /   /'

# idle MODE TICKETS: VmRSS growth of sluice per idle connection
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' /proc/$1/status; }
idle() {
	local mode=$1 tk=$2 cfg=/tmp/idle.yaml spid lpid r0 r1 fifo=/tmp/idle.hold n=0
	local tls="--tls --ca $CERTS/ca.pem --cert $CERTS/alice.pem --key $CERTS/alice.key --tls-version $VERSION"
	sluice_config "$cfg" "$mode" 1
	sed -i "s/ktls: $mode }/ktls: $mode, tickets: $tk }/" "$cfg"
	"$SLUICE" run -c "$cfg" 2>/tmp/sluice-idle.log &
	spid=$!
	waitport $LPORT 60 || { cat /tmp/sluice-idle.log; return 1; }
	# shellcheck disable=SC2086 # $tls is a list of options
	"$LOADGEN" idle --connect 127.0.0.1:$LPORT $tls --conns 20 --parallel 2 --seconds 60 --hold 0 </dev/null >/dev/null
	sleep 2
	r0=$(rss $spid)
	rm -f $fifo /tmp/idle.out; mkfifo $fifo
	# loadgen holds the connections until its stdin (the fifo) closes.
	# shellcheck disable=SC2086
	"$LOADGEN" idle --connect 127.0.0.1:$LPORT $tls --conns "$IDLE_N" --parallel 4 --seconds 300 \
		--hold 300 <$fifo >/tmp/idle.out &
	lpid=$!
	exec 7>$fifo
	while [ ! -s /tmp/idle.out ] && [ $n -lt 600 ]; do sleep 0.5; n=$((n + 1)); done
	sleep 3
	r1=$(rss $spid)
	exec 7>&-
	wait $lpid
	kill -TERM $spid; wait $spid
	printf "   %-6s %-8s %-40s %12d\n" "$mode" "$tk" "$(cat /tmp/idle.out)" $(( (r1 - r0) / IDLE_N ))
}
if [ -n "$LOADGEN" ]; then
	ulimit -n 8192
	echo
	echo "== idle: $IDLE_N TLS $VERSION connections held; sluice VmRSS growth per connection (bytes)"
	printf "   %-6s %-8s %-40s %12s\n" ktls tickets loadgen "B/conn"
	idle auto on; idle auto off; idle off on
fi
kill $EPID 2>/dev/null
echo "tls_stat: $(tls_stat)"
exit 0
