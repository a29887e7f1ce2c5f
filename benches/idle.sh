#!/usr/bin/env bash
# Idle connections (issue 13): what an idle connection costs each service, beside the classic
# servers in the same run. A benchmark, not a test: .ci/run does not run it.
#
#   benches/idle.sh                         # 10,000 for every server, then 100,000 for echo
#   COUNTS="10000" SERVERS="echo nginx" benches/idle.sh
#   BIG_SERVERS="echo twisted-echo quote" benches/idle.sh
#   OXI=/tmp/old/oxicorn BIG= SERVERS=echo benches/idle.sh     # another build, not made here
#
# For each server and count: start the server, measure the PSS of its whole process tree
# (/proc/PID/smaps_rollup of the root and every descendant), open the connections with
# benches/idle/client.py (each after one protocol step: echo one round trip, quote one line,
# chat a joined member, static and nginx one kept-alive GET), let them settle, measure again.
# Reported: bytes per connection ((after − before) / connections), the tree's total, the time to
# open them all, and for oxicorn the arbiter's and the hub's own PSS before and after (they
# must not grow with the connections). Servers:
#
#   echo quote chat static      oxicorn, -w $WORKERS (release build, made here)
#   app app-h2                  examples/axum_app under oxicorn (hyper), -w $WORKERS: one GET /
#                               kept alive over HTTP/1.1, or over HTTP/2 (h2c, prior knowledge)
#   twisted-echo gevent-echo    benches/idle/{twisted,gevent}_echo.py (pip: twisted, gevent)
#   twisted-chat                benches/chat/twisted_chat.py
#   nginx                       nginx, $WORKERS worker processes, keepalive_timeout 600s
#
# oxicorn parks an echo, quote or kept-alive static connection, or a joined chat member up to
# date with the room, once it has been idle for a second (src/service/park.rs; every join
# notice wakes the members already there, so chat members park a second after the last
# join) and trims its heap half a second after a burst of parkings:
# SETTLE (seconds between the last connection opened and the measurement, default 3) must leave
# it that time, or the figure counts connections still waiting in their tasks.
#
# The script raises its fd limit to $FDS (default 1048576) if it may, else to its hard limit;
# servers and clients inherit it. A server process cannot hold more connections than that
# (with a hard limit of 20,000, 100,000 connections need at least 6 oxicorn workers: set
# WORKERS), and the connections are opened by as many client processes as the limit needs.
# They come from 127.0.0.2, 127.0.0.3, … (20,000 each) so the client side does not run out of
# ports.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS=${COUNTS:-10000}
SERVERS=${SERVERS:-echo twisted-echo gevent-echo quote chat twisted-chat static nginx}
BIG=${BIG-100000}
BIG_SERVERS=${BIG_SERVERS:-echo}
WORKERS=${WORKERS:-2}
PY=${PY:-python3}
FDS=${FDS:-1048576}
SETTLE=${SETTLE:-3}
OPEN_TIMEOUT=${OPEN_TIMEOUT:-900}

ulimit -Hn "$FDS" 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)"
FDS=$(ulimit -Hn)
PER_CLIENT=$((FDS - 1100))
if [ -z "${OXI:-}" ]; then
    cargo build -q --release --bin oxicorn
    OXI=$PWD/target/release/oxicorn
fi
if [ -z "${APP:-}" ] && [[ " $SERVERS $BIG_SERVERS " == *" app"* ]]; then
    cargo build -q --release --example axum_app
    APP=$PWD/target/release/examples/axum_app
fi
WORK=$(mktemp -d)
mkdir -p "$WORK/www"
printf 'hello, idle\n' >"$WORK/www/hello.txt"
chmod -R a+rX "$WORK"

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}
# A process and all its descendants.
tree() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1" || true); do tree "$p"; done
}
# PSS of one process, KiB (0 if it is gone).
pss() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
tree_pss() {
    local total=0 p
    for p in $(tree "$1"); do total=$((total + $(pss "$p"))); done
    echo "$total"
}
# oxicorn's hub: the arbiter's child whose title says so.
hub_pid() {
    local p
    for p in $(pgrep -P "$1" || true); do
        if tr '\0' ' ' <"/proc/$p/cmdline" | grep -q hub; then echo "$p"; return; fi
    done
}

SERVER="" CLIENTS=()
stop_all() {
    local c
    for c in "${CLIENTS[@]}"; do kill -TERM "$c" 2>/dev/null || true; wait "$c" 2>/dev/null || true; done
    CLIENTS=()
    if [ -n "$SERVER" ]; then
        kill -TERM "$SERVER" 2>/dev/null || true
        # oxicorn waits for its connections to drain; they are idle, so do not wait long.
        for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
trap 'stop_all; rm -rf "$WORK"' EXIT

start() { # server, port
    local s=$1 port=$2 wc=$((BIGGEST + 1000))
    local oxi=(-w "$WORKERS" -b "127.0.0.1:$port" --worker-connections "$wc" --backlog 4096 --log-level warning --graceful-timeout 1 --allow-root)
    case $s in
    echo) "$OXI" echo "${oxi[@]}" --idle-timeout 0 & ;;
    quote) "$OXI" quote "${oxi[@]}" --idle-timeout 0 & ;;
    chat) "$OXI" chat "${oxi[@]}" --idle-timeout 0 & ;;
    static) "$OXI" static "$WORK/www" "${oxi[@]}" --keep-alive 3600 --idle-timeout 0 & ;;
    app | app-h2) APP_STATIC_DIR=$WORK/www "$APP" "${oxi[@]}" --keep-alive 3600 --idle-timeout 0 & ;;
    twisted-echo) "$PY" benches/idle/twisted_echo.py "$port" & ;;
    gevent-echo) "$PY" benches/idle/gevent_echo.py "$port" & ;;
    twisted-chat) "$PY" benches/chat/twisted_chat.py "$port" & ;;
    nginx)
        cat >"$WORK/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
