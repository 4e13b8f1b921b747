#!/usr/bin/env bash
# End-to-end smoke test of the tradewatch gRPC service with the real grpcurl.
#
# Usage: scripts/smoke.sh [path-to-binary]   (default: target/release/tradewatch)
#
# Starts `BINARY serve` on a free loopback port with a fresh data dir, drives
# it through reflection, health, PutRecords (and its retry by request_id),
# GetRecord/ListRecords/Aggregate/GetDataAvailability, a watch with backfill,
# a rejected batch and a restart on the same data dir, and scrapes its Prometheus
# endpoint (--metrics-listen) with curl. Prints PASS/FAIL per check and
# exits non-zero on the first failure. Needs grpcurl, curl and python3 on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/release/tradewatch}
CSV=$ROOT/data/china_central_asia.csv
SERVICE=tradewatch.v1.TradeService
MILESTONES=tradewatch.v1.MilestoneService
START_TIMEOUT_S=20
STOP_TIMEOUT_S=10

# grpcurl's own limits, so that a hung server fails the check instead of the run.
GRPCURL=(grpcurl -plaintext -connect-timeout 5 -max-time 15)

die() {
    echo "smoke: $*" >&2
    exit 2
}

[[ -x $BIN ]] || die "no executable binary at $BIN (build it with: cargo build --release)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
[[ -r $CSV ]] || die "cannot read $CSV"
command -v grpcurl >/dev/null || die "grpcurl is not on PATH"
command -v python3 >/dev/null || die "python3 is not on PATH"
command -v curl >/dev/null || die "curl is not on PATH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tradewatch-smoke.XXXXXX")
DATA_DIR=$WORK/data
SERVER_PID=
ADDR=
METRICS_ADDR=
STARTS=0
CHECKS=0

cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pass() {
    CHECKS=$((CHECKS + 1))
    printf 'PASS  %s\n' "$1"
}

