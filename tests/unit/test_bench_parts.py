"""The benchmarks' pure parts (bench/report.py, bench/counting.py) and the counting proxy
against a fake upstream, so that the benchmarks cannot rot between runs. No timings."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import report
from bench.counting import (
    CountingProxy,
    Counts,
    capacity_units,
    items_read,
    items_written,
    operation,
    with_capacity,
)


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    seconds = [k / 1000 for k in range(1, 101)]  # 1..100 ms
    assert report.pct(seconds, 50) == pytest.approx(50)
    assert report.pct(seconds, 99) == pytest.approx(99)
    assert report.pct([0.003], 99) == pytest.approx(3)
    assert report.pct([], 50) is None


def test_quick_fills_only_the_options_left_unset() -> None:
    args = SimpleNamespace(quick=True, claims=None, sizes="10,20")
    report.fill(args, {"claims": 100, "sizes": "10,1000"}, {"claims": 10, "sizes": "10"})
    assert (args.claims, args.sizes) == (10, "10,20")
    full = report.fill(SimpleNamespace(quick=False, claims=None), {"claims": 100}, {"claims": 1})
    assert full.claims == 100


def claims_row(**extra: Any) -> dict[str, Any]:
    row = {"workers": 1000, "floor_p50": 4.0, "contract_p50": 8.0, "ours_p50": 10.0,
           "ours_p99": 20.0, "scan_p50": None, "ours_calls": 1.0, "scan_calls": None,
           "ours_reads": 0.0, "scan_reads": None, "idle_calls_s": 0.0, "idle_reads_s": 0.0,
           "ours_ops": {"TransactWriteItems": 1.0}, "ours_writes": 3.0, "ours_capacity": 6.0,
           "idle_ops": {}}
    return {**row, **extra}


def test_the_claims_table_puts_ratios_beside_the_floors_and_dashes_for_what_was_not_run(
        ) -> None:
    text = report.claims_table([claims_row()])
    head, rule, line = text.splitlines()
    assert head.count("|") == rule.count("|") == line.count("|")
    assert "| 1,000 | 4.0 | 8.0 | 10.0 / 20.0 | 2.5× | 1.2× | – |" in line
    details = report.claims_details([claims_row(failures=2)])
    assert "TransactWriteItems 1.00" in details and "idle per second none" in details
    assert "2 claims not assigned" in details


def test_heartbeat_and_throughput_tables_render_every_column() -> None:
    hb = report.heartbeats_table([{"target": 667, "offered": 650.2, "drained": 500.0,
                                   "backlog": 1234, "deepest": 2000, "cpu_ms": 1.5,
                                   "cpu_net_ms": 1.4, "calls_per_beat": 1.0}])
    assert "| 650 (667) | 500 | 1,234 (2,000) | 1.50 / 1.40 | 1.00 |" in hb
    details = report.heartbeats_details([{"target": 667, "ops": {"UpdateItem": 1.0},
                                          "publishers": 5, "window_s": 10.2,
                                          "queued_at_start": 300}])
    assert "UpdateItem 1.00" in details and "300 still queued" in details
    tp = report.throughput_table([{"dispatchers": 2, "claims_per_s": 55.0, "assigned": 200,
                                   "claims": 200, "wall_s": 3.6, "cpu_ms": 9.0,
                                   "leases_per_claim": 1.19, "lost_per_claim": 0.19},
                                  {"dispatchers": 1, "claims_per_s": 90.0, "assigned": 200,
                                   "claims": 200, "wall_s": 2.2, "cpu_ms": 3.0}])
    assert "| 2 | 55.0 | 200/200 | 3.60 | 9.00 | 1.19 (0.19) |" in tp
    assert "| 1 | 90.0 | 200/200 | 2.20 | 3.00 | – |" in tp


def test_a_recorded_block_is_inserted_before_its_anchor_then_replaced_in_place() -> None:
    doc = "# B\n\n## Claims\n\n<!-- bench:claims:end -->\n\n## Next\n"
    once = report.replace_block(doc, "claims", "before", "table 1")
    assert once.index("table 1") < once.index("<!-- bench:claims:end -->")
    again = report.replace_block(once, "claims", "before", "table 2")
    assert "table 1" not in again and again.count("<!-- bench:claims:before -->") == 1
    after = report.replace_block(again, "claims", "after", "table 3")
    assert after.index("table 2") < after.index("table 3") < after.index("## Next")
    assert report.replace_block("# B\n", "x", "y", "z").endswith(
        "<!-- bench:x:y -->\nz\n<!-- /bench:x:y -->\n")


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    rows = [claims_row(workers=n, scan_p50=n / 10) for n in (10, 1000, 10000)]
    path = report.plot_claims(rows, tmp_path / "p.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_what_a_request_reads_and_writes_is_counted_by_operation() -> None:
    assert operation("DynamoDB_20120810.Query") == "Query"
    assert items_read("Query", {}, {"Count": 1, "ScannedCount": 25}) == 25
    assert items_read("Query", {"Select": "COUNT"}, {"Count": 7, "ScannedCount": 9}) == 9
    assert items_read("GetItem", {}, {}) == 1
    assert items_read("BatchGetItem", {"RequestItems": {"t": {"Keys": [1, 2, 3]}}}, {}) == 3
    assert items_written("TransactWriteItems", {"TransactItems": [{}, {}, {}]}) == 3
    assert items_written("BatchWriteItem", {"RequestItems": {"t": [{}, {}]}}) == 2
    assert items_written("Query", {}) == 0
    assert capacity_units({"ConsumedCapacity": [{"CapacityUnits": 2.0},
                                                {"CapacityUnits": 4.0}]}) == 6.0
    request, body = with_capacity("UpdateItem", b'{"TableName": "t"}')
    assert json.loads(body)["ReturnConsumedCapacity"] == "TOTAL" and request["TableName"] == "t"
    assert with_capacity("DescribeTable", b"{}")[1] == b"{}"
    c = Counts()
    c.add("Query", 25, 0, 0.5)
    c.plus(c.copy())
    assert (c.total_calls, c.total_reads, c.minus(Counts()).capacity) == (2, 50, 1.0)


class FakeDynamoDB(BaseHTTPRequestHandler):
    """Answers every request with a Query-like page, keeping what it was sent."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        FakeDynamoDB.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        body = json.dumps({"Count": 1, "ScannedCount": 4, "Items": [],
                           "ConsumedCapacity": {"CapacityUnits": 0.5}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDynamoDB)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeDynamoDB.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_proxy_forwards_on_a_kept_alive_connection_and_counts_what_came_back(
        upstream: str) -> None:
    with CountingProxy(upstream) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(2):  # one connection, two requests
            conn.request("POST", "/", body=b'{"TableName": "t"}',
                         headers={"X-Amz-Target": "DynamoDB_20120810.Query"})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["ScannedCount"] == 4
        conn.close()
        got = proxy.counts()
    assert got.calls == {"Query": 2} and got.reads == {"Query": 8}
    assert got.capacity == 1.0
    assert all(r["ReturnConsumedCapacity"] == "TOTAL" for r in FakeDynamoDB.seen)


