#!/usr/bin/env python3
"""A Python backend talking to tradewatch: the calls a service would make.

Usage: client.py [ADDRESS] [--check]     (ADDRESS default 127.0.0.1:50051)

Run it against a server with an empty data dir (`tradewatch serve`). It
  a) checks the health of TradeService and MilestoneService,
  b) loads data/china_central_asia.csv with one PutRecords carrying a
     request_id, and retries it with the same request_id: the retry gets the
     first response back and stores nothing,
  c) asks the seed question, China's trade with Central Asia per year, and
     prints each year's exact total and its growth,
  d) creates the quick start's watch with backfill and subscribes to the
     milestones the backfill produced,
  e) sends a bad batch and decodes the google.rpc.BadRequest it gets back,
  f) pages through China's records with page tokens.

With --check it also compares what it printed with the published figures
(EXPECTED below) and exits 1 if any differs.

The stubs come from generate.sh (into gen/ beside this file).
"""

import csv
import decimal
import os
import sys
import uuid
from decimal import Decimal

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))
try:
    from tradewatch.v1 import milestones_pb2 as ms
    from tradewatch.v1 import milestones_pb2_grpc as ms_grpc
    from tradewatch.v1 import trade_pb2 as tw
    from tradewatch.v1 import trade_pb2_grpc as tw_grpc
except ImportError as e:
    sys.exit(f"cannot import the tradewatch stubs ({e}): run {HERE}/generate.sh first")

CSV_PATH = os.path.normpath(os.path.join(HERE, "..", "..", "data", "china_central_asia.csv"))
TIMEOUT_S = 10  # every unary call; a hung server fails the run instead of hanging it
SUBSCRIBE_TIMEOUT_S = 30
# Money has 19 digits of units and 9 of nanos: exact in this precision.
MONEY_PRECISION = decimal.Context(prec=40)


def csv_rows(reporter):
    with open(CSV_PATH, newline="", encoding="utf-8") as f:
        return sum(1 for row in csv.DictReader(f) if row["reporter"] == reporter)


# What the bundled data must give (China's customs figures, data/SOURCES.md).
EXPECTED = {
    "health": {
        "tradewatch.v1.TradeService": "SERVING",
        "tradewatch.v1.MilestoneService": "SERVING",
    },
    "retry returned the first response": True,
    "retry stored nothing": True,
    "totals": {"2023": "89300000000", "2024": "94820000000", "2025": "106300000000"},
    # yoy_growth_percent to 2 decimals: 94.82 / 89.3 = +6.18 %, 106.3 / 94.82 = +12.11 %.
    "growth": {"2023": None, "2024": "+6.18", "2025": "+12.11"},
    "headlines": [  # in sequence order
        "China–Central Asia trade (CHN ↔ CENTRAL_ASIA, turnover) hit a record 94.82 billion USD in 2024, above 2023's 89.3 billion USD",
        "China–Central Asia trade (CHN ↔ CENTRAL_ASIA, turnover) reached 106.3 billion USD in 2025, crossing 100 billion USD",
        "China–Central Asia trade (CHN ↔ CENTRAL_ASIA, turnover) hit a record 106.3 billion USD in 2025, above 2024's 94.82 billion USD",
    ],
    "violation fields": ["records[1].reporter", "records[1].period"],
    "good record of the bad batch stored": False,
    "records listed": csv_rows("CHN"),  # 15: every CHN record, once
    "records repeated": 0,
}

FLOWS = {
    "export": tw.FLOW_EXPORT,
    "import": tw.FLOW_IMPORT,
    "re_export": tw.FLOW_RE_EXPORT,
    "re-export": tw.FLOW_RE_EXPORT,
    "re_import": tw.FLOW_RE_IMPORT,
    "re-import": tw.FLOW_RE_IMPORT,
    "turnover": tw.FLOW_TURNOVER,
}

# The question and the watch are about this series.
CHINA_CENTRAL_ASIA = tw.RecordSelector(reporters=["CHN"], partners=["CENTRAL_ASIA"])


def money_to_decimal(m):
    """A Money as an exact Decimal: units plus nanos billionths, no float."""
    return MONEY_PRECISION.add(Decimal(m.units), Decimal(m.nanos).scaleb(-9, MONEY_PRECISION))


def decimal_to_money(d, currency):
    units = int(d)  # towards zero, so that units and nanos share the sign
    nanos = int(MONEY_PRECISION.subtract(d, units).scaleb(9, MONEY_PRECISION))
    return tw.Money(currency_code=currency, units=units, nanos=nanos)


def plain(d):
    """89300000000, 0.5: a Decimal without exponent or trailing zeros."""
    return format(MONEY_PRECISION.normalize(d), "f")


