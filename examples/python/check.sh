#!/usr/bin/env bash
# Runs the Python example end to end: starts `BINARY serve` on a free
# loopback port with an empty temporary data dir, runs `client.py ADDR
# --check` against it, and stops the server. Exits with the client's status
# (1 when a printed figure differs from the expected one), or 2 when the
# server does not start or stop cleanly.
#
# Usage: examples/python/check.sh [path-to-binary]   (default: target/release/tradewatch)
# The python3 on PATH (or $PYTHON) must have requirements.txt installed, and
# generate.sh must have been run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${1:-$ROOT/target/release/tradewatch}
PYTHON=${PYTHON:-python3}
START_TIMEOUT_S=20
STOP_TIMEOUT_S=10

die() {
    echo "check.sh: $*" >&2
    exit 2
}

[[ -x $BIN ]] || die "no executable binary at $BIN (build it with: cargo build --release)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tradewatch-python-example.XXXXXX")
SERVER_PID=
cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -s $WORK/server.stderr ]]; then
        echo "----- last lines of the server's log -----"
        tail -n 20 "$WORK/server.stderr"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port 0: the server picks a free port and prints `tradewatch listening on ADDR`.
NO_COLOR=1 "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.stdout" 2>"$WORK/server.stderr" &
SERVER_PID=$!
deadline=$((SECONDS + START_TIMEOUT_S))
until line=$(grep -s -m1 '^tradewatch listening on ' "$WORK/server.stdout"); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited before listening"
    ((SECONDS < deadline)) || die "no 'tradewatch listening on' line within ${START_TIMEOUT_S}s"
    sleep 0.1
done
ADDR=${line#tradewatch listening on }
[[ $ADDR =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "cannot parse the address in: $line"
echo "check.sh: $(basename "$BIN") serving on $ADDR, data in a new temporary dir"

rc=0
"$PYTHON" "$HERE/client.py" "$ADDR" --check || rc=$?

kill -TERM "$SERVER_PID"
deadline=$((SECONDS + STOP_TIMEOUT_S))
while kill -0 "$SERVER_PID" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the server still runs ${STOP_TIMEOUT_S}s after SIGTERM"
    sleep 0.1
done
stopped=0
wait "$SERVER_PID" || stopped=$?
SERVER_PID=
[[ $stopped -eq 0 ]] || die "the server exited with status $stopped after SIGTERM"

[[ $rc -eq 0 ]] || echo "check.sh: the client's check FAILED (exit $rc)"
exit "$rc"
