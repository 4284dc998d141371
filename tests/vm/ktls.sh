# tests/vm/ktls.sh — the kTLS guest suite: sluice's ktls datapath end to end.
#
#   tests/vm/run.sh tests/vm/ktls.sh build/sluice build/tools/echo \
#       build/tools/client /usr/bin/jq CERTDIR [SETTINGS.env]
#
# Runs in the guest under busybox sh (. /guest-lib.sh). The files arrive as
# "$@" at their host paths and are told apart by name: */sluice, */echo,
# */client, */jq, a directory holding ca.pem (made by tools/gen-certs), and
# an optional *.env file that is sourced (settings below). Everything runs
# on lo: echo upstream on 127.0.0.1:9000, sluice mtls on 127.0.0.1:7000.
#
# Cases (each check prints PASS/FAIL; summary at the end):
#   bulk      TLS 1.2 and 1.3 x AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305:
#             $BULK bytes each way through the echo upstream, byte-exact;
#             TlsTxSw/TlsRxSw +1 or more, TlsCurr* back after close; close
#             line datapath ktls, ktls_tx/ktls_rx true, version and cipher
#   closes    close_notify (half-close) -> ok; TCP close without
#             close_notify -> ok + "eof without close_notify"; client alerts
#             1:90 and 2:80 sent through the client's own kTLS TX ->
#             tls_alert "client alert N (...)"; TLS 1.3 KeyUpdate requested
#             and not-requested -> on 6.1 (no TlsRxRekeyOk) a clean close
#             (close_notify) with ktls_keyupdate_unsupported and the bytes
#             received an exact prefix of those sent; on a kernel that can
#             rekey (make vm-rekey: Debian's 7.x): 3 KeyUpdates per
#             connection for each TLS 1.3 suite, requested and not, a
#             resumed session, 32 in a row: full echo, close line
#             key_updates, TlsRxRekeyOk/TlsTxRekeyOk up by exactly the
#             count; the 33rd in a row and malformed ones -> tls_error
#   parallel  $PAR connections at once (each idles 2 s after its handshake
#             so that they overlap), $PAR_SEND each way each: all
#             byte-exact, all ktls, TlsCurrTxSw/TlsCurrRxSw back to start
#   off       tls.ktls: off, the six bulk cases: datapath userspace,
#             ktls_tx/ktls_rx false, byte-exact, tls_stat unchanged
#   require   tls.ktls: require with the tls module loaded: starts, ktls
#   resume    TLS 1.3 and 1.2: a full handshake saves the session ticket,
#             then a resumed connection (16 MiB each way) is byte-exact,
#             "resumed": true, and kTLS engaged both ways (tls_stat +1)
#
# Settings (a *.env FILE, e.g. printf 'BULK=16M\n' >/tmp/x/vm.env):
#   BULK (64M)  OFF_BULK (16M: the userspace path is slow under TCG and is
#   proven at 64 MiB by tests/net on the host)  PAR (200)  PAR_SEND (256K)
#   CASES ("bulk closes parallel off require resume")  — which groups run
#   TIMINGS: every transfer prints its duration; TCG speed means nothing
#   for performance, it only sizes the budget.
. /guest-lib.sh

BULK=64M OFF_BULK=16M PAR=200 PAR_SEND=256K CASES="bulk closes parallel off require resume"
SLUICE= ECHO= CLIENT= JQ= CERTS=
for f in "$@"; do
	case "$f" in
	*/sluice) SLUICE=$f ;;
	*/echo) ECHO=$f ;;
	*/client) CLIENT=$f ;;
	*/jq) JQ=$f ;;
	*.env) . "$f" ;;
	*) [ -d "$f" ] && [ -f "$f/ca.pem" ] && CERTS=$f ;;
	esac
done

for v in SLUICE ECHO CLIENT JQ CERTS; do
	eval "[ -n \"\$$v\" ]" || { echo "ktls.sh: no $v among the files: $*"; echo "usage: see the header"; exit 2; }
done