def section(title):
    print(f"\n== {title}")


def read_csv(path):
    """The CSV rows as TradeRecords (header: reporter, partner, flow, period,
    commodity, currency, value, source, released_at)."""
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            record = tw.TradeRecord(
                reporter=row["reporter"],
                partner=row["partner"],
                flow=FLOWS[row["flow"].strip().lower()],
                period=row["period"],
                commodity=row["commodity"] or "TOTAL",
                # The value is a whole number of currency units in this file;
                # Decimal keeps a fractional one exact too.
                value=decimal_to_money(Decimal(row["value"]), row["currency"]),
                source=row["source"],
            )
            if row.get("released_at"):
                record.released_at.FromJsonString(row["released_at"])
            records.append(record)
    return records


def check_health(channel):
    section("a) health")
    health = health_pb2_grpc.HealthStub(channel)
    statuses = {}
    for service in ("tradewatch.v1.TradeService", "tradewatch.v1.MilestoneService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        statuses[service] = status
        print(f"{service}: {status}")
    return {"health": statuses}


def load_csv(trade, events_head):
    section("b) PutRecords, then the same request again")
    records = read_csv(CSV_PATH)
    # A fresh id per logical write; the retry of that write reuses it.
    request = tw.PutRecordsRequest(records=records, request_id=str(uuid.uuid4()))
    first = trade.PutRecords(request, timeout=TIMEOUT_S)
    outcomes = {}
    for result in first.results:
        name = tw.WriteOutcome.Name(result.outcome)
        outcomes[name] = outcomes.get(name, 0) + 1
    print(
        f"{len(records)} records from {os.path.basename(CSV_PATH)}:",
        ", ".join(f"{n} {name}" for name, n in sorted(outcomes.items())),
    )
    print(f"events {first.first_sequence}..{first.last_sequence}")

    # As if the first answer had been lost on the way back: send it again.
    head_before = events_head()
    retry = trade.PutRecords(request, timeout=TIMEOUT_S)
    head_after = events_head()
    same = retry == first
    print(
        f"retry with the same request_id: {'the same response' if same else 'A DIFFERENT RESPONSE'}"
        f" (events {retry.first_sequence}..{retry.last_sequence})"
    )
    print(f"last event stored before the retry {head_before}, after it {head_after}")
    return {
        "retry returned the first response": same,
        "retry stored nothing": head_before == head_after,
    }


def seed_question(trade):
    section("c) Aggregate: China's trade with Central Asia per year")
    answer = trade.Aggregate(
        tw.AggregateRequest(
            selector=CHINA_CENTRAL_ASIA,
            group_by=[tw.DIMENSION_PERIOD],
            granularity=tw.GRANULARITY_YEAR,
        ),
        timeout=TIMEOUT_S,
    )
    totals, growth = {}, {}
    for row in answer.rows:
        total = plain(money_to_decimal(row.total))
        totals[row.period] = total
        if row.HasField("yoy_growth_percent"):
            growth[row.period] = f"{row.yoy_growth_percent:+.2f}"
            change = f"{growth[row.period]} %"
        else:
            growth[row.period] = None
            change = "no previous year"
        print(f"{row.period}: {total} {row.total.currency_code} ({change}, {row.record_count} records)")
    return {"totals": totals, "growth": growth}


def watch_and_subscribe(milestones):
    section("d) CreateWatch with backfill, then Subscribe")
    created = milestones.CreateWatch(
        ms.CreateWatchRequest(
            watch=ms.Watch(
                name="China–Central Asia trade",
                selector=CHINA_CENTRAL_ASIA,
                granularity=tw.GRANULARITY_YEAR,
                thresholds=[tw.Money(currency_code="USD", units=100_000_000_000)],
                record_high=True,
            ),
            backfill=True,
            request_id=str(uuid.uuid4()),
        ),
        timeout=TIMEOUT_S,
    )
    watch = created.watch
    print(
        f"watch {watch.id} on {watch.series}: backfill stored events "
        f"{created.first_sequence}..{created.last_sequence}"
    )

    headlines = []
    if created.last_sequence == 0:
        print("the backfill produced no events")
        return {"headlines": headlines}
    stream = milestones.Subscribe(
        ms.SubscribeRequest(
            from_sequence=1,
            kinds=[ms.EVENT_KIND_THRESHOLD_CROSSED, ms.EVENT_KIND_RECORD_HIGH],
            watch_ids=[watch.id],
        ),
        timeout=SUBSCRIBE_TIMEOUT_S,
    )
    try:
        for message in stream:
            # Besides events the stream sends Progress (first, and while idle)
            # and CaughtUp (once replay reaches the live stream).
            if message.WhichOneof("message") != "event":
                continue
            event = message.event
            kind = event.WhichOneof("kind")
            headline = getattr(event, kind).headline
            headlines.append(headline)
            print(f"{event.sequence} {headline}")
            if event.sequence >= created.last_sequence:
                break  # everything the backfill produced has been seen
    finally:
        stream.cancel()
    return {"headlines": headlines}


def bad_batch(trade):
    section("e) a bad batch")
    good = tw.TradeRecord(
        reporter="CHN",
        partner="KAZ",
        flow=tw.FLOW_TURNOVER,
        period="2022",
        commodity="TOTAL",
        value=tw.Money(currency_code="USD", units=31_200_000_000),
        source="example",
    )
    bad = tw.TradeRecord(
        reporter="XYZ",
        partner="KAZ",
        flow=tw.FLOW_TURNOVER,
        period="2025-13",
        commodity="TOTAL",
        value=tw.Money(currency_code="USD", units=1_000_000),
        source="example",
    )
    fields = []
    try:
        trade.PutRecords(tw.PutRecordsRequest(records=[good, bad]), timeout=TIMEOUT_S)
        print("the bad batch was ACCEPTED")
    except grpc.RpcError as error:
        print(f"rejected: {error.code().name}")
        # The full google.rpc.Status travels in the grpc-status-details-bin
        # trailer; its details hold a BadRequest with one violation per field.
        status = rpc_status.from_call(error)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                for violation in bad_request.field_violations:
                    print(f"  {violation.field}: {violation.description}")
                    fields.append(violation.field)

    # The batch is all-or-nothing: its good record was not stored either.
    key = tw.RecordKey(
        reporter="CHN", partner="KAZ", flow=tw.FLOW_TURNOVER, period="2022", commodity="TOTAL", currency="USD"
    )
    try:
        trade.GetRecord(tw.GetRecordRequest(key=key), timeout=TIMEOUT_S)
        stored = True
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        stored = False
    print(f"records[0] (CHN/KAZ/2022) {'WAS STORED' if stored else 'was not stored'}")
    return {"violation fields": fields, "good record of the bad batch stored": stored}


def list_records(trade):
    section("f) ListRecords reporter CHN, 4 per page")
    selector = tw.RecordSelector(reporters=["CHN"])
    seen, repeated, pages, token = set(), 0, 0, ""
    while True:
        page = trade.ListRecords(
            tw.ListRecordsRequest(selector=selector, page_size=4, page_token=token),
            timeout=TIMEOUT_S,
        )
        pages += 1
        for r in page.records:
            key = (r.reporter, r.partner, r.flow, r.period, r.commodity, r.value.currency_code)
            repeated += key in seen
            seen.add(key)
        print(f"page {pages}: {len(page.records)} records{', last page' if not page.next_page_token else ''}")
        token = page.next_page_token
        if not token:
            break
    print(f"{pages} pages, {len(seen) + repeated} records, {repeated} repeated")
    return {"records listed": len(seen) + repeated, "records repeated": repeated}


def check(got):
    """Compares the figures printed with EXPECTED; returns the mismatches."""
    failed = []
    section("check")
    for name, want in EXPECTED.items():
        ok = got.get(name) == want
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print(f"     expected {want!r}\n     got      {got.get(name)!r}")
            failed.append(name)
    return failed


def main(argv):
    args = [a for a in argv if a != "--check"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.exit(__doc__.split("\n\n")[1])
    address = args[0] if args else "127.0.0.1:50051"

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
        print(f"connected to {address}")
        trade = tw_grpc.TradeServiceStub(channel)
        milestones = ms_grpc.MilestoneServiceStub(channel)

        def events_head():
            """The last event sequence stored (0 on an empty log)."""
            return milestones.ListEvents(ms.ListEventsRequest(limit=1), timeout=TIMEOUT_S).head_sequence

        got = {}
        got.update(check_health(channel))
        got.update(load_csv(trade, events_head))
        got.update(seed_question(trade))
        got.update(watch_and_subscribe(milestones))
        got.update(bad_batch(trade))
        got.update(list_records(trade))

    if "--check" in argv:
        failed = check(got)
        print()
        if failed:
            print(f"check FAILED: {', '.join(failed)}")
        print(f"check: {len(EXPECTED) - len(failed)} passed, {len(failed)} failed")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except grpc.RpcError as error:
        sys.exit(f"call failed: {error.code().name}: {error.details()}")
    except grpc.FutureTimeoutError:
        sys.exit(f"no server answering within {TIMEOUT_S}s")
