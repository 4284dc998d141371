#!/usr/bin/env bash
# tests/vm/run.sh — run a guest script inside a small VM whose kernel has kTLS.
#
#   tests/vm/run.sh GUEST_SCRIPT [FILES...]
#
# The host kernel is built without CONFIG_TLS, so anything that must see kTLS
# engage runs here: Debian's linux-image-*-cloud-amd64 (6.1, tls.ko) booted
# under qemu TCG (/dev/kvm on these machines cannot run a stock kernel) with a
# busybox-static initramfs built on every run.
#
# What the guest gets:
#   /test.sh          GUEST_SCRIPT, run by busybox sh (no bash in the guest)
#                     as `/test.sh FILES...`, with each FILE as its absolute
#                     host path, from cwd /tmp, under a timeout. /tmp is a
#                     tmpfs that still holds FILES from the host's /tmp.
#   /guest-lib.sh     helpers for guest scripts (waitport, tls_stat, check…)
#   FILES             each copied to the SAME absolute path as on the host
#                     (symlinks resolved), so configs that name cert or key
#                     paths work unchanged; directories are copied
#                     recursively. Executable files are also linked into
#                     /usr/bin by basename. Every executable among FILES (also
#                     inside directories) gets its shared libraries (ldd),
#                     including the loader, at the paths ldd names.
#   /usr/bin/openssl  always, with libssl/libcrypto; busybox provides the rest
#                     (sh, sha256sum, timeout, ip, nc, ...).
#   modules           $VM_MODULES plus their `depends`, insmod-ed in
#                     dependency order by /init (no modprobe, no modules.dep).
#
# Output: the serial console streams to stdout and build/vm/console.log. The
# exit status is the guest script's, from the last `VMRESULT rc=N` line; 1 if
# the VM timed out or the marker is missing.
#
# Environment:
#   VM_TIMEOUT  host-side limit for boot+test in seconds (default 600); the
#               guest script gets VM_TIMEOUT-30 (half, below 60) and is killed
#               after that with rc 137, so its VMRESULT line still lands
#   VM_SUITE    Debian suite to take linux-image-cloud-amd64 from (default:
#               the host's own apt sources, i.e. bookworm's 6.1). Any other
#               suite, e.g. trixie-backports (7.x, which can rekey kTLS), is
#               fetched with apt's signature checks through a private
#               sources list and package lists under VM_DIR/apt-SUITE; the
#               host's apt configuration is not touched.
#   VM_KVER     kernel ABI to use, e.g. 6.1.0-56-cloud-amd64 (default: what
#               linux-image-cloud-amd64 depends on in VM_SUITE)
#   VM_MODULES  modules to load (default: the kTLS set for AES-GCM + ChaCha20);
#               a name ending in ? is skipped where the kernel has no such
#               module (the crypto modules were renamed and merged in 6.1x)
#   VM_MEM      guest memory in MiB (default 1024)
#   VM_DIR      cache and work directory (default build/vm); runs sharing
#               one VM_DIR are serialized by a lock
set -euo pipefail

usage() { echo "usage: $0 GUEST_SCRIPT [FILES...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac

GUEST_SCRIPT=$(readlink -f "$1"); shift
[ -f "$GUEST_SCRIPT" ] || { echo "vm: guest script $GUEST_SCRIPT not found" >&2; exit 2; }
FILES=()
for f in "$@"; do
	[ -e "$f" ] || { echo "vm: $f not found" >&2; exit 2; }
	FILES+=("$(readlink -f "$f")")
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VM_DIR=$(mkdir -p "${VM_DIR:-$ROOT/build/vm}" && cd "${VM_DIR:-$ROOT/build/vm}" && pwd)
VM_TIMEOUT=${VM_TIMEOUT:-600}
VM_MEM=${VM_MEM:-1024}
# gcm and chacha20poly1305 reach their parts through crypto templates
# (request_module), not symbols, so modinfo can't find them: they are named here.
# 6.1 has ghash-generic, chacha_generic and poly1305_generic; 7.x has
# ghash and poly1305 in the library (built in) and the cipher as chacha.
VM_MODULES=${VM_MODULES:-"gf128mul ghash-generic? ctr gcm libchacha chacha_generic? chacha? libpoly1305 poly1305_generic? chacha20poly1305 tls"}
VM_SUITE=${VM_SUITE:-}
case "$VM_TIMEOUT" in ''|*[!0-9]*) echo "vm: VM_TIMEOUT must be seconds" >&2; exit 2 ;; esac
GUEST_TIMEOUT=$((VM_TIMEOUT > 60 ? VM_TIMEOUT - 30 : VM_TIMEOUT / 2))

