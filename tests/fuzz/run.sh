#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Builds every libFuzzer target (clang, ASan+UBSan, -fno-sanitize-recover)
# into $BUILD/fuzz/, replays every file in tests/fuzz/regressions/ against its
# target, then fuzzes each target for SECONDS (default 60) starting from its
# seed corpus.  Exits non-zero on any finding (crash, sanitizer report, leak,
# timeout, OOM, broken invariant) and prints the reproducer path.
#
# The committed seeds (tests/fuzz/corpus/<target>/) are never written: they
# are copied into $BUILD/fuzz/work/<target>/corpus, which keeps what earlier
# runs found (FUZZ_FRESH=1 starts from the seeds only).  Reproducers land in
# $BUILD/fuzz/artifacts/.  A finding becomes a regression test by copying its
# reproducer to tests/fuzz/regressions/<target>-<short>.bin.
#
# Environment: CLANG (default clang), BUILD (default build), FUZZ_FRESH,
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2 -workers=2").
set -uo pipefail

cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET=${1:-60}
shift || true
CLANG=${CLANG:-clang}
BUILD=${BUILD:-build}
OUT=$BUILD/fuzz
ALL_TARGETS=(fuzz_config fuzz_addr fuzz_identity)
TARGETS=("${ALL_TARGETS[@]}")
[ $# -gt 0 ] && TARGETS=("$@")

case $SECONDS_PER_TARGET in
''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

CFLAGS=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
        -fno-sanitize-recover=all -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror
        -Iinclude -Isrc)

# Per target: sources, extra link flags, -max_len, dictionary.
srcs_fuzz_config="src/config.c src/addr.c"
libs_fuzz_config="-Wl,--wrap=open -lcyaml -lyaml -lssl -lcrypto"
maxlen_fuzz_config=8192
dict_fuzz_config=tests/fuzz/fuzz_config.dict

srcs_fuzz_addr="src/config.c src/addr.c"
libs_fuzz_addr="-lcyaml -lyaml -lssl -lcrypto"
maxlen_fuzz_addr=128
dict_fuzz_addr=tests/fuzz/fuzz_addr.dict

srcs_fuzz_identity="src/identity.c src/addr.c"
libs_fuzz_identity="-lssl -lcrypto"
maxlen_fuzz_identity=4096
dict_fuzz_identity=

# halt_on_error: the first report is the finding; abort_on_error off so
# libFuzzer (not a core dump) writes the reproducer.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export SLUICE_FUZZ_CERTS=${SLUICE_FUZZ_CERTS:-$PWD/certs}

mkdir -p "$OUT/artifacts" "$OUT/work"

build() {
	local t=$1 srcs libs
	srcs=srcs_$t libs=libs_$t
	if [ ! -f "tests/fuzz/$t.c" ]; then
		echo "fuzz: unknown target $t" >&2
		return 1
	fi
	# shellcheck disable=SC2086
	if ! "$CLANG" "${CFLAGS[@]}" -o "$OUT/$t" "tests/fuzz/$t.c" ${!srcs} ${!libs}; then
		echo "fuzz: building $t failed (needs clang and libFuzzer: make deps installs libclang-rt-14-dev)" >&2
		return 1
	fi
}

fail=0
declare -A summary

for t in "${TARGETS[@]}"; do
	echo "== fuzz: building $t"
	build "$t" || exit 1
done

# 1. Regressions: every saved reproducer must now run clean.
shopt -s nullglob
for f in tests/fuzz/regressions/*.bin; do
	t=$(basename "$f")
	t=${t%%-*}
	case " ${ALL_TARGETS[*]} " in
	*" $t "*) ;;
	*) echo "fuzz: $f: no target named $t (name it <target>-<short>.bin)" >&2; fail=1; continue ;;
	esac
	case " ${TARGETS[*]} " in
	*" $t "*) ;;
	*) continue ;;   # its target is not part of this run
	esac
	if "$OUT/$t" -runs=1 "$f" >"$OUT/work/replay.log" 2>&1; then
		echo "== fuzz: regression $f ok"
	else
		echo "== fuzz: REGRESSION $f fails again:" >&2
		grep -E "ERROR|invariant|runtime error|SUMMARY" "$OUT/work/replay.log" | head -5 >&2
		echo "   reproduce: $OUT/$t $f" >&2
		fail=1
	fi
done

# 2. Fuzzing, one target after another (SECONDS each).
for t in "${TARGETS[@]}"; do
	maxlen=maxlen_$t dict=dict_$t
	work=$OUT/work/$t
	log=$OUT/work/$t.log
	args=(-max_total_time="$SECONDS_PER_TARGET" -max_len="${!maxlen}" -timeout=10
	      -rss_limit_mb=2048 -print_final_stats=1
	      -artifact_prefix="$OUT/artifacts/$t-")
	[ -n "${!dict}" ] && args+=(-dict="${!dict}")

	[ "${FUZZ_FRESH:-0}" = 1 ] && rm -rf "$work"
	mkdir -p "$work/corpus"
	cp -n tests/fuzz/corpus/"$t"/* "$work/corpus/" 2>/dev/null
	touch "$work/start"

	echo "== fuzz: $t for ${SECONDS_PER_TARGET}s (corpus $(ls "$work/corpus" | wc -l) files)"
	# shellcheck disable=SC2086
	"$OUT/$t" "${args[@]}" ${FUZZ_ARGS:-} "$work/corpus" >"$log" 2>&1
	rc=$?

	stats=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov:' | tail -1 | sed -E 's/ +/ /g')
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
	summary[$t]="execs=${execs:-?} exec/s=${speed:-?} peak_rss=${rss:-?}MB last: ${stats:-?}"

	new=$(find "$OUT/artifacts" -name "$t-*" -newer "$work/start" 2>/dev/null)
	if [ $rc -ne 0 ] || [ -n "$new" ]; then
		fail=1
		echo "== fuzz: $t FOUND SOMETHING (exit $rc); log: $log" >&2
		grep -E "ERROR: |invariant failed|runtime error|SUMMARY|Test unit written|deadly signal|timeout" "$log" | head -8 >&2
		for a in $new; do
			echo "   reproducer: $a" >&2
			echo "   replay:     $OUT/$t $a" >&2
			echo "   keep it:    cp $a tests/fuzz/regressions/$t-<short>.bin" >&2
		done
	fi
done

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target)"
for t in "${TARGETS[@]}"; do
	echo "   $t: ${summary[$t]:-not run}"
done
if [ $fail -ne 0 ]; then
	echo "fuzz: FAILED" >&2
	exit 1
fi
echo "fuzz: all targets clean"
