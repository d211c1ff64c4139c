#!/usr/bin/env bash
# Turn a serial log containing kselftest (TAP) output into a per-test table
# and a final line "N passed, M failed, K skipped".
#
# usage: parse-kselftest.sh [--strict] LOGFILE
#
# The table goes to stdout: RESULT<TAB>TEST<TAB>DETAIL, where RESULT is PASS,
# FAIL, SKIP, XFAIL or XPASS and DETAIL is the skip reason or the last
# assertion message printed before a failure. Several TAP streams in one log
# (several binaries) are summed.
# Exit status: 0 complete; 2 incomplete (no "@@HMM-HARNESS TEST-END" marker,
# no results, or fewer results than the TAP plans announced); with --strict,
# 1 if complete but some test failed.
set -euo pipefail

strict=0
if [ "${1:-}" = --strict ]; then strict=1; shift; fi
log="${1:?usage: parse-kselftest.sh [--strict] LOGFILE}"
[ -f "$log" ] || { echo "no such log: $log" >&2; exit 2; }

tr -d '\r' < "$log" | awk -v strict="$strict" '
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
/^1\.\.[0-9]+/ { split($0, a, /[. ]+/); plan += a[2]; next }
/^# .*\.c:[0-9]+:/ { lastmsg = trim(substr($0, 3)); next }
/^#  RUN / { lastmsg = ""; next }
/^(not )?ok [0-9]+ / {
    line = $0
    notok = (line ~ /^not ok/)
    sub(/^(not )?ok [0-9]+ /, "", line)
    name = line; dir = ""
    p = index(line, " #")
    if (p > 0) { name = substr(line, 1, p - 1); dir = trim(substr(line, p + 2)) }
    name = trim(name)
    if (notok)                    { res = "FAIL"; detail = lastmsg; nfail++ }
    else if (dir ~ /^SKIP/)       { res = "SKIP"; detail = trim(substr(dir, 5)); nskip++ }
    else if (dir ~ /^XFAIL/)      { res = "XFAIL"; detail = trim(substr(dir, 6)); npass++ }
    else if (dir ~ /^XPASS/)      { res = "XPASS"; detail = trim(substr(dir, 6)); nfail++ }
    else                          { res = "PASS"; detail = ""; npass++ }
    printf "%-5s\t%s\t%s\n", res, name, detail
    nres++
    lastmsg = ""
    next
}
/^@@HMM-HARNESS TEST-END/ { ended = 1 }
END {
    printf "%d passed, %d failed, %d skipped\n", npass, nfail, nskip
    if (!ended)         { print "INCOMPLETE: no @@HMM-HARNESS TEST-END marker (guest hung, crashed or timed out)" > "/dev/stderr"; exit 2 }
    if (nres == 0)      { print "INCOMPLETE: no test results in the log" > "/dev/stderr"; exit 2 }
    if (nres < plan)    { printf "INCOMPLETE: %d results but the TAP plan(s) announced %d\n", nres, plan > "/dev/stderr"; exit 2 }
    if (strict && nfail > 0) exit 1
    exit 0
}'
