#!/usr/bin/env bash
# Benchmark: oxicorn `static` against nginx (and python3 -m http.server) on loopback, with wrk.
#
#   cargo build --release && benches/static.sh            # ROUNDS=3 DURATION=5 WORKERS=2
#
# Same worker count for both, sendfile on, access logs off, keep-alive on. Rounds alternate
# oxicorn / nginx so a noisy neighbour hurts both alike; medians are printed with the
# oxicorn/nginx ratio. Everything generated (files, nginx prefix, logs) lives in a temp dir that
# is removed on exit. Needs: wrk, nginx, python3. Not run by CI: timings are not tests.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-64}
IDLE_CONNS=${IDLE_CONNS:-10000}
# nginx as shipped has open_file_cache off; to compare cache against cache:
#   NGINX_EXTRA='open_file_cache max=4096 inactive=1s; open_file_cache_valid 1s;'
NGINX_EXTRA=${NGINX_EXTRA:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OXICORN=${OXICORN:-$REPO/target/release/oxicorn}

for tool in wrk nginx python3; do
    command -v "$tool" >/dev/null || { echo "static.sh: $tool is not installed" >&2; exit 1; }
done
[ -x "$OXICORN" ] || { echo "static.sh: build first: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/oxicorn-bench.XXXXXX)
# nginx workers run as an unprivileged user when started by root: they must be able to read.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "static.sh: nothing listening on port $1" >&2
    exit 1
}

echo "generating test files in $WORK/www ..." >&2
mkdir -p "$WORK/www/many"
python3 - "$WORK/www" <<'PY'
import os, sys
root = sys.argv[1]
with open(os.path.join(root, "1k.bin"), "wb") as f:
    f.write(os.urandom(1024))
with open(os.path.join(root, "64m.bin"), "wb") as f:
    for _ in range(64):
        f.write(os.urandom(1 << 20))
for i in range(10000):
    with open(os.path.join(root, "many", f"{i}.bin"), "wb") as f:
        f.write(os.urandom(4096))
PY
cat > "$WORK/random.lua" <<'LUA'
-- 10,000 distinct 4 KiB files, one chosen at random per request.
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/many/" .. math.random(0, 9999) .. ".bin")
end
LUA

# --- servers -------------------------------------------------------------------------------
start_oxicorn() { # port -> pid in $STARTED
    "$OXICORN" static "$WORK/www" -w "$WORKERS" -b "127.0.0.1:$1" --keep-alive 120 \
        --worker-connections 20000 --log-level warning >/dev/null 2>>"$WORK/oxicorn.log" &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$1"
}

start_nginx() { # port -> pid in $STARTED
    local prefix="$WORK/nginx-$1"
    mkdir -p "$prefix/logs" "$prefix/tmp"
    cat > "$prefix/nginx.conf" <<NGX
worker_processes $WORKERS;
worker_rlimit_nofile 30000;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 20000; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 120;
    keepalive_requests 100000000;
    $NGINX_EXTRA
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        root $WORK/www;
    }
}
NGX
    nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" >/dev/null 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$1"
}

stop() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

OXI_PORT=$(free_port); start_oxicorn "$OXI_PORT"; OXI_PID=$STARTED
NGX_PORT=$(free_port); start_nginx "$NGX_PORT"; NGX_PID=$STARTED

PY_PORT=$(free_port)
python3 -m http.server "$PY_PORT" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
PY_PID=$!
PIDS+=("$PY_PID")

wait_port "$PY_PORT"
# Every server must answer 200 with the same bytes, or the numbers mean nothing.
for port in "$OXI_PORT" "$NGX_PORT" "$PY_PORT"; do
    for path in /1k.bin /many/9999.bin; do
        python3 - "$port" "$path" "$WORK/www$path" <<'PY'
import sys, urllib.request
port, path, file = sys.argv[1:]
with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
    assert r.status == 200 and r.read() == open(file, "rb").read(), (port, path, r.status)
PY
    done
done

# --- measuring -----------------------------------------------------------------------------
# wrk's "Requests/sec" and "Transfer/sec" (converted to MB/s).
run_wrk() { # port path conns [script]
    local port=$1 path=$2 conns=$3 script=${4:-}
    local args=(-t 2 -c "$conns" -d "${DURATION}s" --timeout 10s)
    [ -n "$script" ] && args+=(-s "$script")
    wrk "${args[@]}" "http://127.0.0.1:$port$path" | awk '
        /Requests\/sec/ { rps = $2 }
        /Transfer\/sec/ {
            v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[A-Za-z]/, "", v)
            mb = (u == "GB") ? v * 1024 : (u == "MB") ? v : (u == "KB") ? v / 1024 : v / 1048576
        }
        END { printf "%.0f %.1f\n", rps, mb }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (b > 0) ? "%.2f" : "-", a / b }'; }

