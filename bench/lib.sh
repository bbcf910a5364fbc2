# bench/lib.sh — helpers for the benchmarks in bench/ (sourced, not run): bench/gateway,
# bench/issuer and bench/sidecar.
#
# Before sourcing: BENCH_NAME (for messages and the work directory), WORK is made here and
# removed on exit with every process in PIDS. Functions that measure leave their figures in
# "$WORK/runs", one line per run:
#     NAME req/s p50 p99 server-cores wrk-cores other-cores errors
# (spaces in NAME as _), where other-cores is the CPU that neither the servers nor wrk used.

WORK=$(mktemp -d "/tmp/agentid-bench-$BENCH_NAME.XXXXXX")
PIDS=()
TCK=$(getconf CLK_TCK)
NPROC=$(nproc)
bench_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench/$BENCH_NAME: $*" >&2; exit 1; }

# need_tools CMD:PACKAGE... — install the packages of missing commands (root only).
need_tools() {
    local t need=()
    for t in "$@"; do command -v "${t%%:*}" >/dev/null || need+=("${t#*:}"); done
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}"
    echo "bench/$BENCH_NAME: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

free_port() {   # a port no socket uses right now (127.0.0.1), below the ephemeral range, so
    local p i lo   # that no outgoing connection of a run can take it before its server binds it
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 21000 ] || lo=61000
    for i in $(seq 100); do
        p=$((20000 + RANDOM % (lo - 20000)))
        [ -z "$(ss -Htan "sport = :$p")" ] && { echo "$p"; return 0; }
    done
    die "no free port"
}

http_code() {   # http_code URL [curl args...] — the status code ("000" when nothing answered)
    local url=$1; shift
    curl -sk -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

wait_ok() {   # wait_ok URL [curl args...] — until it answers 200 (10 s)
    local i
    for i in $(seq 200); do
        [ "$(http_code "$@")" = 200 ] && return 0
        sleep 0.05
    done
    die "$1 did not come up"
}

expect_code() {   # expect_code WANT WHAT URL [curl args...] — abort unless URL answers WANT
    local want=$1 what=$2 got; shift 2
    got=$(http_code "$@")
    [ "$got" = "$want" ] || die "$what: $1 answered $got, not $want"
    echo "  check: $what → $got"
}

cpu_ticks() {   # cpu_ticks PID... — user+system clock ticks of these processes (all threads)
    local p t=0
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
    done
    echo "$t"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
pids_of() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }   # a process and its children

# measure NAME URL SCRIPT PIDS... — one wrk run (-t$THREADS -c$CONNS -d$DUR --latency, and
# -s SCRIPT unless it is empty) appended to $WORK/runs; wrk's output in $WORK/wrk-NAME.txt.
measure() {
    local name=$1 url=$2 script=$3; shift 3
    local s=() t0 c0 b0 t1 c1 b1 w out="$WORK/wrk-${name// /_}.txt"
    if [ -n "$script" ]; then s=(-s "$script"); fi
    t0=$(date +%s%N); c0=$(cpu_ticks "$@"); b0=$(busy_ticks)
    w=$( { TIMEFORMAT='%U %S'; time wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency "${s[@]}" "$url" \
            >"$out"; } 2>&1 | awk 'END {print $1 + $2}')
    t1=$(date +%s%N); c1=$(cpu_ticks "$@"); b1=$(busy_ticks)
    awk -v name="${name// /_}" -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v w="$w" -v t=$((t1 - t0)) -v k="$TCK" '
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = $2 }
        $1 == "99%" { p99 = $2 }
        /Non-2xx/ { bad += $NF }
        /Socket errors/ { gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) bad += $i }
        END {
            s = t / 1e9; srv = c / k / s; cl = w / s; oth = b / k / s - srv - cl
            printf "%s %.0f %s %s %.2f %.2f %.2f %d\n", name, rps, p50, p99, srv, cl, (oth < 0 ? 0 : oth), bad
        }' "$out" >>"$WORK/runs"
}
# Over the rounds of run NAME: the round with the most req/s (its line), its req/s, one field
# of it, one field of every round.
best_line() { awk -v n="${1// /_}" '$1 == n && $2 + 0 > b { b = $2 + 0; r = $0 } END { print r }' "$WORK/runs"; }
best() { best_line "$1" | awk '{print $2 + 0}'; }
best_field() { best_line "$1" | awk -v f="$2" '{print $f}'; }
all_field() { awk -v n="${1// /_}" -v f="$2" '$1 == n { s = s (s ? ", " : "") $f } END {print s}' "$WORK/runs"; }
# Two decimals, cut rather than rounded: a ratio of 0.798 reads 0.79, never a goal of 0.8 met.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? int(a / b * 100 + 1e-9) / 100 : 0)}'; }
ms() {   # ms "1.23ms" | "870.00us" | "1.02s" — milliseconds
    awk -v v="$1" 'BEGIN { u = v; sub(/^[0-9.]+/, "", u); x = v + 0
        printf "%.3f", (u == "us" ? x / 1000 : u == "s" ? x * 1000 : u == "m" ? x * 60000 : x) }'
}
at_least() { awk -v r="$1" -v g="$2" 'BEGIN {print (r >= g ? "met" : "NOT met")}'; }

cpu_model() {
    local m
    m=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    [ -n "$m" ] || m=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}')
    echo "$m"
}

# write_section FILE DOC — replace bench/$BENCH_NAME's section of DOC (between its begin and
# end markers) with FILE, or append it when DOC has none yet.
write_section() {
    local f=$1 doc=$2 tag="bench/$BENCH_NAME"
    mkdir -p "$(dirname "$doc")"
    if [ ! -f "$doc" ]; then
        printf '%s\n\n' "# Performance" \
            "Figures from the benchmarks in bench/ (\`make bench\`), each section from one run on the machine it names. Benchmarks are not tests: nothing asserts a figure." >"$doc"
    fi
    if grep -q "^<!-- bench/$BENCH_NAME: begin" "$doc"; then
        awk -v f="$f" -v b="^<!-- $tag: begin" -v e="^<!-- $tag: end" '
            $0 ~ b { while ((getline l < f) > 0) print l; skip = 1; next }
            $0 ~ e { skip = 0; next }
            !skip' "$doc" >"$WORK/doc.md"
        cat "$WORK/doc.md" >"$doc"
    else
        { echo; cat "$f"; } >>"$doc"
    fi
}