worker_rlimit_nofile $FDS;
events { worker_connections $wc; use epoll; }
http {
    access_log off;
    keepalive_timeout 3600s;
    keepalive_requests 1000;
    server { listen 127.0.0.1:$port backlog=4096; root $WORK/www; }
}
CONF
        nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" &
        ;;
    *) echo "unknown server $s" >&2; exit 2 ;;
    esac
    SERVER=$!
}
mode_of() {
    case $1 in
    echo | twisted-echo | gevent-echo) echo echo ;;
    quote) echo quote ;;
    chat | twisted-chat) echo chat ;;
    static | nginx | app) echo http ;;
    app-h2) echo h2 ;;
    esac
}

run() { # server, connections
    local s=$1 n=$2 port; port=$(free_port)
    start "$s" "$port"
    wait_port "$port"
    sleep "$SETTLE"
    local hub="" before arb0 hub0=0
    case $s in echo | quote | chat | static | app | app-h2) hub=$(hub_pid "$SERVER") ;; esac
    before=$(tree_pss "$SERVER"); arb0=$(pss "$SERVER")
    [ -n "$hub" ] && hub0=$(pss "$hub")
    local marker="you joined as" path=/hello.txt
    case $s in app | app-h2) path=/static/hello.txt ;; esac
    [ "$s" = twisted-chat ] && marker="Welcome, "
    # One client process per $PER_CLIENT connections: each may hold only RLIMIT_NOFILE fds.
    rm -f "$WORK"/ready.*
    CLIENTS=()
    local first=0 k=0
    while [ "$first" -lt "$n" ]; do
        local m=$((n - first < PER_CLIENT ? n - first : PER_CLIENT))
        FIRST=$first CHAT_MARKER=$marker HTTP_PATH=$path "$PY" benches/idle/client.py \
            "$(mode_of "$s")" 127.0.0.1 "$port" "$m" "$WORK/ready.$k" &
        CLIENTS+=($!)
        first=$((first + m)); k=$((k + 1))
    done
    local waited=0
    while [ "$(ls "$WORK" | grep -c '^ready\.[0-9]*$')" -lt "$k" ]; do
        if [ "$waited" -ge $((OPEN_TIMEOUT * 10)) ]; then
            echo "$s $n: the clients did not finish in ${OPEN_TIMEOUT}s" >&2
            stop_all
            return 0
        fi
        sleep 0.1; waited=$((waited + 1))
    done
    sleep "$SETTLE"
    local after arb1 hub1=0 opened secs failed
    after=$(tree_pss "$SERVER"); arb1=$(pss "$SERVER")
    [ -n "$hub" ] && hub1=$(pss "$hub")
    opened=$(cat "$WORK"/ready.* | sed 's/.*opened=\([0-9]*\).*/\1/' | paste -sd+ | bc)
    failed=$(cat "$WORK"/ready.* | sed 's/.*failed=\([0-9]*\).*/\1/' | paste -sd+ | bc)
    secs=$(cat "$WORK"/ready.* | sed 's/.*seconds=\([0-9.]*\).*/\1/' | sort -g | tail -1)
    local per=0
    [ "$opened" -gt 0 ] && per=$(((after - before) * 1024 / opened))
    local extra=""
    case $s in echo | quote | chat | static | app | app-h2)
        extra="arbiter ${arb0}→${arb1} KiB, hub $([ -n "$hub" ] && echo "${hub0}→${hub1} KiB" || echo none)" ;;
    esac
    printf '| %s | %d | %d | %s | %s | %.1f MB | %s s | %s |\n' \
        "$s" "$n" "$opened" "$failed" "$per" "$(echo "scale=1; $after / 1024" | bc)" "$secs" "$extra" | tee -a "$WORK/table"
    stop_all
}

BIGGEST=$(printf '%s\n' $COUNTS $BIG | sort -n | tail -1)
echo "$(date -u '+%F %H:%M UTC'), $(nproc) CPU(s), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "oxicorn -w $WORKERS; nginx $WORKERS workers; PSS of the whole server tree, after − before"
echo
echo "| server | connections | idle | failed | bytes per connection | tree PSS after | time to open | notes |"
echo "|---|---|---|---|---|---|---|---|"
for n in $COUNTS; do
    for s in $SERVERS; do run "$s" "$n"; done
done
if [ -n "$BIG" ]; then
    for s in $BIG_SERVERS; do run "$s" "$BIG"; done
fi
