#!/usr/bin/env bash
# Benchmark: oxicorn `static` against nginx in two configurations (and python3 -m http.server)
# on loopback, with wrk.
#
#   cargo build --release && benches/static.sh            # ROUNDS=5 DURATION=5 WORKERS=2
#   WORKERS=1 CONNS=32 benches/static.sh                  # the single-worker cost
#   BASE=/tmp/oxicorn-base SERVERS='oxicorn-tuned base-tuned nginx-tuned' SCENARIOS='short many' \
#     ROUNDS=7 WORKERS=1 CONNS=32 benches/static.sh       # A/B a change against a base build
#
# Knobs: ROUNDS, DURATION, WORKERS, CONNS, IDLE_CONNS, IDLE_SETTLE, NGINX_EXTRA (below), and
#   SCENARIOS  which cases to run, of: small big many short idle (default: all);
#   SERVERS    which servers to run, of: oxicorn oxicorn-tuned nginx nginx-tuned nginx-deferred
#              base base-tuned
#              (default: the first four, plus base and base-tuned when BASE is set);
#   BASE       another oxicorn binary (say, a copy of the release build before a change), run as
#              "base" and "base-tuned" in the same rounds, so an A/B shares the machine's noise;
#   OXICORN    the oxicorn binary under test (default: target/release/oxicorn).
#
# oxicorn runs twice in the same run:
#   "oxicorn"       as shipped: an fstat per request revalidates a cached open file, so a write
#                   in place is seen by the next response;
#   "oxicorn-tuned" with --open-file-cache-valid 60, trusting a cached file's size and mtime
#                   for 60 s as nginx's open_file_cache_valid does by default.
# nginx runs twice too, same worker count as oxicorn:
#   "nginx"       as shipped (Debian's http block): sendfile on, tcp_nopush on, access_log off,
#                 keepalive_requests at its default 1000, no open_file_cache;
#   "nginx-tuned" the anchor of issue 12: the same plus open_file_cache max=20000 inactive=60s
#                 and keepalive_requests 1000000;
#   "nginx-deferred" (only when asked for in SERVERS) nginx-tuned with `listen ... deferred`
#                 (TCP_DEFER_ACCEPT, which oxicorn sets on its HTTP listeners): the anchor for
#                 short connections, as a speed-minded operator would set it.
# Rounds alternate oxicorn / oxicorn-tuned / nginx / nginx-tuned so a noisy neighbour hurts all alike; medians
# are printed with [min-max] spread and the oxicorn/nginx ratios. Per case:
#   1 KiB keep-alive: req/s, req per server CPU-second (utime+stime of the whole process tree
#     from /proc, before/after the wrk run), and the per-worker connection split (min/max share
#     of the established connections, from /proc in the middle of the run);
#   10,000 x 4 KiB at random: req/s and req per CPU-second;
#   64 MiB: MB/s and MB per CPU-second;
#   short connections (Connection: close, one request each): req/s and req per CPU-second;
#   idle memory per kept-alive connection: PSS of the process tree, after minus before, measured
#     IDLE_SETTLE seconds (default 3) after the last connection made its request.
# Everything generated (files, nginx prefix, logs) lives in a temp dir that is removed on exit.
# Needs: wrk, nginx, python3. Not run by CI: timings are not tests.
set -euo pipefail
# Run as root (as on a CI machine), oxicorn refuses root workers without --user: these
# benchmarks mean it (the files they serve are their own).
export OXICORN_ALLOW_ROOT=true

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-64}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SETTLE=${IDLE_SETTLE:-3}
# nginx as shipped has open_file_cache off; to compare cache against cache:
#   NGINX_EXTRA='open_file_cache max=4096 inactive=1s; open_file_cache_valid 1s;'
NGINX_EXTRA=${NGINX_EXTRA:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OXICORN=${OXICORN:-$REPO/target/release/oxicorn}
BASE=${BASE:-}
SCENARIOS=${SCENARIOS:-small big many short idle}
if [ -n "$BASE" ]; then
    SERVERS=${SERVERS:-oxicorn oxicorn-tuned base base-tuned nginx nginx-tuned}
else
    SERVERS=${SERVERS:-oxicorn oxicorn-tuned nginx nginx-tuned}
fi
read -ra SERVERS <<<"$SERVERS"
has() { # word list... : true when the word is in the list
    local w=$1; shift
    for x in "$@"; do [ "$x" = "$w" ] && return 0; done
    return 1
}

for tool in wrk nginx python3; do
    command -v "$tool" >/dev/null || { echo "static.sh: $tool is not installed" >&2; exit 1; }
done
[ -x "$OXICORN" ] || { echo "static.sh: build first: cargo build --release" >&2; exit 1; }
if has base "${SERVERS[@]}" || has base-tuned "${SERVERS[@]}"; then
    [ -x "$BASE" ] || { echo "static.sh: BASE=$BASE is not an executable" >&2; exit 1; }
fi

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
OXICORN_TUNED='--open-file-cache-valid 60'
start_oxicorn() { # port [tuned] [binary] -> pid in $STARTED
    local tuning=() bin=${3:-$OXICORN}
    [ "${2:-}" = tuned ] && read -ra tuning <<<"$OXICORN_TUNED"
    "$bin" static "$WORK/www" -w "$WORKERS" -b "127.0.0.1:$1" --keep-alive 120 \
        --worker-connections 20000 --log-level warning "${tuning[@]}" \
        >/dev/null 2>>"$WORK/oxicorn.log" &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_port "$1"
}

NGINX_SHIPPED='keepalive_requests 1000;'
NGINX_TUNED='keepalive_requests 1000000; open_file_cache max=20000 inactive=60s;'
start_nginx() { # port [tuned] -> pid in $STARTED
    local prefix="$WORK/nginx-$1" tuning=$NGINX_SHIPPED deferred=
    [ "${2:-}" = tuned ] && tuning=$NGINX_TUNED
    [ "${2:-}" = deferred ] && tuning=$NGINX_TUNED deferred=' deferred'
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
    $tuning
    $NGINX_EXTRA
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    server {
        listen 127.0.0.1:$1 backlog=4096$deferred;
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

# Starts server `who` on a free port: the port in PORT_OF[who], its master's pid in PID_OF[who].
declare -A PORT_OF PID_OF
start_server() { # who [port]
    local port=${2:-$(free_port)}
    case $1 in
        oxicorn) start_oxicorn "$port" ;;
        oxicorn-tuned) start_oxicorn "$port" tuned ;;
        base) start_oxicorn "$port" "" "$BASE" ;;
        base-tuned) start_oxicorn "$port" tuned "$BASE" ;;
        nginx) start_nginx "$port" ;;
        nginx-tuned) start_nginx "$port" tuned ;;
        nginx-deferred) start_nginx "$port" deferred ;;
        *) echo "static.sh: unknown server $1" >&2; exit 1 ;;
    esac
    PORT_OF[$1]=$port
    PID_OF[$1]=$STARTED
}
for who in "${SERVERS[@]}"; do start_server "$who"; done

