"""The benchmarks run end to end in their smallest form (real dispatchers, the broker,
DynamoDB Local, moto), so that they cannot rot between the runs that record figures. Only
that they finish and print their tables is checked: never a timing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

RUNS = {
    "claims": (["--quick", "--sizes", "10,30", "--claims", "3", "--scan-claims", "2",
                "--idle", "0.5", "--jit-warmup", "2"], "| workers | floor p50 |"),
    "heartbeats": (["--quick", "--rates", "20", "--agents", "10", "--seconds", "1"],
                   "| offered /s (target) |"),
    "throughput": (["--quick", "--dispatchers", "1", "--workers", "5", "--claims", "5"],
                   "| dispatchers | claims/s |"),
}


@pytest.mark.parametrize("bench", sorted(RUNS))
def test_each_benchmark_runs_in_its_smallest_form_and_prints_its_table(
        bench: str, amqp_url: str, dynamodb_local: str, clean_queues: str) -> None:
    args, header = RUNS[bench]
    env = {**os.environ, "AMQP_URL": amqp_url, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", f"bench.{bench}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert header in done.stdout, done.stdout[-3000:]
