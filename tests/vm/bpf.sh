# tests/vm/bpf.sh — guest script: the BPF counters on Debian 12's kernel (6.1).
#   VM_MODULES="inet_diag tcp_diag" tests/vm/run.sh tests/vm/bpf.sh \
#       build/bpf/counters "$(command -v bpftool)" "$(command -v jq)" "$(command -v ss)"
# Runs in the guest under busybox sh: the object must pass 6.1's verifier,
# and `counters run` (random opens/closes, RST, max_conns, kill -9 of a
# child, bpftool's dump) must agree with ss at every checkpoint; then a
# holder is killed with -9 and a restart on the same pin path starts clean.
. /guest-lib.sh

BIN=${1:?usage: bpf.sh COUNTERS BPFTOOL JQ SS}
PIN=/sys/fs/bpf/sluice

mkdir -p /sys/fs/bpf /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "kernel $(uname -r)"

check counters_run "$BIN" run "$PIN"

"$BIN" hold "$PIN" 20 >/tmp/hold.out &
waitfor /tmp/hold.out '^ready' 60
read -r _ hpid srvpid cg </tmp/hold.out
active() {
	bpftool -j map dump pinned "$PIN/$1" | jq '[.[] | .formatted.value | .opened - .closed] | add'
}
check holder_counted [ "$(active upstream_conns)" = 20 ]
kill -9 "$hpid"
n=100
while [ "$n" -gt 0 ] && { [ "$(active upstream_conns)" != 0 ] || [ "$(active client_conns)" != 0 ]; }; do
	sleep 0.1; n=$((n - 1))
done
check kill9_drains_to_zero [ "$(active upstream_conns)" = 0 -a "$(active client_conns)" = 0 ]
bpftool map dump pinned "$PIN/upstream_conns"
kill -9 "$srvpid"
check restart_after_kill9 "$BIN" restart "$PIN"
check stale_cgroup_removed [ ! -d "$cg" ]
summary