PY_PORT=$(free_port)
python3 -m http.server "$PY_PORT" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
PY_PID=$!
PIDS+=("$PY_PID")

wait_port "$PY_PORT"
# Every server must answer 200 with the same bytes, or the numbers mean nothing.
for port in "${PORT_OF[@]}" "$PY_PORT"; do
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
run_wrk() { # port path conns [script] [header]
    local port=$1 path=$2 conns=$3 script=${4:-} header=${5:-}
    local args=(-t "$THREADS" -c "$conns" -d "${DURATION}s" --timeout 10s)
    [ -n "$script" ] && args+=(-s "$script")
    [ -n "$header" ] && args+=(-H "$header")
    wrk "${args[@]}" "http://127.0.0.1:$port$path" | awk '
        /Requests\/sec/ { rps = $2 }
        /Transfer\/sec/ {
            v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[A-Za-z]/, "", v)
            mb = (u == "GB") ? v * 1024 : (u == "MB") ? v : (u == "KB") ? v / 1024 : v / 1048576
        }
        END { printf "%.0f %.1f\n", rps, mb }'
}

THREADS=$(( WORKERS < 2 ? 1 : 2 ))
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (b > 0) ? "%.2f" : "-", a / b }'; }

spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "[%s-%s]", lo, hi }'; }

