# tests/vm/smoke.sh — guest script proving the VM harness: kTLS engages.
#   tests/vm/run.sh tests/vm/smoke.sh CERTDIR     (CERTDIR has cert.pem, key.pem)
# Runs in the guest under busybox sh. openssl s_server and s_client talk
# TLS 1.2 over lo with SSL_OP_ENABLE_KTLS on both ends; kTLS must engage on
# both directions of both sockets, for AES-128-GCM and ChaCha20-Poly1305.
. /guest-lib.sh

CERTS=${1:?usage: smoke.sh CERTDIR}
PORT=4433

check tls_ulp_available grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp
check tls_stat_readable [ -n "$(tls_counter TlsTxSw)" ]

# OpenSSL 3.0's s_server/s_client have no -ktls flag; "Options = KTLS" in the
# system_default section sets SSL_OP_ENABLE_KTLS on every SSL_CTX.
cat >/tmp/ktls.cnf <<'EOF'
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = sysdef
[sysdef]
Options = KTLS
EOF
export OPENSSL_CONF=/tmp/ktls.cnf

# delta BEFORE AFTER NAME: how much counter NAME grew between two tls_stat lines
delta() {
	local b a
	b=$(echo "$1" | tr ' ' '\n' | sed -n "s/^$3=//p")
	a=$(echo "$2" | tr ' ' '\n' | sed -n "s/^$3=//p")
	echo $(( ${a:-0} - ${b:-0} ))
}

# session LABEL CIPHER: one s_server/s_client exchange, both ends with kTLS.
# stdin of each end is a fifo we hold open, so nothing is sent (and neither
# end sees EOF) until the log says the previous step happened: no sleeps.
session() {
	local label=$1 cipher=$2 before during after spid cpid d
	echo "== $label: TLS 1.2 $cipher"
	rm -f /tmp/s.in /tmp/c.in /tmp/s.log /tmp/c.log
	mkfifo /tmp/s.in /tmp/c.in
	before=$(tls_stat); echo "tls_stat before: $before"

	timeout 60 openssl s_server -accept $PORT -naccept 1 -cert "$CERTS/cert.pem" -key "$CERTS/key.pem" \
		-tls1_2 -cipher "$cipher" </tmp/s.in >/tmp/s.log 2>&1 &
	spid=$!
	exec 3>/tmp/s.in
	waitport $PORT || { fail "$label" "s_server did not listen"; cat /tmp/s.log; exec 3>&-; return; }

	timeout 60 openssl s_client -connect 127.0.0.1:$PORT -tls1_2 -cipher "$cipher" \
		</tmp/c.in >/tmp/c.log 2>&1 &
	cpid=$!
	exec 4>/tmp/c.in

	# s_client prints the session summary once the handshake is done.
	check "$label client handshake" waitfor /tmp/c.log '^ *Cipher *: '
	echo client-says-hi >&4
	check "$label server got data" waitfor /tmp/s.log '^client-says-hi$'
	echo server-says-hi >&3
	check "$label client got data" waitfor /tmp/c.log '^server-says-hi$'
	during=$(tls_stat); echo "tls_stat during: $during"

	# EOF on the client's stdin closes the connection; -naccept 1 ends the server.
	exec 4>&- 3>&-
	wait $cpid $spid
	after=$(tls_stat); echo "tls_stat after:  $after"

	check "$label cipher negotiated" grep -q "Cipher is $cipher" /tmp/c.log
	for side in s c; do
		for dir in sending receiving; do
			check "$label $side-side kTLS $dir" grep -q "Using Kernel TLS for $dir" /tmp/$side.log
		done
	done
	# One TX and one RX setup per end: +2 each; both sockets live during.
	for k in TlsTxSw TlsRxSw; do
		d=$(delta "$before" "$after" $k)
		check "$label $k rose by 2 (got $d)" [ "$d" -eq 2 ]
	done
	for k in TlsCurrTxSw TlsCurrRxSw; do
		d=$(delta "$before" "$during" $k)
		check "$label $k was +2 while open (got $d)" [ "$d" -eq 2 ]
		d=$(delta "$before" "$after" $k)
		check "$label $k back after close (got $d)" [ "$d" -eq 0 ]
	done
}

session aes128gcm ECDHE-ECDSA-AES128-GCM-SHA256
session chacha20 ECDHE-ECDSA-CHACHA20-POLY1305

summary
