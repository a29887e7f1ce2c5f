#!/usr/bin/env bash
# Benchmark: does operating the server cost its clients anything? (issue 10)
#
#   cargo build --release && benches/churn.sh   # ROUNDS=3 DURATION=60 WORKERS=4 CONNS=32
#
# Runs of the same length against `oxicorn static` serving a 1 KiB file, with wrk at full
# load throughout, alternating for ROUNDS rounds (so a noisy neighbour hurts both kinds alike):
#   - undisturbed: no signal, no recycling;
#   - churn: --max-requests with jitter (workers recycle every few thousand requests) while the
#     script sends 20 HUPs, 3 USR2 upgrades (to a copy of the binary; to a script that exits
#     at once; to a wrapper that passes a bad flag, i.e. refuses the config) and TTIN/TTOU
#     pairs, spread evenly over the run (60 s: an event every 2 s or so).
# Reports per run: req/s; requests per CPU-second of the server (the arbiter, its children,
# and the children it reaped, from /proc) and of the server and wrk together, which do not
# depend on the share of a shared machine a run happened to get; non-2xx responses and socket
# errors. Then the dips of the medians, and whether the arbiter's PID
# and the pid file stayed the same throughout. The binary is copied into a temp dir and
# started from there, so the USR2 deploys never touch target/. Needs wrk, python3.
# Not run by CI: timings are not tests.
set -euo pipefail
# Run as root (as on a CI machine), oxicorn refuses root workers without --user: these
# benchmarks mean it (the files they serve are their own).
export OXICORN_ALLOW_ROOT=true

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-60}
WORKERS=${WORKERS:-4}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
MAX_REQUESTS=${MAX_REQUESTS:-5000}
HUPS=${HUPS:-20}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OXICORN=${OXICORN:-$REPO/target/release/oxicorn}

for tool in wrk python3; do
    command -v "$tool" >/dev/null || { echo "churn.sh: $tool is not installed" >&2; exit 1; }