# fail NAME [OUTPUT]: report, show what failed and the server's log, stop.
fail() {
    printf 'FAIL  %s\n' "$1"
    if [[ $# -ge 2 ]]; then
        printf -- '----- output -----\n%s\n------------------\n' "$2"
    fi
    local log
    for log in "$WORK"/server-*.stderr; do
        [[ -e $log ]] || continue
        printf -- '----- last lines of %s -----\n' "$(basename "$log")"
        tail -n 20 "$log"
    done
    printf 'smoke: FAILED after %d passed checks\n' "$CHECKS"
    exit 1
}

# call ARGS...: runs grpcurl against the server; sets OUT (stdout+stderr) and RC.
call() {
    RC=0
    OUT=$("${GRPCURL[@]}" "$@" 2>&1) || RC=$?
}

# rpc METHOD JSON: unary call of a TradeService method with a JSON request.
rpc() {
    call -d "$2" "$ADDR" "$SERVICE/$1"
}

# json_get EXPR: evaluates a Python expression over the JSON in $OUT (bound to
# `r`) and prints the result; prints nothing if OUT is not JSON.
json_get() {
    printf '%s' "$OUT" | python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
try:
    print(eval(sys.argv[1]))
except Exception as e:
    print("<%s: %s>" % (type(e).__name__, e))
' "$1"
}

# expect_ok NAME: fails unless the last call exited 0.
expect_ok() {
    [[ $RC -eq 0 ]] || fail "$1 (grpcurl exit $RC)" "$OUT"
}

# expect_error NAME CODE: fails unless the last call failed with gRPC code CODE.
expect_error() {
    if [[ $RC -eq 0 ]] || ! grep -q "Code: $2\$" <<<"$OUT"; then
        fail "$1 (expected $2, grpcurl exit $RC)" "$OUT"
    fi
}

start_server() {
    STARTS=$((STARTS + 1))
    local out=$WORK/server-$STARTS.stdout err=$WORK/server-$STARTS.stderr
    NO_COLOR=1 "$BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$DATA_DIR" >"$out" 2>"$err" &
    SERVER_PID=$!
    local deadline=$((SECONDS + START_TIMEOUT_S)) line= metrics_line=
    while :; do
        line=$(grep -s -m1 '^tradewatch listening on ' "$out" || true)
        metrics_line=$(grep -s -m1 '^tradewatch metrics on ' "$out" || true)
        [[ -n $line && -n $metrics_line ]] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            local rc=0
            wait "$SERVER_PID" || rc=$?
            SERVER_PID=
            fail "server start #$STARTS (exited with status $rc before listening)" "$(cat "$out")"
        fi
        ((SECONDS < deadline)) || fail "server start #$STARTS (no listening and metrics lines within ${START_TIMEOUT_S}s)" "$(cat "$out")"
        sleep 0.1
    done
    ADDR=${line#tradewatch listening on }
    [[ $ADDR =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "server start #$STARTS (cannot parse address)" "$line"
    METRICS_ADDR=${metrics_line#tradewatch metrics on }
    [[ $METRICS_ADDR =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "server start #$STARTS (cannot parse metrics address)" "$metrics_line"
    local lines
    lines=$(wc -l <"$out")
    [[ $lines -eq 2 ]] || fail "server start #$STARTS (expected exactly two stdout lines, got $lines)" "$(cat "$out")"
    [[ $(head -n1 "$out") == "$line" ]] || fail "server start #$STARTS (the listening line comes first)" "$(cat "$out")"
    pass "server start #$STARTS: listening on $ADDR, metrics on $METRICS_ADDR (pid $SERVER_PID)"
}

# scrape: GET /metrics with curl; sets OUT (the exposition) and RC.
scrape() {
    RC=0
    OUT=$(curl -sS --fail --max-time 10 "http://$METRICS_ADDR/metrics" 2>&1) || RC=$?
}

# metric SERIES: the value of one series (name and labels as printed) in $OUT.
metric() {
    awk -v series="$1" '$1 == series { print $2; found = 1 } END { if (!found) print "absent" }' <<<"$OUT"
}

stop_server() {
    kill -TERM "$SERVER_PID"
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            fail "SIGTERM: server still running after ${STOP_TIMEOUT_S}s"
        fi
        sleep 0.1
    done
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    [[ $rc -eq 0 ]] || fail "SIGTERM: server exited with status $rc (expected 0)"
    pass "SIGTERM: server exited cleanly within ${STOP_TIMEOUT_S}s"
}

# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------

# The whole CSV as one PutRecordsRequest.
ALL_RECORDS=$(python3 - "$CSV" <<'PY'
import csv, json, sys

FLOWS = {
    "export": "FLOW_EXPORT",
    "import": "FLOW_IMPORT",
    "re_export": "FLOW_RE_EXPORT",
    "re-export": "FLOW_RE_EXPORT",
    "re_import": "FLOW_RE_IMPORT",
    "re-import": "FLOW_RE_IMPORT",
    "turnover": "FLOW_TURNOVER",
}
records = []
with open(sys.argv[1], newline="") as f:
    for row in csv.DictReader(f):
        rec = {
            "reporter": row["reporter"],
            "partner": row["partner"],
            "flow": FLOWS[row["flow"].strip().lower()],
            "period": row["period"],
            "commodity": row["commodity"],
            # int64 as a JSON string, as grpcurl prints it.
            "value": {"currency_code": row["currency"], "units": str(int(row["value"]))},
            "source": row["source"],
        }
        if row.get("released_at"):
            rec["released_at"] = row["released_at"]
        records.append(rec)
# A fixed idempotency key: the data dir is new on every run.
print(json.dumps({"records": records, "request_id": "smoke-load-china-central-asia"}))
PY
)
N_RECORDS=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["records"]))' <<<"$ALL_RECORDS")
[[ $N_RECORDS -eq 16 ]] || die "expected 16 records in $CSV, read $N_RECORDS"

KAZ_2025_KEY='{"key":{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2025","commodity":"TOTAL","currency":"USD"}}'
REVISE_KAZ_2025='{"records":[{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2025",
  "commodity":"TOTAL","value":{"currency_code":"USD","units":"48700000000"},"source":"GACC"}]}'
# records[0] is valid and new; records[1] is wrong in five fields.
BAD_BATCH='{"records":[
  {"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2022","commodity":"TOTAL",
   "value":{"currency_code":"USD","units":"31200000000"},"source":"smoke"},
  {"reporter":"XYZ","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2025-13","commodity":"27A",
   "value":{"currency_code":"US","units":"-5"},"source":"smoke"}]}'
BAD_BATCH_GOOD_KEY='{"key":{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2022","commodity":"TOTAL","currency":"USD"}}'

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

echo "smoke: binary $BIN"
echo "smoke: data dir $DATA_DIR"
start_server

call "$ADDR" list
expect_ok "reflection: list services"
for svc in "$SERVICE" "$MILESTONES" grpc.health.v1.Health; do
    grep -qx "$svc" <<<"$OUT" || fail "reflection: list shows $svc" "$OUT"
done
pass "reflection: list shows $SERVICE, $MILESTONES and grpc.health.v1.Health"

for svc in "$SERVICE" "$MILESTONES"; do
    call -d "{\"service\":\"$svc\"}" "$ADDR" grpc.health.v1.Health/Check
    expect_ok "health: Check $svc"
    [[ $(json_get 'r.get("status")') == SERVING ]] || fail "health: $svc is SERVING" "$OUT"
    pass "health: $svc is SERVING"
done

call "$ADDR" describe "$SERVICE"
expect_ok "reflection: describe $SERVICE"
grep -q 'atomically' <<<"$OUT" || fail "reflection: describe carries proto comments (\"atomically\")" "$OUT"
pass "reflection: describe $SERVICE carries proto comments"

rpc PutRecords "$ALL_RECORDS"
expect_ok "PutRecords: all 16 CSV records"
got=$(json_get 'sum(1 for x in r.get("results", []) if x.get("outcome") == "WRITE_OUTCOME_CREATED")')
total=$(json_get 'len(r.get("results", []))')
[[ $got == 16 && $total == 16 ]] || fail "PutRecords: 16 x WRITE_OUTCOME_CREATED (got $got of $total results)" "$OUT"
[[ $(json_get 'r.get("firstSequence"), r.get("lastSequence")') == "('1', '16')" ]] ||
    fail "PutRecords: events 1..16" "$OUT"
FIRST_PUT=$OUT
pass "PutRecords: 16 records, all WRITE_OUTCOME_CREATED, events 1..16"

# A retry (as when the first answer was lost) with the same request_id gets
# the first response back, byte for byte (outcomes CREATED, events 1..16),
# and stores nothing: the watch's backfill below still gets events 17..19.
# The same id with a different request is refused.
rpc PutRecords "$ALL_RECORDS"
expect_ok "PutRecords: retry with the same request_id"
[[ $OUT == "$FIRST_PUT" ]] || fail "PutRecords retry: the same response as the first call" \
    "$(diff <(printf '%s\n' "$FIRST_PUT") <(printf '%s\n' "$OUT") || true)"
pass "PutRecords retry with the same request_id: the first response, byte for byte"

rpc PutRecords "$(python3 -c 'import json,sys; r = json.load(sys.stdin); r["records"].pop(); print(json.dumps(r))' <<<"$ALL_RECORDS")"
expect_error "PutRecords: the same request_id with another request" AlreadyExists
pass "PutRecords: the same request_id with another request -> AlreadyExists"

rpc PutRecords "$(python3 -c 'import json,sys; r = json.load(sys.stdin); del r["request_id"]; print(json.dumps(r))' <<<"$ALL_RECORDS")"
expect_ok "PutRecords: same 16 records again"
got=$(json_get 'sum(1 for x in r.get("results", []) if x.get("outcome") == "WRITE_OUTCOME_UNCHANGED")')
total=$(json_get 'len(r.get("results", []))')
[[ $got == 16 && $total == 16 ]] || fail "PutRecords again: 16 x WRITE_OUTCOME_UNCHANGED (got $got of $total results)" "$OUT"
[[ $(json_get 'r.get("firstSequence", "0"), r.get("lastSequence", "0")') == "('0', '0')" ]] ||
    fail "PutRecords again: no events" "$OUT"
pass "PutRecords again, without request_id: 16 records, all WRITE_OUTCOME_UNCHANGED, no events"

rpc GetDataAvailability '{}'
expect_ok "GetDataAvailability of the whole store"
got=$(json_get '" ".join("%s=%s" % (x["reporter"], x["recordCount"]) for x in r.get("reporters", []))')
[[ $got == "CHN=15 TJK=1" ]] || fail "GetDataAvailability: reporters CHN (15 records) and TJK (1) (got $got)" "$OUT"
got=$(json_get '(r.get("recordCount"), " ".join(x["value"] for x in r.get("periods", [])))')
[[ $got == "('16', '2023 2024 2025')" ]] || fail "GetDataAvailability: 16 records in 2023, 2024, 2025 (got $got)" "$OUT"
pass "GetDataAvailability: 16 records, reporters CHN (15) and TJK (1), periods 2023..2025"

rpc GetRecord "$KAZ_2025_KEY"
expect_ok "GetRecord CHN/KAZ/2025"
[[ $(json_get 'r["record"]["value"]["units"]') == 48600000000 ]] || fail "GetRecord CHN/KAZ/2025: units \"48600000000\"" "$OUT"
pass "GetRecord CHN/KAZ/FLOW_TURNOVER/2025/TOTAL/USD: units \"48600000000\""

rpc ListRecords '{"selector":{"reporters":["CHN"],"partners":["CENTRAL_ASIA"]}}'
expect_ok "ListRecords CHN x CENTRAL_ASIA"
got=$(json_get 'len(r.get("records", []))')
token=$(json_get 'r.get("nextPageToken", "")')
[[ $got == 15 && -z $token ]] || fail "ListRecords CHN x CENTRAL_ASIA: 15 records on one page (got $got, next token '$token')" "$OUT"
pass "ListRecords reporters=[CHN] partners=[CENTRAL_ASIA]: 15 records"

rpc Aggregate '{"selector":{"reporters":["CHN"],"partners":["CENTRAL_ASIA"]},"group_by":["DIMENSION_PERIOD"],"granularity":"GRANULARITY_YEAR"}'
expect_ok "Aggregate: the seed question"
got=$(json_get '" ".join(row["period"] + "=" + row["total"]["units"] for row in r["rows"])')
[[ $got == "2023=89300000000 2024=94820000000 2025=106300000000" ]] || fail "Aggregate: 89.3, 94.82, 106.3 bn USD (got $got)" "$OUT"
growth=$(json_get '"%.1f" % r["rows"][2]["yoyGrowthPercent"]')
[[ $growth == 12.1 ]] || fail "Aggregate: 2025 growth +12.1 % (got $growth)" "$OUT"
pass "Aggregate CHN x CENTRAL_ASIA per year: 89.3, 94.82, 106.3 bn USD, 2025 +12.1 %"

call -d '{"watch":{"name":"China–Central Asia trade","selector":{"reporters":["CHN"],"partners":["CENTRAL_ASIA"]},
  "granularity":"GRANULARITY_YEAR","thresholds":[{"currency_code":"USD","units":"100000000000"}],"record_high":true},
  "backfill":true}' "$ADDR" "$MILESTONES/CreateWatch"