LPORT=7000 UPORT=9000
LOG=   SPID=   EPID=
ALICE="--tls --ca $CERTS/ca.pem --cert $CERTS/alice.pem --key $CERTS/alice.key"

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# size in bytes of 64M / 256K / 1000
bytes() {
	case "$1" in
	*K) echo $(( ${1%K} * 1024 )) ;;
	*M) echo $(( ${1%M} * 1048576 )) ;;
	*G) echo $(( ${1%G} * 1073741824 )) ;;
	*) echo "$1" ;;
	esac
}
# jt JSON EXPR: the jq expression holds for JSON (one object; jq -e on an
# empty input would say yes)
jt() { [ -n "$1" ] && printf '%s\n' "$1" | "$JQ" -e "$2" >/dev/null 2>&1; }
# jcheck NAME JSON EXPR: a check on one JSON object; shows it on failure
jcheck() {
	if jt "$2" "$3"; then pass "$1"; else fail "$1" "want $3 in: $2"; fi
}
# delta BEFORE AFTER NAME: growth of counter NAME between two tls_stat lines
delta() {
	local b a
	b=$(echo "$1" | tr ' ' '\n' | sed -n "s/^$3=//p")
	a=$(echo "$2" | tr ' ' '\n' | sed -n "s/^$3=//p")
	echo $(( ${a:-0} - ${b:-0} ))
}

closes() { grep -a '"event":"close"' "$LOG" 2>/dev/null; }
nclose() { closes | wc -l; }
# wait_closes N [SECS]: until the log has N close lines
wait_closes() {
	local n=$(( ${2:-30} * 10 ))
	while [ "$n" -gt 0 ]; do
		[ "$(nclose)" -ge "$1" ] && return 0
		sleep 0.1
		n=$((n - 1))
	done
	echo "wait_closes: $(nclose) close lines, wanted $1; sluice log tail:" >&2
	tail -5 "$LOG" | sed 's/^/    | /' >&2
	return 1
}