# --- bench.day's pure parts (bench/dayparts.py) and its plot ------------------------------
def day_row(variant: str, **figures: Any) -> dict[str, Any]:
    row = {"variant": variant, "claims": 3, "assigned": 3, "wait_p50": 10.0,
           "wait_p95": 100.0, "wait_max": 200.0, "waited_over_1min": 1, "idle_vm_min": 50.0,
           "vm_min": 400.0, "peak_desired": 6, "boot_p50": 60.0, "boot_p90": 90.0}
    return {**row, **figures}


def test_the_day_is_seeded_ordered_and_inside_its_hours() -> None:
    from bench.dayparts import HOUR, day_trace

    trace = day_trace(24, start_h=7.0, end_h=21.0)
    assert trace == day_trace(24, start_h=7.0, end_h=21.0)
    assert [s.arrive for s in trace] == sorted(s.arrive for s in trace)
    assert all(7 * HOUR <= s.arrive < s.leave <= 21 * HOUR for s in trace)


def test_sessions_under_way_count_who_has_arrived_and_not_left() -> None:
    from bench.dayparts import Session, in_progress

    trace = [Session("a", 100, 300), Session("b", 200, 400)]
    assert in_progress(trace, 0, 500, 100) == [(0, 0), (100, 1), (200, 2), (300, 1), (400, 0)]


def test_vm_minutes_integrate_samples_in_day_minutes() -> None:
    from bench.dayparts import vm_minutes

    # 2 machines for 1 run second, then 4 for 2 run seconds, at 60x: 2 + 8 = 10 day minutes
    assert vm_minutes([(0.0, 2), (1.0, 4), (3.0, 0)], 60) == pytest.approx(10)
    assert vm_minutes([(0.0, 5)], 60) == 0


def test_ratios_compare_the_learned_target_with_the_fixed_one_of_the_same_run() -> None:
    from bench.dayparts import day_ratios

    rows = [day_row("fixed:2"), day_row("learned:1", wait_p50=5.0, wait_p95=25.0,
                                        wait_max=50.0, idle_vm_min=75.0, vm_min=440.0)]
    assert day_ratios(rows) == (
        "learned:1 ÷ fixed:2 (same run): claim wait p50 0.50×, p95 0.25×, max 0.25×, "
        "idle VM-minutes 1.50×, all VM-minutes 1.10×")
    assert day_ratios(rows[:1]) is None
    assert day_ratios([rows[0], day_row("learned:1", wait_p50=None)]) is None


def test_the_day_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    from bench.dayparts import day_trace
    from bench.dayplot import plot_day

    args = SimpleNamespace(start=8.0, end=10.0, speed=360.0, users=4)
    trace = day_trace(4, start_h=8.0, end_h=10.0)
    samples = {key: [(0.0, 2), (10.0, 3), (20.0, 2)] for key in ("free", "live", "target")}
    claims = [{"status": "assigned", "sent_s": 5.0, "wait_s": 0.5}]
    rows = [{**day_row(v), "series": {"samples": samples, "claims": claims}}
            for v in ("fixed:2", "learned:1")]
    path = plot_day(rows, trace, args, tmp_path / "day.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
