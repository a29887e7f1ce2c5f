#!/usr/bin/env bash
# Benchmark (issue 9), the deterministic companion of benches/app.sh: user-space instructions
# per hello-world request, counted by valgrind (callgrind), for the same Router under oxicorn
# (benches/oxicorn_hello, 1 worker) and under axum::serve (benches/axum_standalone, 1 thread).
# Wall-clock figures on a shared VM drift by several percent from one minute to the next; an
# instruction count does not (repeat runs agree within a few instructions), so a change to the
# request path can be judged by it alone. It counts user space only: the kernel's share (the
# recv and writev of each request, ~70% of a request's CPU here) and scheduling are for
# benches/app.sh.
#
#   benches/app_instructions.sh              # N1=2000 N2=12000 requests, 8 connections
#   BASE=/path/to/older/oxicorn_hello benches/app_instructions.sh   # adds an older build
#                                            (one that runs under valgrind: built from this
#                                            script's commit or later)
#
# Each server is run twice under callgrind, answering N1 then N2 requests (h2load --h1 over
# 8 kept-alive connections), and its processes' instruction totals are differenced, which
# cancels start-up and shut-down: (Ir(N2) - Ir(N1)) / (N2 - N1). A few seconds per server
# (valgrind runs it ~50x slower, and the runs are short). Needs valgrind and h2load (Debian:
# valgrind, nghttp2-client). Everything generated lives in a temp dir removed on exit. Not
# run by CI.
set -euo pipefail

N1=${N1:-2000}
N2=${N2:-12000}
REPO=$(cd "$(dirname "$0")/.." && pwd)
for tool in valgrind h2load curl python3; do
    command -v "$tool" >/dev/null || {
        echo "app_instructions.sh: $tool is not installed (apt-get install valgrind nghttp2-client curl)" >&2
        exit 1
    }
done
(cd "$REPO/benches/oxicorn_hello" && cargo build --release --quiet --target-dir "$REPO/target/oxicorn_hello")
(cd "$REPO/benches/axum_standalone" && cargo build --release --quiet --target-dir "$REPO/target/axum_standalone")
OXI=$REPO/target/oxicorn_hello/release/oxicorn_hello
AXUM=$REPO/target/axum_standalone/release/axum_standalone

WORK=$(mktemp -d /tmp/oxicorn-app-ir.XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && export OXICORN_ALLOW_ROOT=true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Total instructions of a server's processes after it answered `n` requests.
run() { # n kind binary
    local n=$1 kind=$2 bin=$3 port total=0 f t answered=
    port=$(free_port)
    rm -f "$WORK"/cg.*
    local args=(--bind "127.0.0.1:$port" --workers 1 --log-level warning)
    [ "$kind" = axum ] && args=("127.0.0.1:$port" 1)
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" "$bin" "${args[@]}" 2>"$WORK/valgrind.log" &
    PID=$!
    for _ in $(seq 1 150); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && answered=1 && break
        sleep 0.2
    done
    [ -n "$answered" ] || { echo "app_instructions.sh: $bin does not answer" >&2; exit 1; }
    h2load --h1 -n "$n" -c 8 "http://127.0.0.1:$port/" 2>&1 | grep -q " $n succeeded" || {
        echo "app_instructions.sh: $bin did not answer $n requests" >&2
        exit 1
    }
    # TERM: every process ends normally and callgrind writes its counts.
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
    for f in "$WORK"/cg.*; do
        [ -e "$f" ] || continue
        t=$(awk '/^totals:/ { print $2 }' "$f")
        total=$((total + ${t:-0}))
    done
    [ "$total" -gt 0 ] || {
        echo "app_instructions.sh: no counts from $bin (see $WORK/valgrind.log)" >&2
        cat "$WORK/valgrind.log" >&2
        exit 1
    }
    echo "$total"
}

per_request() { # kind binary
    local a b
    a=$(run "$N1" "$1" "$2")
    b=$(run "$N2" "$1" "$2")
    echo $(((b - a) / (N2 - N1)))
}

echo "user-space instructions per hello-world request (callgrind; ($N2 - $N1) requests, 8 connections)"
oxi=$(per_request oxicorn "$OXI"); echo "oxicorn (1 worker)           $oxi"
if [ -n "${BASE:-}" ]; then
    base=$(per_request oxicorn "$BASE"); echo "oxicorn-base (1 worker)      $base"
fi
axum=$(per_request axum "$AXUM"); echo "axum::serve (1 thread)       $axum"
python3 -c "print(f'oxicorn / axum::serve: {$oxi / $axum:.3f}x instructions per request')"
if [ -n "${BASE:-}" ]; then
    python3 -c "print(f'oxicorn / oxicorn-base: {$oxi / $base:.3f}x instructions per request')"
fi