expect_ok "CreateWatch with backfill"
got=$(json_get 'r["watch"]["id"], r.get("firstSequence"), r.get("lastSequence")')
[[ $got == "('w1', '17', '19')" ]] || fail "CreateWatch: watch w1, backfill events 17..19 (got $got)" "$OUT"
call -d '{"kinds":["EVENT_KIND_THRESHOLD_CROSSED"]}' "$ADDR" "$MILESTONES/ListEvents"
expect_ok "ListEvents: threshold crossings"
[[ $OUT == *"crossing 100 billion USD"* ]] || fail "ListEvents: a headline crossing 100 billion USD" "$OUT"
pass "CreateWatch w1 + backfill: events 17..19, headline \"… crossing 100 billion USD\""

rpc PutRecords "$REVISE_KAZ_2025"
expect_ok "PutRecords: revise CHN/KAZ/2025"
[[ $(json_get 'r["results"][0]["outcome"]') == WRITE_OUTCOME_REVISED &&
    $(json_get 'r["results"][0]["revision"]') == 2 ]] ||
    fail "PutRecords: revise CHN/KAZ/2025 to 48700000000 -> WRITE_OUTCOME_REVISED, revision \"2\"" "$OUT"
pass "PutRecords: revise CHN/KAZ/2025 to 48700000000 -> WRITE_OUTCOME_REVISED, revision \"2\""