# One run at a time per VM_DIR: runs share the kernel cache, the initramfs
# staging tree and console.log. A second run waits here.
exec 9>"$VM_DIR/.lock"
flock 9

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

# --- packages -------------------------------------------------------------
# kmod is here for modinfo. Installed without recommends: qemu's pull in GUI
# and firmware we never use.
PKGS="qemu-system-x86 busybox-static cpio kmod"
apt_updated=0
apt_update() {
	[ $apt_updated = 1 ] && return 0
	apt-get update -qq
	apt_updated=1
}
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	[ "$(id -u)" = 0 ] || { echo "vm: need root to install:$missing" >&2; exit 1; }
	echo "vm: installing:$missing"
	apt_update
	# shellcheck disable=SC2086 # a list of names
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
MODINFO=$(command -v modinfo || echo /usr/sbin/modinfo)
BUSYBOX=/bin/busybox
# busybox-static and the dynamic busybox package both own /bin/busybox (they
# conflict); only the static one runs in an initramfs without a libc.
if ldd "$BUSYBOX" >/dev/null 2>&1; then echo "vm: $BUSYBOX is dynamic: install busybox-static" >&2; exit 1; fi

# --- kernel ---------------------------------------------------------------
# APT runs apt-get/apt-cache on the host's sources, or on VM_SUITE's own.
APT=()
if [ -n "$VM_SUITE" ]; then
	case "$VM_SUITE" in *[!a-z0-9-]*) echo "vm: VM_SUITE must be a Debian suite name" >&2; exit 2 ;; esac
	A=$VM_DIR/apt-$VM_SUITE
	mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
	echo "deb http://deb.debian.org/debian $VM_SUITE main" >"$A/sources.list"
	# Signatures are checked against the host's Debian archive keyring as
	# for any other apt source; only the lists and the cache are private.
	APT=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent
	     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
fi
suite_update() {
	if [ -n "$VM_SUITE" ]; then apt-get "${APT[@]}" update -qq; else apt_update; fi
}
kver_from_apt() {
	{ apt-cache "${APT[@]}" depends linux-image-cloud-amd64 2>/dev/null || true; } |
		sed -n 's/^ *Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -1
}
# Up to 6.x the kernel, its modules and its config are one package; 7.x
# splits them into linux-image (empty), -binary (vmlinuz), -modules and
# -base (config, modules.builtin): every dependency named after the ABI.
kernel_pkgs() {
	echo "linux-image-$KVER"
	{ apt-cache "${APT[@]}" depends "linux-image-$KVER" 2>/dev/null || true; } |
		sed -n "s/^ *Depends: \(linux-[a-z-]*-$KVER\)\$/\1/p" | sort -u
}
cached_debs() {
	local p f
	for p in $(kernel_pkgs); do
		f=$(compgen -G "$VM_DIR/${p}_*_amd64.deb" | tail -1 || true)
		[ -n "$f" ] || return 1
		echo "$f"
	done
}
apt_download() {
	# apt-get download writes into cwd; as root it warns that the _apt
	# sandbox user can't write there, which is harmless.
	# shellcheck disable=SC2046 # a list of package names
	(cd "$VM_DIR" && apt-get "${APT[@]}" download -q $(kernel_pkgs) 2>&1) | sed '/unsandboxed as root/d'
	cached_debs >/dev/null
}
KVER=${VM_KVER:-$(kver_from_apt)}
if [ -z "$KVER" ] && [ -z "$VM_SUITE" ]; then
	# A fresh container has no package lists: a cached kernel will do if
	# there is exactly one, else ask the mirror.
	cached=$(compgen -G "$VM_DIR/kernel/*/.complete" || true)
	if [ -n "$cached" ] && [ "$(wc -l <<<"$cached")" = 1 ]; then
		KVER=$(basename "$(dirname "$cached")")
	fi
fi
if [ -z "$KVER" ]; then
	suite_update
	KVER=$(kver_from_apt)
