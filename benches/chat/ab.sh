#!/usr/bin/env bash
# A/B of the chat benchmark between builds of oxicorn: the chat load of benches/chat/run.sh
# (200 clients, 20 senders, 2 workers), without Twisted, with the builds alternating round by
# round so that the drift of a shared, noisy machine falls on all of them alike. Prints every
# run, then the median seconds and server CPU seconds per build. A benchmark, not a test.
#
#   # each DIR holds a release `oxicorn` and `chat_load` (target/release/examples/chat_load),
#   # e.g. built from `git archive <commit>` in a scratch directory
#   benches/chat/ab.sh /tmp/before /tmp/after
#   ROUNDS=7 WINDOW=40 LINES=5000 benches/chat/ab.sh /tmp/before /tmp/after
set -euo pipefail
# Run as root (as on a CI machine), oxicorn refuses root workers without --user: these
# benchmarks mean it (the files they serve are their own).
export OXICORN_ALLOW_ROOT=true
ROUNDS=${ROUNDS:-5}
WINDOW=${WINDOW:-100}
LINES=${LINES:-5000}
[ $# -ge 2 ] || { echo "usage: $0 DIR DIR..." >&2; exit 2; }

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
# CPU seconds (user + system) used so far by a process and its children.
cpu_s() {
    local ticks=0 p t
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        ticks=$((ticks + t))
    done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}
run() {
    local port; port=$(free_port)
    "$1/oxicorn" chat -w 2 -b "127.0.0.1:$port" --log-level warning &
    local srv=$!
    wait_port "$port"
    local out; out=$("$1/chat_load" chat "127.0.0.1:$port" 200 20 "$LINES" "$WINDOW")
    local cpu; cpu=$(cpu_s "$srv")
    kill -TERM "$srv"
    wait "$srv" || true
    echo "$1 $(echo "$out" | grep -E '^(seconds|lost|out_of_order|p50_ms|p99_ms)=' | tr '\n' ' ')cpu_s=$cpu"
}
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
for _ in $(seq "$ROUNDS"); do
    for dir in "$@"; do run "$dir" | tee -a "$RESULTS"; done
done
echo
echo "window $WINDOW, $ROUNDS rounds, medians (lost and out-of-order summed):"
python3 - "$RESULTS" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rest = line.split(' ', 1)
    f = dict(kv.split('=') for kv in rest.split())
    runs.setdefault(name, []).append(f)
for name, rs in runs.items():
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    lost = sum(int(r['lost']) + int(r['out_of_order']) for r in rs)
    print(f"{name}: seconds {med('seconds'):.3f}  server cpu_s {med('cpu_s'):.2f}  "
          f"p99_ms {med('p99_ms'):.1f}  lost+reordered {lost}")
PY