rpc PutRecords "$BAD_BATCH"
expect_error "PutRecords: bad batch rejected" InvalidArgument
for field in reporter period commodity value.currency_code value.units; do
    grep -qF "records[1].$field" <<<"$OUT" || fail "PutRecords: bad batch names records[1].$field" "$OUT"
done
if grep -qF 'records[0]' <<<"$OUT"; then
    fail "PutRecords: bad batch blames only records[1], not records[0]" "$OUT"
fi
pass "PutRecords: bad batch -> InvalidArgument naming records[1].{reporter,period,commodity,value.currency_code,value.units}"

rpc GetRecord "$BAD_BATCH_GOOD_KEY"
expect_error "GetRecord: good record of the rejected batch was not stored" NotFound
pass "GetRecord: good record of the rejected batch -> NotFound (batch is atomic)"

scrape
expect_ok "metrics: curl http://$METRICS_ADDR/metrics"
PUT_REQUESTS='tradewatch_grpc_requests_total{method="/tradewatch.v1.TradeService/PutRecords"'
for check in \
    "$PUT_REQUESTS,code=\"OK\"}=4" \
    "$PUT_REQUESTS,code=\"ALREADY_EXISTS\"}=1" \
    "$PUT_REQUESTS,code=\"INVALID_ARGUMENT\"}=1" \
    'tradewatch_grpc_requests_total{method="/tradewatch.v1.TradeService/GetRecord",code="NOT_FOUND"}=1' \
    'tradewatch_records_stored_total{outcome="created"}=16' \
    'tradewatch_records_stored_total{outcome="revised"}=1' \
    'tradewatch_events_emitted_total{kind="record_stored"}=17' \
    'tradewatch_subscribers=0'; do
    series=${check%=*}
    got=$(metric "$series")
    [[ $got == "${check##*=}" ]] || fail "metrics: $series is ${check##*=} (got $got)" "$OUT"