done
[ -x "$OXICORN" ] || { echo "churn.sh: build first: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/oxicorn-churn.XXXXXX)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && sleep 1
    [ -n "$SERVER" ] && kill -9 "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/www" "$WORK/bin"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
BIN=$WORK/bin/oxicorn
cp "$OXICORN" "$WORK/real"
deploy() { # file: replace $BIN as a deploy does (new inode, renamed over)
    cp "$1" "$BIN.new" && chmod 755 "$BIN.new" && mv "$BIN.new" "$BIN"
}
deploy "$WORK/real"
printf '#!/bin/sh\nexit 1\n' >"$WORK/exits"
printf '#!/bin/sh\nexec %s --no-such-flag "$@"\n' "$WORK/real" >"$WORK/refuses"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_line() { # log pattern count: wait (60 s at most) for count lines matching pattern
    for _ in $(seq 1 600); do
        # The log may not exist yet: the server's shell redirection opens it.
        local n
        n=$(grep -c -- "$2" "$1" 2>/dev/null || true)
        [ "${n:-0}" -ge "$3" ] && return 0
        sleep 0.1
    done
    echo "churn.sh: timed out waiting for $3 × '$2' in $1" >&2
    return 1
}

start() { # name extra-args... -> $SERVER, $PORT
    local name=$1
    shift
    PORT=$(free_port)
    "$BIN" static "$WORK/www" -w "$WORKERS" -b "127.0.0.1:$PORT" --keep-alive 120 \
        --pid "$WORK/$name.pid" --worker-connections 20000 "$@" \
        >/dev/null 2>"$WORK/$name.log" &
    SERVER=$!
    wait_line "$WORK/$name.log" " booted" "$WORKERS"
}

stop() {
    kill -TERM "$SERVER"
    wait "$SERVER" || true
    SERVER=
}

load() { # name: wrk for DURATION against $PORT, output in $WORK/name.wrk; the server's CPU
    # time over the run in $WORK/name.cpu, wrk's in $WORK/name.wrkcpu (both in clock ticks),
    # the share of the machine's CPU time left idle in $WORK/name.idle (percent)
    local before machine
    before=$(tree_ticks)
    machine=$(machine_ticks)
    ( wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT/1k.bin" >"$WORK/$1.wrk"
      # The builtin, redirected (a pipe would run it in a subshell without wrk's times).
      times >"$WORK/$1.times"
      awk -v t="$(getconf CLK_TCK)" 'NR == 2 {print ticks($1) + ticks($2)}
          function ticks(s,  m) { split(s, m, /[ms]/); return int((m[1] * 60 + m[2]) * t) }' \
          "$WORK/$1.times" >"$WORK/$1.wrkcpu" )
    echo $(($(tree_ticks) - before)) >"$WORK/$1.cpu"
    echo "$machine $(machine_ticks)" | awk '{printf "%.0f\n", 100 * ($3 - $1) / ($4 - $2 + ($4 == $2))}' \
        >"$WORK/$1.idle"
}

# The machine's idle (and iowait) clock ticks and all its ticks so far, from /proc/stat. A run
# with fewer req/s at the same cost per request either waited (the machine had idle time) or
# got less of a machine busy with other jobs (none): this tells the two apart.
machine_ticks() {
    awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat
}

# CPU time of the server so far, in clock ticks: the arbiter's own and its reaped children's
# (a worker that exited is added to its parent's cutime; the PID survives a USR2, and so do
# those counts across execve), plus every live child's.
tree_ticks() {
    local t c
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$SERVER/stat")
    for c in $(cat /proc/"$SERVER"/task/*/children); do
        t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

rps() { awk '/^Requests\/sec/ {print $2}' "$WORK/$1.wrk"; }
requests() { awk '/requests in/ {print $1}' "$WORK/$1.wrk"; }
# Requests per CPU-second of the server, and of the server and wrk together: what a run costs,
# whatever share of the (shared, noisy) machine it got.
per_cpu() { # name [with-wrk]
    local ticks
    ticks=$(cat "$WORK/$1.cpu")
    [ -n "${2:-}" ] && ticks=$((ticks + $(cat "$WORK/$1.wrkcpu")))
    python3 -c "print(round($(requests "$1") * $(getconf CLK_TCK) / max(1, $ticks)))"
}
non2xx() { awk '/Non-2xx or 3xx responses/ {print $5}' "$WORK/$1.wrk" | grep . || echo 0; }
sockerr() { # connect+read+write+timeout
    awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/$1.wrk" | grep . || echo 0
}

PID_OK=yes
check_pid() {
    [ "$(cat "$PIDFILE" 2>/dev/null)" = "$PID" ] || PID_OK="no (pid file: $(cat "$PIDFILE" 2>/dev/null))"
    kill -0 "$PID" 2>/dev/null || PID_OK="no (arbiter $PID gone)"
}
# Each event waits for the previous roll to end: a USR2 during a reload is ignored by design.
settle() {
    wait_line "$LOG" "reload complete\|reload failed\|upgrade complete\|upgrade refused\|upgrade rolled back" "$rolls"
}
usr2() { # binary to deploy
    deploy "$1"
    kill -USR2 "$PID"
    rolls=$((rolls + 1))
    settle
    deploy "$WORK/real"
    check_pid
}
events=$((HUPS + 3 + 4))
gap=$(python3 -c "print(max(0.1, ($DURATION - 4) / $events))")

calm_run() { # name
    start "$1"
    load "$1"
    stop
}

churn_run() { # name
    local name=$1
    start "$name" --max-requests "$MAX_REQUESTS" --max-requests-jitter $((MAX_REQUESTS / 10))
    PID=$SERVER
    LOG=$WORK/$name.log
    PIDFILE=$WORK/$name.pid
    load "$name" &
    local loader=$!
    rolls=0
    sleep 1
    for i in $(seq 1 "$HUPS"); do
        kill -HUP "$PID"
        rolls=$((rolls + 1))
        settle
        check_pid
        sleep "$gap"
        case $i in
            5) usr2 "$WORK/real"; sleep "$gap" ;;
            10) usr2 "$WORK/exits"; sleep "$gap" ;;
            15) usr2 "$WORK/refuses"; sleep "$gap" ;;
        esac
        if [ $((i % 5)) -eq 0 ]; then
            kill -TTIN "$PID"
            sleep "$gap"
            kill -TTOU "$PID"
            check_pid
        fi
    done
    wait "$loader"
    check_pid
    stop
    cat "$LOG" >>"$WORK/all-churn.log"
}

: >"$WORK/all-churn.log"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: undisturbed ${DURATION}s, then churn ${DURATION}s ($WORKERS workers, $CONNS connections) ..." >&2
    calm_run "calm$r"
    churn_run "churn$r"
done

count() { grep -c -- "$1" "$WORK/all-churn.log" || true; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
dip() { python3 -c "print(f'{(1 - $2 / $1) * 100:.1f}%')"; }
calms=()
churns=()
calm_cpu=()
churn_cpu=()
calm_all=()
churn_all=()
echo
echo "| run | req/s | req per server CPU-s | req per CPU-s, server + wrk | non-2xx | socket errors | machine idle |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
    calms+=("$(rps "calm$r")")
    churns+=("$(rps "churn$r")")
    calm_cpu+=("$(per_cpu "calm$r")")
    churn_cpu+=("$(per_cpu "churn$r")")
    calm_all+=("$(per_cpu "calm$r" wrk)")
    churn_all+=("$(per_cpu "churn$r" wrk)")
    for kind in calm churn; do
        label=$([ $kind = calm ] && echo undisturbed || echo churn)
        echo "| $r: $label | $(rps "$kind$r") | $(per_cpu "$kind$r") | $(per_cpu "$kind$r" wrk) | $(non2xx "$kind$r") | $(sockerr "$kind$r") | $(cat "$WORK/$kind$r.idle")% |"
    done
done
CALM=$(median "${calms[@]}")
CHURN=$(median "${churns[@]}")
REFUSED=$(grep -o 'configuration check (exit code [0-9]*)' "$WORK/all-churn.log" | grep -o 'code [0-9]*' | sort | uniq -c | awk '{print $1 "x exit " $3}' | paste -sd, - || true)
cat <<EOF

- median req/s: undisturbed $CALM, churn $CHURN; dip $(dip "$CALM" "$CHURN")
- median req per server CPU-second: undisturbed $(median "${calm_cpu[@]}"), churn $(median "${churn_cpu[@]}"); dip $(dip "$(median "${calm_cpu[@]}")" "$(median "${churn_cpu[@]}")")
- median req per CPU-second of server and wrk: undisturbed $(median "${calm_all[@]}"), churn $(median "${churn_all[@]}"); dip $(dip "$(median "${calm_all[@]}")" "$(median "${churn_all[@]}")")
- arbiter PID and pid file unchanged throughout: $PID_OK
- reloads completed: $(count "reload complete") of $((HUPS * ROUNDS))
- upgrades: $(count "upgrade complete") completed, $(count "upgrade refused") refused ($REFUSED), $(count "upgrade rolled back") rolled back
- workers recycled by --max-requests: $(count "recycled, its replacement is ready"), having served a median $(grep -o 'served [0-9]* requests (limit' "$WORK/all-churn.log" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') requests when marked (the limit: $MAX_REQUESTS plus up to $((MAX_REQUESTS / 10)))
- TTIN/TTOU: $(count "TTIN: raising") / $(count "TTOU: lowering")
- machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${DURATION}s per run, $WORKERS workers, wrk -t$THREADS -c$CONNS, 1 KiB file
EOF