fi
[ -n "$KVER" ] || { echo "vm: cannot tell which linux-image-*-cloud-amd64 to use (set VM_KVER)" >&2; exit 1; }
KROOT=$VM_DIR/kernel/$KVER
if [ ! -f "$KROOT/.complete" ]; then
	if ! debs=$(cached_debs); then
		echo "vm: downloading $(kernel_pkgs | tr '\n' ' ')"
		if ! apt_download; then
			# Stale package lists name an ABI the mirror has since dropped.
			suite_update
			[ -n "${VM_KVER:-}" ] || KVER=$(kver_from_apt)
			KROOT=$VM_DIR/kernel/$KVER
			if [ ! -f "$KROOT/.complete" ] && ! apt_download; then
				echo "vm: cannot download linux-image-$KVER" >&2; exit 1
			fi
		fi
		debs=$(cached_debs || true)
	fi
fi
if [ ! -f "$KROOT/.complete" ]; then
	[ -n "$debs" ] || { echo "vm: download of linux-image-$KVER failed" >&2; exit 1; }
	rm -rf "$KROOT" "$KROOT.tmp"
	mkdir -p "$KROOT.tmp"
	for deb in $debs; do
		echo "vm: using $(basename "$deb") ($(stat -c %s "$deb") bytes)"
		dpkg-deb -x "$deb" "$KROOT.tmp"
	done
	touch "$KROOT.tmp/.complete"
	mv "$KROOT.tmp" "$KROOT"
	# Keep one kernel per suite: older .debs and trees are dead weight in
	# CI caches. A tree records its suite so that the other suite's stays.
	echo "${VM_SUITE:-host}" >"$KROOT/.suite"
	for old in "$VM_DIR"/kernel/*; do
		[ "$old" = "$KROOT" ] && continue
		[ "$(cat "$old/.suite" 2>/dev/null || echo host)" = "${VM_SUITE:-host}" ] || continue
		for deb in "$VM_DIR"/linux-*"-$(basename "$old")"_*.deb; do rm -f "$deb"; done
		rm -rf "$old"
	done
fi
# 6.x: boot/vmlinuz-KVER and lib/modules/KVER; 7.x: all under usr/lib/modules/KVER.
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
MODDIR=$KROOT/lib/modules/$KVER
[ -f "$VMLINUZ" ] || VMLINUZ=$KROOT/usr/lib/modules/$KVER/vmlinuz
[ -d "$MODDIR" ] || MODDIR=$KROOT/usr/lib/modules/$KVER
if [ ! -f "$VMLINUZ" ] || [ ! -d "$MODDIR/kernel" ]; then echo "vm: $KROOT lacks vmlinuz or modules" >&2; exit 1; fi

# --- initramfs --------------------------------------------------------------
R=$VM_DIR/initramfs
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,etc,usr/bin,usr/sbin,usr/lib,usr/lib64,lib/modules}
# Merged /usr like the host, so a library lands once whichever path names it.
rmdir "$R/lib/modules" "$R/lib"; mkdir -p "$R/usr/lib/modules"
ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
cp "$BUSYBOX" "$R/bin/busybox"
cp "$HERE/init" "$R/init"
cp "$HERE/guest-lib.sh" "$R/guest-lib.sh"
cp "$GUEST_SCRIPT" "$R/test.sh"
chmod 755 "$R/init" "$R/test.sh"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$R/etc/hosts"

# Modules: map name -> file (names compare with - and _ equal, as the kernel
# does), then a depth-first walk over `modinfo -F depends` gives load order.
declare -A MODPATH=()
while IFS= read -r ko; do
	n=${ko##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$ko
done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz')
declare -A MODSEEN=()
MODORDER=()
addmod() {
	local name=${1%\?} key dep
	key=${name//-/_}
	[ -z "${MODSEEN[$key]:-}" ] || return 0
	MODSEEN[$key]=1
	if [ -z "${MODPATH[$key]:-}" ]; then
		# Built in: nothing to load.
		awk -F/ -v k="$key" '{ n = $NF; sub(/\.ko.*/, "", n); gsub(/-/, "_", n) } n == k { f = 1 }
			END { exit !f }' "$MODDIR/modules.builtin" && return 0
		[ "$name" != "$1" ] && return 0   # optional: not in this kernel
		echo "vm: module $name not found in $KVER" >&2; exit 1
	fi
	for dep in $("$MODINFO" -F depends "${MODPATH[$key]}" | tr ',' ' '); do addmod "$dep"; done
	MODORDER+=("$key")
}
for m in $VM_MODULES; do addmod "$m"; done
: >"$R/lib/modules/load.list"
for key in "${MODORDER[@]}"; do
	src=${MODPATH[$key]}
	case "$src" in
	*.xz) xz -dc "$src" >"$R/lib/modules/$key.ko" ;;   # busybox insmod can't inflate
	*) cp "$src" "$R/lib/modules/$key.ko" ;;
	esac
	echo "$key" >>"$R/lib/modules/load.list"
