#!/usr/bin/env bash
# Chat and quote throughput: oxicorn against the classic Twisted servers, in the same run on the
# same machine. A benchmark, not a test: .ci/run does not run it.
#
#   benches/chat/run.sh                 # 200 clients, 20 senders, 2000 lines each; quote 5 s
#   CLIENTS=500 LINES=5000 benches/chat/run.sh
#
# Needs python3 (twisted is installed from pip into a venv, $VENV) and a release build
# (done here). Prints one table; the load generator is examples/chat_load.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-200}
SENDERS=${SENDERS:-20}
LINES=${LINES:-2000}
WINDOW=${WINDOW:-40}
WORKERS=${WORKERS:-2}
QUOTE_CONC=${QUOTE_CONC:-50}
QUOTE_SECS=${QUOTE_SECS:-5}
VENV=${VENV:-${TMPDIR:-/tmp}/oxicorn-bench-venv}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import twisted' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q twisted
fi
cargo build -q --release --bin oxicorn --example chat_load
OXI=target/release/oxicorn
LOAD=target/release/examples/chat_load
PY="$VENV/bin/python"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}
# Peak resident memory (VmHWM) of a process and its children, in MiB.
peak_mib() {
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '/VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + v))
    done
    echo "scale=1; $total / 1024" | bc
}
# CPU seconds (user + system) used so far by a process and its children.
cpu_s() {
    local ticks=0 p t
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        ticks=$((ticks + t))
    done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}
field() { grep "^$1=" | cut -d= -f2; }

SERVER=""
stop_server() {
    if [ -n "$SERVER" ]; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
trap stop_server EXIT

run_chat() { # name, command...
    local name=$1; shift
    local port; port=$(free_port)
    "$@" "$port" &
    SERVER=$!
    wait_port "$port"
    local out; out=$("$LOAD" chat "127.0.0.1:$port" "$CLIENTS" "$SENDERS" "$LINES" "$WINDOW")
    local mem; mem=$(peak_mib "$SERVER")
    local cpu; cpu=$(cpu_s "$SERVER")
    stop_server
    echo "$out" | sed "s/^/$name.chat./"
    echo "$name.chat.peak_mib=$mem"
    echo "$name.chat.server_cpu_s=$cpu"
    local delivered; delivered=$(echo "$out" | field delivered)
    echo "$name.chat.cpu_us_per_delivery=$(echo "scale=3; $cpu * 1000000 / $delivered" | bc)"
}
run_quote() {
    local name=$1; shift
    local port; port=$(free_port)
    "$@" "$port" &
    SERVER=$!
    wait_port "$port"
    local out; out=$("$LOAD" quote "127.0.0.1:$port" "$QUOTE_CONC" "$QUOTE_SECS")
    local mem; mem=$(peak_mib "$SERVER")
    local cpu; cpu=$(cpu_s "$SERVER")
    stop_server
    echo "$out" | sed "s/^/$name.quote./"
    echo "$name.quote.peak_mib=$mem"
    echo "$name.quote.server_cpu_s=$cpu"
}
oxi_chat() { exec "$OXI" chat -w "$WORKERS" -b "127.0.0.1:$1" --log-level warning; }
oxi_quote() { exec "$OXI" quote -w "$WORKERS" -b "127.0.0.1:$1" --log-level warning; }
tw_chat() { exec "$PY" benches/chat/twisted_chat.py "$1"; }
tw_quote() { exec "$PY" benches/chat/twisted_quote.py "$1"; }

RESULTS=$(mktemp)
{
    run_chat oxicorn oxi_chat
    run_chat twisted tw_chat
    run_quote oxicorn oxi_quote
    run_quote twisted tw_quote
} | tee "$RESULTS"

get() { field "$1" < "$RESULTS"; }
ratio() { echo "scale=1; $1 / $2" | bc; }
echo
echo "$(date -u +%F) $(nproc) CPU(s), $(uname -r); oxicorn -w $WORKERS; $CLIENTS clients, $SENDERS sending $LINES lines each (window $WINDOW)"
printf '| %-28s | %12s | %12s | %7s |\n' "" oxicorn twisted ratio
printf '|%s|%s|%s|%s|\n' "------------------------------" "--------------" "--------------" "---------"
for k in lines_per_sec p50_ms p99_ms lost out_of_order peak_mib server_cpu_s cpu_us_per_delivery; do
    o=$(get "oxicorn.chat.$k"); t=$(get "twisted.chat.$k")
    r=""
    if [ "$k" = lines_per_sec ]; then r="$(ratio "$o" "$t")x"; fi
    if [ "$k" = cpu_us_per_delivery ]; then r="1/$(ratio "$t" "$o")"; fi
    printf '| %-28s | %12s | %12s | %7s |\n' "chat $k" "$o" "$t" "$r"
done
for k in conns_per_sec errors peak_mib server_cpu_s; do
    o=$(get "oxicorn.quote.$k"); t=$(get "twisted.quote.$k")
    r=""
    if [ "$k" = conns_per_sec ]; then r="$(ratio "$o" "$t")x"; fi
    printf '| %-28s | %12s | %12s | %7s |\n' "quote $k (c=$QUOTE_CONC)" "$o" "$t" "$r"
done
rm -f "$RESULTS"
