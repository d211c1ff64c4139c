#!/usr/bin/env bash
# Mutation testing of hmm-core's contract files (driver, walk, need, pfn,
# range, fault) with cargo-mutants; installs it if missing.
#
#   .ci/mutants.sh               the mutants in hmm-core code this change
#                                touches: `--in-diff` against the merge base
#                                with main (on main itself: the last commit)
#   MUTANTS_FULL=1 .ci/mutants.sh   every mutant of the six files
#   MUTANTS_BASE=<rev>           diff against <rev> instead
#
# The full run (about 340 mutants, roughly 15 min on 2 loaded cores) does
# not fit next to the kernel builds, so CI runs the diff. Equivalent mutants
# are excluded in .cargo/mutants.toml; the summary is verify/MUTANTS.md.
# Fails if any mutant survives. A mutant that makes the tests hang until
# the timeout counts as detected.
set -euo pipefail
cd "$(dirname "$0")/.."

files=()
for f in driver walk need pfn range fault; do
    files+=(-f "hmm-core/src/$f.rs")
done
args=(-p hmm-core "${files[@]}" -j1 --timeout 30 --no-shuffle)
out="$(mktemp -d)"
diff_file="$out/change.diff"

if [ "${MUTANTS_FULL:-0}" != 1 ]; then
    base="${MUTANTS_BASE:-}"
    if [ -z "$base" ]; then
        base="$(git merge-base HEAD main 2>/dev/null || git merge-base HEAD origin/main 2>/dev/null || true)"
        if [ -z "$base" ] || [ "$base" = "$(git rev-parse HEAD)" ]; then
            base="HEAD~1"
        fi
        if ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
            echo "mutants: no base commit to diff against (shallow clone?), nothing to test"
            exit 0
        fi
    fi
    git diff "$base" -- hmm-core/src >"$diff_file"
    if [ ! -s "$diff_file" ]; then
        echo "mutants: no hmm-core source change since $base, nothing to test"
        exit 0
    fi
    echo "mutants: hmm-core code changed since $(git rev-parse --short "$base")"
    args+=(--in-diff "$diff_file")
fi

# Installed only when there is something to test (it takes minutes to build).
if ! cargo mutants --version >/dev/null 2>&1; then
    cargo install -q cargo-mutants --locked
fi

rc=0
cargo mutants "${args[@]}" -o "$out" || rc=$?
# cargo-mutants exits 3 when some mutant timed out, even if others were
# missed too: a missed mutant fails the step whatever the exit status says.
if [ -s "$out/mutants.out/missed.txt" ] && [ "$rc" != 0 ] && [ "$rc" != 2 ]; then
    rc=2
fi
case "$rc" in
    0) echo "mutants: every mutant caught" ;;
    3) echo "mutants: every mutant caught (some by a timeout: the tests hung)" ;;
    *)
        echo "mutants: FAILED (cargo-mutants exit $rc); survivors:" >&2
        cat "$out/mutants.out/missed.txt" >&2 || true
        echo "kill them with a test, or add them with the reason they are equivalent to .cargo/mutants.toml and verify/MUTANTS.md" >&2
        exit 1
        ;;
esac