workers_of() { pgrep -P "$1" | tr '\n' ' '; }
# Resident memory of a process set in KiB (anonymous + file-backed pages each worker touched).
rss_kib() { local t=0; for p in $*; do t=$((t + $(awk '/^VmRSS/ { print $2 }' "/proc/$p/status"))); done; echo $t; }

# Opens IDLE_CONNS kept-alive connections, each after one request, holds them while the
# caller measures, then closes them.
IDLE_CLIENT=$(cat <<'PY'
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
req = b"GET /1k.bin HTTP/1.1\r\nHost: b\r\n\r\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + 1024:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed early")
        got += chunk
    socks.append(s)
open(hold, "w").write("ready\n")
time.sleep(30)
PY
)

# Memory is measured on a freshly started server each time: a server that has already served
# (and freed) a burst keeps that memory in its allocator and would look cheaper than it is.
idle_memory() { # oxicorn|nginx
    local port master ws before after hold="$WORK/hold.$RANDOM"
    port=$(free_port)
    if [ "$1" = oxicorn ]; then start_oxicorn "$port"; else start_nginx "$port"; fi
    master=$STARTED
    sleep 0.5
    ws=$(workers_of "$master")
    before=$(rss_kib $ws)
    python3 -c "$IDLE_CLIENT" "$port" "$IDLE_CONNS" "$hold" &
    local client=$!
    for _ in $(seq 1 1200); do [ -e "$hold" ] && break; sleep 0.1; done
    [ -e "$hold" ] || { echo "static.sh: idle client did not finish connecting" >&2; exit 1; }
    after=$(rss_kib $ws)
    stop "$client"
    stop "$master"
    # bytes per connection
    echo $(( (after - before) * 1024 / IDLE_CONNS ))
}

declare -A R
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS ..." >&2
    for who in oxicorn nginx; do
        if [ $who = oxicorn ]; then port=$OXI_PORT; else port=$NGX_PORT; fi
        read -r rps _ < <(run_wrk "$port" /1k.bin "$CONNS")
        R[$who.small]+="$rps "
        read -r _ mb < <(run_wrk "$port" /64m.bin 4)
        R[$who.big]+="$mb "
        read -r rps _ < <(run_wrk "$port" /many/0.bin "$CONNS" "$WORK/random.lua")
        R[$who.many]+="$rps "
        R[$who.idle]+="$(idle_memory "$who") "
    done
done
echo "python3 -m http.server ..." >&2
read -r py_rps _ < <(run_wrk "$PY_PORT" /1k.bin "$CONNS")

m() { median ${R[$1]}; }
o_small=$(m oxicorn.small); n_small=$(m nginx.small)
o_big=$(m oxicorn.big);     n_big=$(m nginx.big)
o_many=$(m oxicorn.many);   n_many=$(m nginx.many)
o_idle=$(m oxicorn.idle);   n_idle=$(m nginx.idle)

echo
echo "$(date -u +%F) $(nproc) cores, $(uname -r), $WORKERS workers each, $ROUNDS rounds x ${DURATION}s, medians"
[ -n "$NGINX_EXTRA" ] && echo "nginx extra: $NGINX_EXTRA"
echo
echo "| case | oxicorn | nginx | oxicorn/nginx |"
echo "|---|---|---|---|"
echo "| 1 KiB file, $CONNS conns keep-alive (req/s) | $o_small | $n_small | $(ratio "$o_small" "$n_small") |"
echo "| 64 MiB file, 4 conns (MB/s) | $o_big | $n_big | $(ratio "$o_big" "$n_big") |"
echo "| 10,000 distinct 4 KiB files at random (req/s) | $o_many | $n_many | $(ratio "$o_many" "$n_many") |"
echo "| memory per idle kept-alive conn, $IDLE_CONNS conns (bytes) | $o_idle | $n_idle | $(ratio "$o_idle" "$n_idle") |"
echo
echo "python3 -m http.server, 1 KiB file: $py_rps req/s; oxicorn/python = $(ratio "$o_small" "$py_rps")"
echo "raw samples: $(for k in "${!R[@]}"; do printf '%s=[%s] ' "$k" "${R[$k]% }"; done)"
