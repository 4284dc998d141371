#!/usr/bin/env bash
# tests/bpf/counters.sh — the BPF connection counters against this kernel.
#
#   tests/bpf/counters.sh build/bpf/counters
#
# Runs as root in its own network and mount namespaces (a private bpffs at
# /sys/fs/bpf, so nothing of the host's pins is touched; cgroups are the
# host's, under the cgroup this script runs in):
#   1. counters_track_sockets   `counters run`: a few hundred upstream and
#      client connections opened and closed in random order (FIN, RST,
#      server-first, client-first, refused connects, max_conns, a child
#      killed with -9); at each checkpoint the maps equal what is held and
#      what ss sees, read both through mmap and through bpftool's dump.
#   2. operator_view_matches_ss   a holder with N connections: bpftool -j
#      map dump (parsed with jq) shows N active, as ss does.
#   3. kill9_counts_drain         kill -9 of the holder: the kernel counts
#      every close, the pinned maps fall back to 0 active on their own.
#   4. restart_after_kill9        a new loader on the same pin path removes
#      the dead one's pins and cgroup and starts from zero.
set -euo pipefail

BIN=$(readlink -f "${1:?usage: $0 PATH/TO/counters}")
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "${SLUICE_BPF_TEST_INNER:-}" != 1 ]; then
	[ "$(id -u)" = 0 ] || { echo "counters.sh: needs root (BPF, cgroups, namespaces)" >&2; exit 1; }
	for t in bpftool jq ss unshare; do
		command -v $t >/dev/null || { echo "counters.sh: $t not installed" >&2; exit 1; }
	done
	exec env SLUICE_BPF_TEST_INNER=1 unshare --mount --net --propagation private "$HERE/counters.sh" "$BIN"
fi

mount -t bpf bpf /sys/fs/bpf
# A parent cgroup of our own: a sluice starting elsewhere on this machine
# tidies up dead sluices' "sluice-<pid>" cgroups next to its own, and must
# not take the one check 3 expects to find.
CG2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
CGHOME=$CG2$(sed -n 's/^0:://p' /proc/self/cgroup)
CGHOME=${CGHOME%/}
CGTEST=$CGHOME/sluice-bpftest-$$
mkdir "$CGTEST"
echo $$ >"$CGTEST/cgroup.procs"
cg_cleanup() { echo $$ >"$CGHOME/cgroup.procs" 2>/dev/null; rmdir "$CGTEST"/sluice-* "$CGTEST" 2>/dev/null || true; }
trap cg_cleanup EXIT
ip link set lo up
PIN=/sys/fs/bpf/sluice-test
pass=0 fail=0
ok()  { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }

# active_sum MAP: sum over entries of opened - closed, from bpftool's JSON.
active_sum() {
	bpftool -j map dump pinned "$PIN/$1" | jq '[.[] | .formatted.value | .opened - .closed] | add'
}

# --- 1 --------------------------------------------------------------------
if "$BIN" run "$PIN"; then ok counters_track_sockets; else bad counters_track_sockets "see above"; fi

# --- 2 --------------------------------------------------------------------
N=40
out=$(mktemp)
"$BIN" hold "$PIN" $N >"$out" &
holder=$!
for _ in $(seq 100); do grep -q '^ready' "$out" && break; sleep 0.1; done
read -r _ hpid srvpid cg <"$out" || true
if [ "${hpid:-}" != "$holder" ]; then
	bad operator_view_matches_ss "holder did not start: $(cat "$out")"
	exit 1
fi
echo "holder $hpid in $cg"
bpftool map dump pinned "$PIN/upstream_conns"
ports=$(bpftool -j map dump pinned "$PIN/upstream_conns" | jq -r '.[].formatted.value.server.port')
ss_n=0
for p in $ports; do
	ss_n=$((ss_n + $(ss -Htn state established "dport = :$p" | wc -l)))
done
up=$(active_sum upstream_conns); cl=$(active_sum client_conns)
if [ "$up" = $N ] && [ "$ss_n" = $N ] && [ "$cl" = $N ]; then
	ok operator_view_matches_ss
else
	bad operator_view_matches_ss "bpftool upstream $up, ss $ss_n, bpftool clients $cl, want $N"
fi

# --- 3 --------------------------------------------------------------------
kill -9 "$hpid"
wait "$hpid" 2>/dev/null || true
for _ in $(seq 100); do
	up=$(active_sum upstream_conns); cl=$(active_sum client_conns)
	[ "$up" = 0 ] && [ "$cl" = 0 ] && break
	sleep 0.1
done
opened=$(bpftool -j map dump pinned "$PIN/upstream_conns" | jq '[.[].formatted.value.opened] | add')
if [ "$up" = 0 ] && [ "$cl" = 0 ] && [ "$opened" -ge $N ] && [ -d "$cg" ]; then
	ok kill9_counts_drain
else
	bad kill9_counts_drain "after kill -9: upstream active $up, client active $cl, opened $opened, cgroup $cg kept: $([ -d "$cg" ] && echo yes || echo no)"
fi
bpftool -j map dump pinned "$PIN/upstream_conns" | jq -c '.[].formatted.value'
kill -9 "$srvpid" 2>/dev/null || true

# --- 4 --------------------------------------------------------------------
if "$BIN" restart "$PIN" && [ ! -d "$cg" ]; then
	ok restart_after_kill9
else
	bad restart_after_kill9 "restart failed or the dead holder's cgroup $cg is still there"
fi
rm -f "$out"

echo "counters.sh: $pass passed, $fail failed"
[ "$fail" = 0 ]
