"""What /metrics exposes: one registry per process with prometheus-client's process and
platform collectors and ``workerpool_build_info``, and names that follow Prometheus's
conventions (docs/monitoring.md lists them)."""

from __future__ import annotations

import platform
import re
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.metrics import Metrics
from reaper.metrics import ReaperMetrics
from scaler.metrics import ScalerMetrics
from shared.health import HealthServer, package_version, process_registry

#: each process's own metrics, on the registry its Runtime gives it
PROCESSES: dict[str, Callable[[CollectorRegistry], object]] = {
    "dispatcher": Metrics, "scaler": ScalerMetrics, "reaper": ReaperMetrics,
    "agent": lambda registry: None,  # the agent exports the process's collectors only
}
#: units Prometheus's conventions name as suffixes (base units)
UNITS = ("seconds", "bytes", "ratio")
#: words that would be a unit in another base: never a suffix of ours
NOT_BASE_UNITS = ("_milliseconds", "_ms", "_minutes", "_hours", "_kilobytes", "_megabytes",
                  "_percent")


def families(process: str) -> dict[str, str]:
    """Family name → type, as a Prometheus server reads the process's /metrics."""
    registry = process_registry(process)
    PROCESSES[process](registry)
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def exported_names() -> set[str]:
    """Every sample name any of our processes can expose (histogram series included)."""
    names: set[str] = set()
    for process in PROCESSES:
        registry = process_registry(process)
        PROCESSES[process](registry)
        for metric in registry.collect():
            kind, name = metric.type, metric.name
            if kind == "counter":
                names.add(name + "_total")
            elif kind == "histogram":
                names.update(name + s for s in ("_bucket", "_count", "_sum"))
            elif kind == "info":
                names.add(name + "_info")
            else:
                names.add(name)
    return names


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_exposes_the_process_and_platform_collectors_and_its_build(
        process: str) -> None:
    got = families(process)
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_start_time_seconds",
            "process_open_fds", "python_info", "python_gc_objects_collected"} <= set(got)
    registry = process_registry(process)
    assert registry.get_sample_value("workerpool_build_info", {
        "version": package_version(), "python": platform.python_version(),
        "process": process}) == 1.0


def test_the_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    assert package_version() == version("workerpool")


def test_the_health_server_serves_the_process_registry_by_default() -> None:
    server = HealthServer(process="reaper", port=0, host="127.0.0.1").start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'workerpool_build_info{' in text and "process_resident_memory_bytes" in text
    finally:
        server.stop()


@pytest.mark.parametrize("process", [p for p in PROCESSES if p != "agent"])
def test_our_names_follow_prometheus_conventions(process: str) -> None:
    registry = CollectorRegistry()
    PROCESSES[process](registry)
    for metric in registry.collect():
        name, kind = metric.name, metric.type
        assert re.fullmatch(r"workerpool_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert not name.endswith(NOT_BASE_UNITS), f"{name}: use a base unit"
        if kind == "counter":
            # prometheus-client strips _total from the family and exposes name + _total
            assert not name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"{name}: _total is for counters"
        if kind == "histogram":
            assert name.endswith(UNITS), f"{name}: a histogram names its unit"
        if re.search(r"desired_capacity|(max|min)_size|in_service", name):
            assert name.startswith("workerpool_asg_"), f"{name}: the ASG's, named as such"


def test_the_names_others_rely_on_are_kept() -> None:
    names = exported_names()
    assert {"workerpool_claims_total", "workerpool_resubscriptions_total",
            "workerpool_heartbeat_writes_failed_total", "workerpool_refused_messages_total",
            "workerpool_unknown_fields_total", "workerpool_claim_latency_seconds_bucket",
            "workerpool_waiting_claims", "workerpool_launch_failures_total",
            "workerpool_scaler_active", "workerpool_reaper_active",
            "workerpool_asg_desired_capacity", "workerpool_asg_max_size",
            "workerpool_leases_expired_total", "workerpool_recycled_total"} <= names
    # renamed in issue 16: the ASG's gauges say whose they are
    assert not {"workerpool_desired_capacity", "workerpool_max_size"} & names
