#!/usr/bin/env bash
# Run every test against each build directory given (default: build): the cmocka unit
# tests, then the node integration and client tests against that build's binary.
# The last line is "N passed, N failed"; the exit status is non-zero if anything failed.
set -u
cd "$(dirname "$0")/.."
pass=0 fail=0
mkdir -p tests/artifacts
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=23}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

count() {   # count LOG — add a runner's totals from its closing lines
    local p f
    p=$(grep -aoE '^\[  PASSED  \] [0-9]+' "$1" | awk '{s+=$4} END {print s+0}')
    f=$(grep -aoE '^\[  FAILED  \] [0-9]+' "$1" | awk '{s+=$4} END {print s+0}')
    p=$((p + $(grep -aoE '^# pass [0-9]+' "$1" | awk '{s+=$3} END {print s+0}')))
    f=$((f + $(grep -aoE '^# fail [0-9]+' "$1" | awk '{s+=$3} END {print s+0}')))
    pass=$((pass + p)); fail=$((fail + f))
    echo "   $p passed, $f failed"
}

for b in "${@:-build}"; do
    export AGENTID_BIN=$PWD/$b/agentid
    echo "== $b"
    for t in "$b"/tests/test_*; do
        [ -x "$t" ] || continue
        log=tests/artifacts/$(basename "$b")-$(basename "$t").log
        echo "-- $t"
        "$t" >"$log" 2>&1; rc=$?
        count "$log"
        if [ $rc -ne 0 ]; then
            # A crash or sanitizer report after the runner's summary still fails.
            grep -qE '^\[  FAILED  \]' "$log" || fail=$((fail + 1))
            tail -n 40 "$log"
        fi
    done
    node_tests=$(ls tests/integration/*.test.mjs tests/clients/*.test.mjs 2>/dev/null)
    if [ -n "$node_tests" ]; then
        log=tests/artifacts/$(basename "$b")-node.log
        echo "-- node --test ($(echo "$node_tests" | wc -l) files)"
        # A test that hangs fails after 5 minutes instead of holding the run (and CI) forever.
        node --test --test-concurrency=2 --test-timeout=300000 --test-reporter=tap $node_tests >"$log" 2>&1; rc=$?
        count "$log"
        if [ $rc -ne 0 ]; then
            grep -qE '^# fail [1-9]' "$log" || fail=$((fail + 1))
            grep -aE '^not ok|^# Subtest|error|expected|actual' "$log" | grep -B1 -A8 'not ok' | head -80
        fi
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