workers_of() { pgrep -P "$1" | tr '\n' ' '; }
tree_of() { echo "$1 $(workers_of "$1")"; }
# Proportional set size of a process set in KiB: shared pages (the binary, the copy-on-write
# heap inherited from the master) are split between the processes that map them, so adding
# the tree up counts each page once. RSS would count shared pages once per process.
pss_kib() { local t=0; for p in $*; do t=$((t + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup"))); done; echo $t; }
# CPU time (user + system) of a process set, in clock ticks.
cpu_ticks() { local t=0; for p in $*; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo $t; }
TICKS=$(getconf CLK_TCK)
# Share of the established connections on `port` held by each process: "min max" in percent.
# Counted from /proc (each process's socket fds against /proc/net/tcp), as tests/balance.rs
# does; "- -" when none are seen.
conn_split() { # port pids...
    python3 - "$@" <<'PY'
import os, sys
port, pids = int(sys.argv[1]), sys.argv[2:]
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if len(f) > 9 and int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
            inodes.add(f[9])
counts = []
for pid in pids:
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                n += 1
    except OSError:
        pass
    counts.append(n)
total = sum(counts)
if total == 0:
    print("- -")
else:
    print("%.0f %.0f" % (100 * min(counts) / total, 100 * max(counts) / total))
PY
}
# Runs wrk and reports "req/s MB/s cpu-seconds [split]" for the server tree rooted at `master`.
measure() { # master port path conns [script] [header] [split]
    local master=$1 port=$2; shift 2
    local tree before after out split=""
    tree=$(tree_of "$master")
    before=$(cpu_ticks $tree)
    if [ "${5:-}" = split ]; then
        run_wrk "$port" "$1" "$2" "${3:-}" "${4:-}" > "$WORK/wrk.out" &
        local w=$!
        sleep $(( DURATION / 2 ))
        split=$(conn_split "$port" $(workers_of "$master"))
        wait "$w"
        out=$(cat "$WORK/wrk.out")
    else
        out=$(run_wrk "$port" "$1" "$2" "${3:-}" "${4:-}")
    fi
    after=$(cpu_ticks $tree)
    echo "$out $(awk -v t=$((after - before)) -v hz="$TICKS" 'BEGIN { printf "%.2f", t / hz }') $split"
}
per_cpu() { awk -v r="$1" -v c="$2" -v d="$DURATION" 'BEGIN { printf (c > 0) ? "%.0f" : "-", r * d / c }'; }

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
idle_memory() { # who (one of SERVERS)
    local port master ws before after hold="$WORK/hold.$RANDOM"
    local keep_port=${PORT_OF[$1]} keep_pid=${PID_OF[$1]}
    start_server "$1"
    port=${PORT_OF[$1]} master=${PID_OF[$1]}
    PORT_OF[$1]=$keep_port PID_OF[$1]=$keep_pid
    sleep 0.5
    ws=$(tree_of "$master")
    before=$(pss_kib $ws)
    python3 -c "$IDLE_CLIENT" "$port" "$IDLE_CONNS" "$hold" &
    local client=$!
    for _ in $(seq 1 1200); do [ -e "$hold" ] && break; sleep 0.1; done
    [ -e "$hold" ] || { echo "static.sh: idle client did not finish connecting" >&2; exit 1; }
    # Idle means idle: oxicorn parks a connection silent for a second and trims its heap half
    # a second after a burst of parkings (src/service/park.rs); nginx does not change.
    sleep "$IDLE_SETTLE"
    after=$(pss_kib $ws)
    stop "$client"
    stop "$master"
    # bytes per connection
    echo $(( (after - before) * 1024 / IDLE_CONNS ))
}

declare -A R
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS ..." >&2
    # Alternate the order too, so no server always runs right after the same neighbour.
    order=("${SERVERS[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=()
        for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do order+=("${SERVERS[$i]}"); done
    fi
    for who in "${order[@]}"; do
        port=${PORT_OF[$who]} master=${PID_OF[$who]}
        if has small $SCENARIOS; then
            read -r rps _ cpu mn mx < <(measure "$master" "$port" /1k.bin "$CONNS" "" "" split)
            R[$who.small]+="$rps "
            R[$who.small_cpu]+="$(per_cpu "$rps" "$cpu") "
            R[$who.split_min]+="$mn "
            R[$who.split_max]+="$mx "
        fi
        if has big $SCENARIOS; then
            read -r _ mb cpu < <(measure "$master" "$port" /64m.bin 4)
            R[$who.big]+="$mb "
            R[$who.big_cpu]+="$(per_cpu "$mb" "$cpu") "
        fi
        if has many $SCENARIOS; then
            read -r rps _ cpu < <(measure "$master" "$port" /many/0.bin "$CONNS" "$WORK/random.lua")
            R[$who.many]+="$rps "
            R[$who.many_cpu]+="$(per_cpu "$rps" "$cpu") "
        fi
        if has short $SCENARIOS; then
            read -r rps _ cpu < <(measure "$master" "$port" /1k.bin "$CONNS" "" "Connection: close")
            R[$who.short]+="$rps "
            R[$who.short_cpu]+="$(per_cpu "$rps" "$cpu") "
        fi
        if has idle $SCENARIOS; then
            R[$who.idle]+="$(idle_memory "$who") "
        fi
    done
done
py_rps=
if has small $SCENARIOS; then
    echo "python3 -m http.server ..." >&2
    read -r py_rps _ < <(run_wrk "$PY_PORT" /1k.bin "$CONNS")
fi

m() { median ${R[$1]}; }
cell() { echo "$(m "$1") $(spread ${R[$1]})"; }
# The ratios printed, "a/b", for each pair whose two servers both ran.
PAIRS=()
for pair in oxicorn/nginx oxicorn/nginx-tuned oxicorn-tuned/nginx-tuned \
    oxicorn-tuned/nginx-deferred oxicorn/base oxicorn-tuned/base-tuned base/nginx \
    base-tuned/nginx-tuned base-tuned/nginx-deferred; do
    has "${pair%/*}" "${SERVERS[@]}" && has "${pair#*/}" "${SERVERS[@]}" && PAIRS+=("$pair")
done
row() { # label key
    has "$3" $SCENARIOS || return 0
    local line="| $1 |" who pair
    for who in "${SERVERS[@]}"; do line+=" $(cell "$who.$2") |"; done
    for pair in "${PAIRS[@]}"; do line+=" $(ratio "$(m "${pair%/*}.$2")" "$(m "${pair#*/}.$2")") |"; done
    echo "$line"
}

echo
echo "$(date -u +%F) $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "oxicorn $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/.*: //'), $WORKERS worker(s) each, wrk -t$THREADS, $ROUNDS rounds x ${DURATION}s, median [min-max]"
echo "oxicorn-tuned: $OXICORN_TUNED    nginx: sendfile on; tcp_nopush on; access_log off; $NGINX_SHIPPED    nginx-tuned: + $NGINX_TUNED (open_file_cache_valid at its default 60s)"
has nginx-deferred "${SERVERS[@]}" && echo "nginx-deferred: nginx-tuned with listen ... deferred (TCP_DEFER_ACCEPT)"
[ -n "$BASE" ] && echo "base: $BASE (base-tuned: the same with $OXICORN_TUNED)"
[ -n "$NGINX_EXTRA" ] && echo "nginx extra (both): $NGINX_EXTRA"
echo
header="| case |" rule="|---|"
for who in "${SERVERS[@]}"; do header+=" $who |"; rule+="---|"; done
for pair in "${PAIRS[@]}"; do header+=" $pair |"; rule+="---|"; done
echo "$header"
echo "$rule"
row "1 KiB file, $CONNS conns keep-alive (req/s)" small small
row "1 KiB keep-alive, req per server CPU-second" small_cpu small
row "64 MiB file, 4 conns (MB/s)" big big
row "64 MiB, MB per server CPU-second" big_cpu big
row "10,000 distinct 4 KiB files at random (req/s)" many many
row "10,000 x 4 KiB, req per server CPU-second" many_cpu many
row "short connections, 1 KiB, Connection: close (req/s)" short short
row "short connections, req per server CPU-second" short_cpu short
row "memory per idle kept-alive conn, $IDLE_CONNS conns, PSS (bytes)" idle idle
if has small $SCENARIOS; then
    echo
    echo "per-worker share of the $CONNS keep-alive connections (min%/max%, median of rounds):"
    for who in "${SERVERS[@]}"; do echo "  $who: $(m "$who.split_min")/$(m "$who.split_max")  max per round [${R[$who.split_max]% }]"; done
    echo
    echo "python3 -m http.server, 1 KiB file: $py_rps req/s; oxicorn/python = $(ratio "$(m "${SERVERS[0]}.small")" "$py_rps")"
fi
echo "raw samples: $(for k in "${!R[@]}"; do printf '%s=[%s] ' "$k" "${R[$k]% }"; done)"
