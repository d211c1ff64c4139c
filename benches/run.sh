#!/usr/bin/env bash
# Run the benchmark suite and write the report.
#
#   benches/run.sh --quick   CI smoke: small sizes, short criterion times
#                            (under a minute of benches once built); writes
#                            the report to
#                            $CARGO_TARGET_DIR/hmm-bench/quick/BENCHMARKS.md
#   benches/run.sh           full sizes (1 GiB walks, userfaultfd up to
#                            1 GiB); writes BENCHMARKS.md at the repository
#                            root
#
# After the benches it runs the simulator demo (hmm-sim) and records its
# time.
#
#   benches/run.sh --kernel  also run the kernel harness (the Rust module
#                            and lib/test_hmm.c side by side in a QEMU VM,
#                            backend-kernel/README.md) after the demo, and
#                            put its timing, paired timing and fault count
#                            into section 6 and the headlines. Or name an
#                            earlier harness output: HMM_KERNEL_REPORT=file.
#
# Arguments after the mode go to criterion (e.g. a filter:
# `benches/run.sh --quick 'walk/sim'`). Every bench binary is built once
# before any runs, so all of them measure the same sources. Nothing here
# asserts a timing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

mode=full
kernel=0
while [[ "${1:-}" == --quick || "${1:-}" == --kernel ]]; do
    case "$1" in
    --quick) mode=quick ;;
    --kernel) kernel=1 ;;
    esac
    shift
done

target="${CARGO_TARGET_DIR:-$root/target}"
out_dir="$target/hmm-bench/$mode"
rm -rf "$out_dir"
mkdir -p "$out_dir"
export CRITERION_HOME="$out_dir/criterion"
export HMM_BENCH_EXTRA="$out_dir/extra.tsv"

crit_args=()
if [[ $mode == quick ]]; then
    export HMM_BENCH_QUICK=1
    crit_args=(--warm-up-time 0.1 --measurement-time 0.3 --sample-size 10)
    report="$out_dir/BENCHMARKS.md"
else
    unset HMM_BENCH_QUICK
    report="$root/BENCHMARKS.md"
fi

# Build everything (benches and the report writer, same profile) once.
cargo bench -p hmm-benches --no-run --message-format=json-render-diagnostics \
    > "$out_dir/build.json"
cargo build --profile bench -p hmm-benches --bin hmm-bench-report \
    --message-format=json-render-diagnostics >> "$out_dir/build.json"
cargo build --profile bench -p hmm-sim --bin hmm-sim \
    --message-format=json-render-diagnostics >> "$out_dir/build.json"
exe_of() { # kind name
    grep "\"kind\":\[\"$1\"\]" "$out_dir/build.json" | grep "\"name\":\"$2\"" |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1
}

commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "$root" diff --quiet HEAD -- benches hmm-core backend-sim backend-hypervisor 2>/dev/null; then
    commit="$commit + uncommitted changes"
fi

printf 'loadavg/start\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >> "$HMM_BENCH_EXTRA"
start=$(date +%s)
for b in walk fault uffd contended guest; do
    exe="$(exe_of bench "$b")"
    [[ -x "$exe" ]] || { echo "bench $b was not built" >&2; exit 1; }
    echo "== bench $b ($mode)"
    "$exe" --bench "${crit_args[@]}" "$@"
done
echo "== benches ran in $(( $(date +%s) - start )) s"

# The demo (`cargo run --release -p hmm-sim`), timed the
# same way: its own mirroring-phase figures, the wall time of the process
# and the load when it started. The quick mode mirrors 64 MiB, the full
# mode the demo's default 1 GiB.
demo_args=()
[[ $mode == quick ]] && demo_args=(--size 64M)
echo "== demo hmm-sim ${demo_args[*]}"
printf 'demo/loadavg\t%s\n' "$(cut -d' ' -f1 /proc/loadavg)" >> "$HMM_BENCH_EXTRA"
t0=$(date +%s.%N)
"$(exe_of bin hmm-sim)" "${demo_args[@]}" > "$out_dir/demo.txt"
t1=$(date +%s.%N)
cat "$out_dir/demo.txt"
awk -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" '
    $1 == "pages" { printf "demo/pages\t%s\n", $2 }
    $1 == "elapsed" { printf "demo/elapsed_s\t%s\n", $2 }
    $1 == "throughput" { printf "demo/pages_per_s\t%s\n", $2 }
    $1 == "coherence" { printf "demo/coherent\t%d\n", ($2 == "OK") }
    $1 == "data" { printf "demo/data_ok\t%d\n", ($2 == "OK") }
    END { printf "demo/wall_s\t%s\n", wall }
' "$out_dir/demo.txt" >> "$HMM_BENCH_EXTRA"

# The kernel harness last: it takes the machine's two CPUs for its VM.
if [[ $kernel == 1 ]]; then
    echo "== kernel harness"
    cargo run -q -p backend-kernel --bin kernel-harness | tee "$out_dir/kernel-harness.txt"
    export HMM_KERNEL_REPORT="$out_dir/kernel-harness.txt"
fi

cmd="benches/run.sh"
[[ $mode == quick ]] && cmd="$cmd --quick"
[[ -n "${HMM_KERNEL_REPORT:-}" ]] && cmd="$cmd --kernel"
HMM_BENCH_NOTES="$here/analysis.md" \
    "$(exe_of bin hmm-bench-report)" "$CRITERION_HOME" "$HMM_BENCH_EXTRA" "$report" \
    "$mode" "$commit" "$cmd"
echo "== report: $report"