done
pass "metrics: PutRecords 4 OK (one a retry) + 1 ALREADY_EXISTS + 1 INVALID_ARGUMENT, 16 records created, 1 revised, 17 record events"

stop_server
scrape
[[ $RC -ne 0 ]] || fail "metrics: the endpoint stops with the server" "$OUT"
pass "metrics: the endpoint stopped with the server"
start_server

rpc GetRecord "$KAZ_2025_KEY"
expect_ok "after restart: GetRecord CHN/KAZ/2025"
[[ $(json_get 'r["record"]["value"]["units"]') == 48700000000 && $(json_get 'r["record"].get("revision")') == 2 ]] ||
    fail "after restart: CHN/KAZ/2025 is 48700000000 at revision 2" "$OUT"
pass "after restart: CHN/KAZ/2025 is \"48700000000\" at revision \"2\""

rpc ListRecords '{"selector":{"reporters":["CHN"],"partners":["CENTRAL_ASIA"]}}'
expect_ok "after restart: ListRecords CHN x CENTRAL_ASIA"
[[ $(json_get 'len(r.get("records", []))') == 15 ]] || fail "after restart: ListRecords still 15 records" "$OUT"
pass "after restart: ListRecords still returns 15 records"

rpc PutRecords "$ALL_RECORDS"
expect_ok "after restart: PutRecords retry with the first request_id"
[[ $OUT == "$FIRST_PUT" ]] || fail "after restart: the retry gets the first response" \
    "$(diff <(printf '%s\n' "$FIRST_PUT") <(printf '%s\n' "$OUT") || true)"
pass "after restart: a retry with the first request_id still gets the first response"

stop_server

# The same file through `tradewatch import`, into a data dir of its own.
OUT=$("$BIN" import "$CSV" --data-dir "$WORK/imported" 2>&1) && RC=0 || RC=$?
expect_ok "import $CSV"
[[ $OUT == *"16 created"* ]] || fail "import: 16 records created" "$OUT"
OUT=$("$BIN" import "$CSV" --data-dir "$WORK/imported" 2>&1) && RC=0 || RC=$?
[[ $RC -eq 0 && $OUT == *"16 unchanged"* ]] || fail "import again: 16 unchanged" "$OUT"
pass "tradewatch import: 16 created, then 16 unchanged"

# ---------------------------------------------------------------------------
# TLS and a bearer token: a server started with --tls-cert/--tls-key and the
# token in TRADEWATCH_AUTH_TOKEN, called with grpcurl -cacert. The
# certificates are made with openssl; without it these checks are skipped
# (tests/security.rs makes its own with rcgen and runs the same calls).
# ---------------------------------------------------------------------------