# sluice_alive LABEL: sluice still runs; if not, say how it ended, show its
# log and start a new one (same mode) so that the next cases still run
RESTARTS=0
sluice_alive() {
	local rc
	[ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null && return 0
	[ -n "$SPID" ] && { wait "$SPID"; rc=$?; }
	fail "sluice still running after $1" "it exited with status ${rc:-?}; log tail and kernel messages:"
	tail -8 "$LOG" | sed 's/^/    | /'
	dmesg | grep -iE 'segfault|traps:|general protection' | tail -3 | sed 's/^/    | /'
	SPID=
	RESTARTS=$((RESTARTS + 1))
	sluice_start "$CUR_MODE" "$CUR_MODE-restart$RESTARTS" || true
	return 1
}

echo_start() {
	"$ECHO" --listen 127.0.0.1:$UPORT >/tmp/echo.out 2>&1 &
	EPID=$!
	waitport $UPORT
}

# sluice_start MODE [NAME]: config with tls.ktls: MODE, log in /tmp/sluice-NAME.log
sluice_start() {
	local mode=$1 name=${2:-$1} cfg=/tmp/sluice-$1.yaml
	CUR_MODE=$mode
	sluice_config "$cfg" "$mode" 2
	LOG=/tmp/sluice-$name.log
	"$SLUICE" run -c "$cfg" 2>"$LOG" &
	SPID=$!
	if ! waitport $LPORT 60; then
		echo "--- sluice ($mode) did not listen:"; cat "$LOG"
		SPID=
		return 1
	fi
	grep -a '"event":"ktls"\|"event":"datapath"' "$LOG" | sed 's/^/    sluice: /'
}

sluice_stop() {
	local rc n=300
	[ -n "$SPID" ] || return 0
	kill -TERM "$SPID" 2>/dev/null
	while [ $n -gt 0 ] && kill -0 "$SPID" 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
	if kill -0 "$SPID" 2>/dev/null; then
		kill -9 "$SPID"; wait "$SPID"; SPID=
		echo "sluice did not exit within 30 s of SIGTERM" >&2
		return 1
	fi
	wait "$SPID"; rc=$?; SPID=
	[ $rc = 0 ] || { echo "sluice exited $rc; log tail:" >&2; tail -5 "$LOG" >&2; }
	return $rc
}

# run_client OUTVAR ARGS...: runs the client, stores its JSON, prints a
# one-line summary with the time it took; the client's status in $crc
run_client() {
	local _var=$1 _t0 _t1 _out
	shift
	_t0=$(now_ms)
	_out=$("$CLIENT" --connect 127.0.0.1:$LPORT "$@" 2>&1)
	crc=$?
	_t1=$(now_ms)
	eval "$_var=\$_out"
	echo "    client ($((_t1 - _t0)) ms, rc=$crc): $(printf '%s\n' "$_out" | "$JQ" -c \
		'if .count then {ok,failed,sent,recv,first_error} else
		 {tls_version,cipher,sent,recv,eof,close_notify,reset,alert,error,recv_prefix_ok,key_update,key_updates,resumed,alert_sent,write_error} end' \
		2>/dev/null || printf '%s' "$_out")"
}

# last_close: the newest close line, shown
last_close() {
	CL=$(closes | tail -1)
	echo "    close: $(printf '%s\n' "$CL" | "$JQ" -c 'del(.ts,.level,.event,.listener,.client,.identity,.upstream)' 2>/dev/null || echo "$CL")"
}

# ---------------------------------------------------------------------------
SUITES="TLSv1.3:TLS_AES_128_GCM_SHA256 TLSv1.3:TLS_AES_256_GCM_SHA384 TLSv1.3:TLS_CHACHA20_POLY1305_SHA256
TLSv1.2:ECDHE-ECDSA-AES128-GCM-SHA256 TLSv1.2:ECDHE-ECDSA-AES256-GCM-SHA384 TLSv1.2:ECDHE-ECDSA-CHACHA20-POLY1305"

# bulk_one MODE VERSION CIPHER SIZE SEED
bulk_one() {
	local mode=$1 ver=$2 cipher=$3 size=$4 seed=$5 n0 before after d k out label
	label="$mode $ver $cipher $size"
	echo "== bulk: $label"
	n0=$(nclose)
	before=$(tls_stat)
	run_client out $ALICE --tls-version "${ver#TLSv}" --cipher "$cipher" --send "$size" --half-close \
		--seed "$seed" --timeout 300
	wait_closes $((n0 + 1)) 30
	after=$(tls_stat)
	last_close
	sluice_alive "$label" || return
	jcheck "$label: byte-exact echo" "$out" \
		".error == null and .recv == $(bytes "$size") and .sent == .recv and .recv_sha256 == .sent_sha256"
	if [ "$mode" = off ]; then
		jcheck "$label: close line userspace" "$CL" \
			".result == \"ok\" and .datapath == \"userspace\" and .ktls_tx == false and .ktls_rx == false and .tls_version == \"$ver\" and .cipher == \"$cipher\" and .bytes_in == $(bytes "$size") and .bytes_out == $(bytes "$size")"
		for k in TlsTxSw TlsRxSw TlsCurrTxSw TlsCurrRxSw; do
			d=$(delta "$before" "$after" $k)
			check "$label: $k unchanged (got +$d)" [ "$d" -eq 0 ]
		done
	else
		jcheck "$label: close line ktls" "$CL" \
			".result == \"ok\" and .datapath == \"ktls\" and .ktls_tx == true and .ktls_rx == true and .tls_version == \"$ver\" and .cipher == \"$cipher\" and .bytes_in == $(bytes "$size") and .bytes_out == $(bytes "$size")"
		for k in TlsTxSw TlsRxSw; do
			d=$(delta "$before" "$after" $k)
			check "$label: $k rose by >= 1 (got +$d)" [ "$d" -ge 1 ]
		done
		for k in TlsCurrTxSw TlsCurrRxSw; do
			d=$(delta "$before" "$after" $k)
			check "$label: $k back after close (got $d)" [ "$d" -eq 0 ]
		done
	fi
}

bulk_all() {
	local mode=$1 size=$2 seed=10 s
	for s in $SUITES; do
		seed=$((seed + 1))
		bulk_one "$mode" "${s%%:*}" "${s#*:}" "$size" $seed
	done
}

# resume_one VERSION CIPHER: a ticket from a full handshake, then a resumed
# bulk transfer on kTLS.  The ticket is written after the handshake (TLS
# 1.3: a post-handshake message, under the kernel's send key).
resume_one() {
	local ver=$1 cipher=$2 out n0 before after d k label="resume $1 $2"
	echo "== $label"
	rm -f /tmp/sess.pem
	n0=$(nclose)
	run_client out $ALICE --tls-version "${ver#TLSv}" --cipher "$cipher" --send 1000 --half-close \
		--session-out /tmp/sess.pem
	jcheck "$label: full handshake, ticket saved" "$out" '.error == null and .resumed == false and .recv == 1000'
	before=$(tls_stat)
	run_client out $ALICE --tls-version "${ver#TLSv}" --cipher "$cipher" --send 16M --half-close \
		--session-in /tmp/sess.pem --seed 77 --timeout 300
	wait_closes $((n0 + 2)) 30
	after=$(tls_stat)
	last_close
	sluice_alive "$label" || return
	jcheck "$label: resumed, byte-exact" "$out" \
		".error == null and .resumed == true and .recv == $(bytes 16M) and .recv_sha256 == .sent_sha256"
	jcheck "$label: close line resumed on ktls" "$CL" \
		'.result == "ok" and .resumed == true and .datapath == "ktls" and .ktls_tx == true and .ktls_rx == true'
	for k in TlsTxSw TlsRxSw; do
		d=$(delta "$before" "$after" $k)
		check "$label: $k rose by >= 1 (got +$d)" [ "$d" -ge 1 ]
	done
}

# close_case NAME RESULT DETAIL-REGEX CLIENT-ARGS...: one connection, then the
# close line must carry RESULT and a detail matching DETAIL-REGEX ("" = none)
close_case() {
	local name=$1 result=$2 detail=$3 n0
	shift 3
	echo "== close: $name"
	n0=$(nclose)
	run_client out "$@" --timeout 120
	wait_closes $((n0 + 1)) 30
	last_close
	sluice_alive "$name"
	if [ -z "$detail" ]; then
		jcheck "$name: close line result $result" "$CL" ".result == \"$result\" and .datapath == \"ktls\" and (.detail == null)"
	else
		jcheck "$name: close line result $result, detail /$detail/" "$CL" \
			".result == \"$result\" and .datapath == \"ktls\" and (.detail // \"\" | test(\"$detail\"))"
	fi
}

closes_all() {
	local v ver
	for v in 1.2 1.3; do
		ver=TLSv$v
		close_case "$ver close_notify" ok "" $ALICE --tls-version $v --send 1M --half-close
		jcheck "$ver close_notify: client byte-exact, got close_notify" "$out" \
			'.error == null and .recv == 1048576 and .recv_sha256 == .sent_sha256 and .close_notify == true'
		jcheck "$ver close_notify: bytes counted" "$CL" '.bytes_in == 1048576 and .bytes_out == 1048576'

		close_case "$ver tcp close without close_notify" ok "eof without close_notify" \
			$ALICE --tls-version $v --send 1M --abort
		jcheck "$ver abort: client byte-exact" "$out" '.error == null and .recv == 1048576 and .recv_sha256 == .sent_sha256'
		jcheck "$ver abort: bytes counted" "$CL" '.bytes_in == 1048576 and .bytes_out == 1048576'

		close_case "$ver warning alert 1:90" tls_alert "^client alert 90 \\\\(user.canceled\\\\)" \
			$ALICE --tls-version $v --send 64K --ktls-alert 1:90
		jcheck "$ver alert 1:90: client sent it, sluice closed, prefix ok" "$out" \
			'.error == null and .alert_sent == "1:90" and .recv_prefix_ok == true'

		close_case "$ver fatal alert 2:80" tls_alert "^client alert 80 \\\\(internal.error\\\\)" \
			$ALICE --tls-version $v --send 64K --ktls-alert 2:80
		jcheck "$ver alert 2:80: client sent it, sluice closed, prefix ok" "$out" \
			'.error == null and .alert_sent == "2:80" and .recv_prefix_ok == true'
	done

	local rekey=0 t
	tls_counter TlsRxRekeyOk >/dev/null && rekey=1
	echo "   kernel rekey support (TlsRxRekeyOk in tls_stat): $rekey"
	if [ $rekey = 0 ]; then
		for t in requested not-requested; do
			for s in TLS_AES_128_GCM_SHA256 TLS_CHACHA20_POLY1305_SHA256; do
				close_case "TLSv1.3 $s KeyUpdate $t" ktls_keyupdate_unsupported "KeyUpdate" \
					$ALICE --tls-version 1.3 --cipher $s --send 4M --half-close \
					--key-update-at 1M --key-update $t --allow-early-close
				jcheck "KeyUpdate $t $s: client clean close, received bytes an exact prefix" "$out" \
					".error == null and .key_update == \"$t\" and .close_notify == true and .recv_prefix_ok == true and .mismatch_at == null and .recv <= .sent"
				check "KeyUpdate $t $s: client exit 0" [ "$crc" = 0 ]
			done
		done
	else
		rekey_all
	fi
}

# rekey_case NAME RX TX CLIENT-ARGS...: a KeyUpdate case on a kernel that
# rekeys; the close line is checked by the caller, the kernel's counters
# here: RX receive rekeys and TX send rekeys, no rekey errors.
rekey_case() {
	local name=$1 rx=$2 tx=$3 before after
	shift 3
	before=$(tls_stat)
	close_case "$name" ok "" "$@"
	after=$(tls_stat)
	echo "   tls_stat after: $after"
	check "$name: TlsRxRekeyReceived +$rx (got +$(delta "$before" "$after" TlsRxRekeyReceived))" \
		[ "$(delta "$before" "$after" TlsRxRekeyReceived)" = "$rx" ]
	check "$name: TlsRxRekeyOk +$rx (got +$(delta "$before" "$after" TlsRxRekeyOk))" \
		[ "$(delta "$before" "$after" TlsRxRekeyOk)" = "$rx" ]
	check "$name: TlsTxRekeyOk +$tx (got +$(delta "$before" "$after" TlsTxRekeyOk))" \
		[ "$(delta "$before" "$after" TlsTxRekeyOk)" = "$tx" ]
	check "$name: no receive rekey errors" [ "$(delta "$before" "$after" TlsRxRekeyError)" = 0 ]
	check "$name: no send rekey errors" [ "$(delta "$before" "$after" TlsTxRekeyError)" = 0 ]
}

# Kernel >= 6.14: sluice follows the client's KeyUpdates in the kernel (the
# next receive key, and for update_requested its own KeyUpdate and the next
# send key). The client is OpenSSL in userspace, so it checks every record
# of ours under the key it expects.
rekey_all() {
	local t s tx
	for t in requested not-requested; do
		for s in TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256; do
			tx=0; [ $t = requested ] && tx=3
			rekey_case "TLSv1.3 $s 3 KeyUpdates $t" 3 $tx \
				$ALICE --tls-version 1.3 --cipher $s --send 4M --half-close \
				--key-update-at 1M --key-updates 3 --key-update $t
			jcheck "3 KeyUpdates $t $s: full echo across the rekeys" "$out" \
				'.error == null and .key_updates == 3 and .recv == 4194304 and .recv_sha256 == .sent_sha256'
			jcheck "3 KeyUpdates $t $s: close line key_updates 3, bytes counted" "$CL" \
				'.key_updates == 3 and .bytes_in == 4194304 and .bytes_out == 4194304 and .ktls_tx and .ktls_rx'
		done
	done
	# The limit: 32 in a row with no data between are followed...
	rekey_case "TLSv1.3 32 KeyUpdates requested in a row" 32 32 \
		$ALICE --tls-version 1.3 --send 1M --half-close --key-update-at 0 --key-updates 32
	jcheck "32 KeyUpdates in a row: full echo" "$out" \
		'.error == null and .key_updates == 32 and .recv == 1048576 and .recv_sha256 == .sent_sha256'
	jcheck "32 KeyUpdates in a row: close line key_updates 32" "$CL" '.key_updates == 32'
	# ...the 33rd is refused with an alert, as BoringSSL does.
	close_case "TLSv1.3 33 KeyUpdates in a row" tls_error "more than 32 KeyUpdates without application data" \
		$ALICE --tls-version 1.3 --send 1M --half-close --key-update-at 0 --key-updates 33 \
		--key-update not-requested --allow-early-close
	jcheck "33 KeyUpdates in a row: refused after 32 followed" "$CL" '.key_updates == 32 and .bytes_in == 0'
	jcheck "33 KeyUpdates in a row: the client saw the alert or the close" "$out" \
		'.error != null or .alert != null or .eof == true'
	# Malformed KeyUpdates, sent as raw records through the client's own
	# kTLS TX (OpenSSL would never send them): refused with the alert the
	# RFC names, before any key changes.
	close_case "TLSv1.3 KeyUpdate request_update 2" tls_error "malformed KeyUpdate \\\\(5 bytes, request_update 2\\\\)" \
		$ALICE --tls-version 1.3 --send 64K --ktls-record 22:1800000102
	jcheck "KeyUpdate request_update 2: the client got alert illegal_parameter" "$out" \
		'.record_sent == "22:1800000102" and .alert == "illegal parameter" and .recv_prefix_ok == true'
	jcheck "KeyUpdate request_update 2: no key taken" "$CL" '.key_updates == 0'
	close_case "TLSv1.3 KeyUpdate of 6 bytes" tls_error "malformed KeyUpdate \\\\(6 bytes" \
		$ALICE --tls-version 1.3 --send 64K --ktls-record 22:180000020000
	jcheck "KeyUpdate of 6 bytes: the client got alert decode_error" "$out" \
		'.record_sent == "22:180000020000" and .alert == "decode error" and .recv_prefix_ok == true'
	# A resumed session's secrets come from the ticket's PSK, not from a
	# full handshake: it rekeys the same way.
	local n0
	n0=$(nclose)
	run_client out $ALICE --tls-version 1.3 --send 64K --half-close --session-out /tmp/rekey.sess
	wait_closes $((n0 + 1)) 30
	rekey_case "TLSv1.3 resumed session, KeyUpdate requested" 1 1 \
		$ALICE --tls-version 1.3 --send 2M --half-close --session-in /tmp/rekey.sess \
		--key-update-at 1M --key-update requested
	jcheck "resumed KeyUpdate: resumed, full echo" "$out" \
		'.error == null and .resumed == true and .recv == 2097152 and .recv_sha256 == .sent_sha256'
	jcheck "resumed KeyUpdate: close line resumed, key_updates 1" "$CL" '.resumed and .key_updates == 1'
}

parallel_all() {
	local n0 before during after d k peak=0 mpid
	echo "== parallel: $PAR connections x $PAR_SEND each way"
	n0=$(nclose)
	before=$(tls_stat)
	# The peak of live kTLS sockets while the clients run, sampled.
	rm -f /tmp/peak
	( p=0; while :; do c=$(tls_counter TlsCurrRxSw); [ "${c:-0}" -gt $p ] && p=$c && echo $p >/tmp/peak; sleep 0.2; done ) &
	mpid=$!
	run_client out $ALICE --tls-version 1.3 --count "$PAR" --parallel "$PAR" --send "$PAR_SEND" --half-close \
		--hold 2 --seed 77 --timeout 400
	kill $mpid; wait $mpid 2>/dev/null
	wait_closes $((n0 + PAR)) 60
	after=$(tls_stat)
	sluice_alive "parallel"
	peak=$(cat /tmp/peak 2>/dev/null || echo 0)
	echo "   tls_stat before: $before"
	echo "   tls_stat after:  $after   (peak TlsCurrRxSw $peak)"
	jcheck "parallel: all $PAR byte-exact" "$out" \
		".ok == $PAR and .failed == 0 and .sent == .recv and .recv == $PAR * $(bytes "$PAR_SEND")"
	local lines good
	lines=$(closes | tail -n +$((n0 + 1)))
	good=$(printf '%s\n' "$lines" | "$JQ" -c "select(.result == \"ok\" and .datapath == \"ktls\" and .ktls_tx and .ktls_rx and .bytes_in == $(bytes "$PAR_SEND") and .bytes_out == $(bytes "$PAR_SEND"))" | wc -l)
	check "parallel: $PAR close lines ok/ktls/exact bytes (got $good)" [ "$good" -eq "$PAR" ]
	[ "$good" -eq "$PAR" ] || printf '%s\n' "$lines" | "$JQ" -c 'select(.result != "ok" or .datapath != "ktls")' | head -5
	check "parallel: connections overlapped (peak TlsCurrRxSw $peak > 1)" [ "$peak" -gt 1 ]
	for k in TlsTxSw TlsRxSw; do
		d=$(delta "$before" "$after" $k)
		check "parallel: $k rose by >= $PAR (got +$d)" [ "$d" -ge "$PAR" ]
	done
	for k in TlsCurrTxSw TlsCurrRxSw; do
		d=$(delta "$before" "$after" $k)
		check "parallel: $k back to start (got $d)" [ "$d" -eq 0 ]
	done
}

# ---------------------------------------------------------------------------
T0=$(now_ms)
elapsed() { echo "   [$(( ($(now_ms) - T0) / 1000 )) s] $*"; }
echo "ktls suite: BULK=$BULK OFF_BULK=$OFF_BULK PAR=$PAR PAR_SEND=$PAR_SEND CASES=\"$CASES\""
echo "tls_stat at start: $(tls_stat)"
check "tls ULP available" grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp
echo_start || { fail "echo upstream" "did not listen"; summary; exit 1; }

for group in $CASES; do
	case $group in
	bulk|closes|parallel|resume)
		if sluice_start auto "auto-$group"; then
			pass "sluice starts with tls.ktls: auto ($group)"
			case $group in
			bulk) bulk_all auto "$BULK" ;;
			resume) resume_one TLSv1.3 TLS_AES_128_GCM_SHA256
			        resume_one TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256 ;;
			closes) closes_all ;;
			parallel) parallel_all ;;
			esac
			check "sluice ($group) exits 0 on SIGTERM" sluice_stop
		else
			fail "sluice starts with tls.ktls: auto ($group)" "see its log above"
		fi
		;;
	off)
		if sluice_start off; then
			pass "sluice starts with tls.ktls: off"
			bulk_all off "$OFF_BULK"
			check "sluice (off) exits 0 on SIGTERM" sluice_stop
		else
			fail "sluice starts with tls.ktls: off" "see its log above"
		fi
		;;
	require)
		if sluice_start require; then
			pass "sluice starts with tls.ktls: require (tls module loaded)"
			bulk_one require TLSv1.3 TLS_AES_128_GCM_SHA256 1M 99
			check "sluice (require) exits 0 on SIGTERM" sluice_stop
		else
			fail "sluice starts with tls.ktls: require (tls module loaded)" "see its log above"
		fi
		;;
	*) fail "case group $group" "unknown (bulk closes parallel off require resume)" ;;
	esac
	elapsed "$group done"
done

kill "$EPID" 2>/dev/null; wait "$EPID" 2>/dev/null
echo "tls_stat at end: $(tls_stat)"
summary