done

# Files: same absolute path as on the host; executables also on PATH.
EXES=(/usr/bin/openssl)
cp /usr/bin/openssl "$R/usr/bin/openssl"
for f in "${FILES[@]}"; do
	mkdir -p "$R$(dirname "$f")"
	if [ -d "$f" ]; then
		cp -rL "$f" "$R$f"
		while IFS= read -r x; do EXES+=("$x"); done < <(find "$f" -type f -perm -u+x)
	else
		cp -L "$f" "$R$f"
		if [ -x "$f" ]; then
			EXES+=("$f")
			[ -e "$R/usr/bin/$(basename "$f")" ] || ln -s "$f" "$R/usr/bin/$(basename "$f")"
		fi
	fi
done
# Shared libraries: ldd lists the whole closure plus the loader. Scripts and
# static binaries make ldd fail; they need nothing.
for x in "${EXES[@]}"; do
	ldd "$x" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]+\//{print $1}' || true
done | sort -u | while IFS= read -r lib; do
	[ -e "$R$lib" ] && continue
	mkdir -p "$R$(dirname "$lib")"
	cp -L "$lib" "$R$lib"
done

# Settings for /init, as a sourced shell file (the guest has no environment
# from us otherwise; the kernel command line is too small and too visible).
{
	printf 'GUEST_TIMEOUT=%s\n' "$GUEST_TIMEOUT"
	printf 'set --'
	for f in "${FILES[@]}"; do printf " '%s'" "${f//\'/\'\\\'\'}"; done
	printf '\n'
} >"$R/etc/vm.conf"

INITRD=$VM_DIR/initramfs.cpio.gz
# gzip -1: ~3x faster than -6 for a few hundred KB more; the kernel inflates
# it in well under a second even under TCG.
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 -n) >"$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
t_built=$(now)
echo "vm: kernel $KVER, initramfs $(stat -c %s "$INITRD") bytes gz ($(du -sk "$R" | cut -f1) KiB unpacked), modules: ${MODORDER[*]}"
echo "vm: build took $(elapsed "$t_start" "$t_built") s; booting (timeout ${VM_TIMEOUT}s)"

# --- boot -------------------------------------------------------------------
LOG=$VM_DIR/console.log
# The console is streamed, not captured: a hung guest still shows how far it
# got. -nic none: no network is needed, and it skips iPXE's option ROM. sed -u strips CRs (and SeaBIOS's terminal escapes) without buffering.
set +e
timeout --foreground -k 5 "$VM_TIMEOUT" \
	qemu-system-x86_64 -accel tcg -m "$VM_MEM" -smp 2 -nographic -no-reboot -nic none \
	-kernel "$VMLINUZ" -initrd "$INITRD" \
	-append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 |
	sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' | tee "$LOG"
qemu_rc=${PIPESTATUS[0]}
set -e
t_done=$(now)
echo "vm: boot+test took $(elapsed "$t_built" "$t_done") s (total $(elapsed "$t_start" "$t_done") s); console in $LOG"

if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
	echo "vm: FAIL: timed out after ${VM_TIMEOUT}s (VM_TIMEOUT)" >&2
	exit 1
fi
rc=$(grep -ao 'VMRESULT rc=[0-9]*' "$LOG" | tail -1 | cut -d= -f2 || true)
if [ -z "$rc" ]; then
	echo "vm: FAIL: no 'VMRESULT rc=' marker in the console (qemu exit $qemu_rc): guest crashed or panicked" >&2
	exit 1
fi
[ "$rc" = 0 ] && echo "vm: guest script passed" || echo "vm: guest script failed, rc=$rc" >&2
exit "$rc"