if command -v openssl >/dev/null; then
    TLS_DIR=$WORK/tls
    mkdir -p "$TLS_DIR"
    # A CA, and a certificate it signs for localhost and 127.0.0.1.
    OUT=$(
        cd "$TLS_DIR" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
                -subj '/CN=tradewatch smoke CA' -keyout ca.key -out ca.pem 2>&1 &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -subj '/CN=localhost' -keyout server.key -out server.csr 2>&1 &&
            printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
                'keyUsage=digitalSignature' 'extendedKeyUsage=serverAuth' >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile server.ext -out server.pem 2>&1
    ) || fail "TLS: openssl makes a CA and a server certificate" "$OUT"
    TOKEN=smoke-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

    out=$WORK/server-tls.stdout
    NO_COLOR=1 TRADEWATCH_AUTH_TOKEN=$TOKEN "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/tls-data" \
        --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" >"$out" 2>"$WORK/server-tls.stderr" &
    SERVER_PID=$!
    deadline=$((SECONDS + START_TIMEOUT_S))
    until line=$(grep -s -m1 '^tradewatch listening on ' "$out"); do
        kill -0 "$SERVER_PID" 2>/dev/null || { SERVER_PID=; fail "TLS: server start (exited before listening)" "$(cat "$out")"; }
        ((SECONDS < deadline)) || fail "TLS: server start (no listening line within ${START_TIMEOUT_S}s)" "$(cat "$out")"
        sleep 0.1
    done
    ADDR=${line#tradewatch listening on }
    pass "TLS: server with --tls-cert/--tls-key and TRADEWATCH_AUTH_TOKEN listening on $ADDR"

    TLS_GRPCURL=(grpcurl -cacert "$TLS_DIR/ca.pem" -connect-timeout 5 -max-time 15)
    tls_call() {
        RC=0
        OUT=$("${TLS_GRPCURL[@]}" "$@" 2>&1) || RC=$?
    }
    KAZ_2024='{"records":[{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2024",
      "commodity":"TOTAL","value":{"currency_code":"USD","units":"43800000000"},"source":"GACC"}]}'
    KAZ_2024_KEY='{"key":{"reporter":"CHN","partner":"KAZ","flow":"FLOW_TURNOVER","period":"2024","commodity":"TOTAL","currency":"USD"}}'

    tls_call "$ADDR" list
    expect_ok "TLS: reflection with -cacert"
    grep -qx "$SERVICE" <<<"$OUT" || fail "TLS: list shows $SERVICE" "$OUT"
    pass "TLS: grpcurl -cacert lists $SERVICE (reflection needs no token)"

    RC=0
    OUT=$("${GRPCURL[@]}" "$ADDR" list 2>&1) || RC=$?
    [[ $RC -ne 0 ]] || fail "TLS: a plaintext call is refused" "$OUT"
    pass "TLS: a plaintext call is refused"

    tls_call -d "$KAZ_2024" "$ADDR" "$SERVICE/PutRecords"
    expect_error "TLS: PutRecords without a token" Unauthenticated
    tls_call -H 'authorization: Bearer wrong-token' -d "$KAZ_2024" "$ADDR" "$SERVICE/PutRecords"
    expect_error "TLS: PutRecords with a wrong token" Unauthenticated
    pass "TLS: PutRecords without a token, or with a wrong one -> Unauthenticated"

    tls_call -H "authorization: Bearer $TOKEN" -d "$KAZ_2024" "$ADDR" "$SERVICE/PutRecords"
    expect_ok "TLS: PutRecords with the token"
    [[ $(json_get 'r["results"][0]["outcome"]') == WRITE_OUTCOME_CREATED ]] ||
        fail "TLS: PutRecords with the token -> WRITE_OUTCOME_CREATED" "$OUT"
    pass "TLS: PutRecords with -H 'authorization: Bearer …' -> WRITE_OUTCOME_CREATED"

    tls_call -d "$KAZ_2024_KEY" "$ADDR" "$SERVICE/GetRecord"
    expect_ok "TLS: GetRecord without a token"
    [[ $(json_get 'r["record"]["value"]["units"]') == 43800000000 ]] || fail "TLS: GetRecord reads the record" "$OUT"
    pass "TLS: GetRecord without a token (reads are open) -> 43800000000"

    stop_server
else
    echo "smoke: SKIP TLS checks: openssl is not on PATH"
fi

echo "smoke: PASS ($CHECKS checks)"
