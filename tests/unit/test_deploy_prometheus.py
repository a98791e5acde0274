"""deploy/prometheus/ and deploy/grafana/: the alerts and the dashboard use only metrics we
export (or RabbitMQ's plugin's families that prometheus.yml scrapes, or Prometheus's ``up``),
every alert has a severity and a runbook section in docs/monitoring.md, and promtool accepts
the rules, their unit tests, the scrape config and the dashboard's queries where it is
installed (Debian: ``apt-get install prometheus``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_metrics_names import exported_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
CONFIG = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "workerpool.json").read_text())
MONITORING = (ROOT / "docs" / "monitoring.md").read_text()
RULES: list[dict[str, Any]] = [r for g in ALERTS["groups"] for r in g["rules"]]
#: rabbitmq_prometheus's per-queue metrics we use, by the /metrics/detailed family giving them
RABBITMQ = {"rabbitmq_detailed_queue_messages_ready": "queue_coarse_metrics",
            "rabbitmq_detailed_queue_messages": "queue_coarse_metrics",
            "rabbitmq_detailed_queue_consumers": "queue_consumer_count"}
#: what Prometheus itself makes for each target
PROMETHEUS_OWN = {"up"}
#: PromQL's keywords (the functions are told apart by the parenthesis that follows them)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(apt-get install prometheus); the structural tests ran")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\b\d+(\.\d+)?(ms|[smhdwy])?\b", "", e)  # numbers and durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m[0] in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(m[0])
    return names


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def known() -> set[str]:
    return exported_names() | set(RABBITMQ) | PROMETHEUS_OWN


def test_the_extractor_finds_names_not_functions_labels_or_keywords() -> None:
    expr = ('sum by (job) (rate(a_total{q=~"x\\\\.(y)"}[5m])) - on(i) b or vector(0) > '
            'histogram_quantile(0.9, c_bucket) unless d offset 5m')
    assert metric_names(expr) == {"a_total", "b", "c_bucket", "d"}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_each_alert_reads_only_metrics_that_exist(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= known(), names - known()


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    reads = {r["alert"]: metric_names(r["expr"]) for r in RULES}
    wanted = {  # issue 16 item 7: dead letters, launches, no scaler/reaper, waits, backlog
        "WorkerpoolDeadLettersGrowing": "rabbitmq_detailed_queue_messages",
        "WorkerpoolLaunchFailures": "workerpool_launch_failures_total",
        "WorkerpoolNoActiveScaler": "workerpool_scaler_active",
        "WorkerpoolNoActiveReaper": "workerpool_reaper_active",
        "WorkerpoolClaimsWaitedOver5m": "workerpool_claim_latency_seconds_bucket",
        "WorkerpoolAgentsBacklog": "rabbitmq_detailed_queue_messages_ready",
        "WorkerpoolHeartbeatWritesFailing": "workerpool_heartbeat_writes_failed_total",
    }
    for alert, metric in wanted.items():
        assert metric in reads[alert], alert
    waited = next(r for r in RULES if r["alert"] == "WorkerpoolClaimsWaitedOver5m")
    from dispatcher.metrics import LATENCY_BUCKETS

    assert 300 in LATENCY_BUCKETS and "300" in waited["expr"]  # 5 minutes is a bucket bound


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_each_alert_has_a_severity_words_and_a_runbook_section(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning")
    notes = rule["annotations"]
    assert notes["summary"] and notes["description"]
    anchor = notes["runbook_url"].rsplit("#", 1)[1]
    assert notes["runbook_url"].endswith(f"docs/monitoring.md#{anchor}")
    assert anchor == rule["alert"].lower()
    assert re.search(rf"^#+ `?{rule['alert']}`?$", MONITORING, flags=re.M), rule["alert"]


def test_alert_jobs_and_rabbitmq_families_are_those_prometheus_scrapes() -> None:
    jobs = {j["job_name"]: j for j in CONFIG["scrape_configs"]}
    for text in [r["expr"] for r in RULES] + dashboard_exprs():
        for pattern in re.findall(r'job=~"([^"]+)"', text):
            assert any(re.fullmatch(pattern, job) for job in jobs), pattern
    families = set(jobs["rabbitmq-queues"]["params"]["family"])
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    assert set(RABBITMQ.values()) <= families
    assert CONFIG["rule_files"] == ["alerts.yml"]


def test_every_dashboard_panel_reads_only_metrics_we_export() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for expr in exprs:
        names = metric_names(expr)
        assert names and names <= known(), (expr, names - known())
    # and every panel queries the data source the dashboard asks for on import
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    (var,) = DASHBOARD["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")


def test_the_dashboard_shows_what_the_alerts_watch() -> None:
    shown = set().union(*(metric_names(e) for e in dashboard_exprs()))
    watched = set().union(*(metric_names(r["expr"]) for r in RULES)) - PROMETHEUS_OWN
    assert watched <= shown, watched - shown


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@needs_promtool
def test_promtool_accepts_the_rules_their_unit_tests_and_the_config() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # as recording rules, with Grafana's $__rate_interval given a value
    rules = [{"record": f"dashboard:query_{k}:expr",
              "expr": e.replace("$__rate_interval", "5m")}
             for k, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
