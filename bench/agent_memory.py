"""Resident memory of a running agent after N heartbeats, next to two baselines, in one run.

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python bench/agent_memory.py

Measures VmRSS (and VmHWM, the peak) from /proc/<pid>/status of:
  1. a bare interpreter:       python -c "import time; time.sleep(60)"
  2. python importing pika only
  3. a real ``python -m agent`` (fake IMDS, fake code-server, the real broker) after 20
     heartbeats and again after HEARTBEATS (default 200) at HEARTBEAT_INTERVAL (default
     0.1 s), so that growth (a leak) would show
and prints one JSON line per process and a Markdown table for docs/agent.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.fakes import FakeCodeServer, FakeImds  # noqa: E402
from sim.tap import AgentsTap  # noqa: E402


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def measure_idle(code: str, settle: float = 1.5) -> dict[str, int]:
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(settle)
        return status_kb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def measure_agent(amqp_url: str, checkpoints: list[int], interval: float
                  ) -> list[dict[str, int]]:
    with FakeImds(instance_id="i-0bench0memory0") as imds, FakeCodeServer() as cs, \
            AgentsTap(amqp_url) as tap:
        env = {**os.environ, "AMQP_URL": amqp_url, "HEALTH_PORT": "0",
               "HEARTBEAT_INTERVAL": str(interval), "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
               "CODE_SERVER_URL": cs.url}
        proc = subprocess.Popen([sys.executable, "-m", "agent"], env=env, cwd=ROOT,
                                stderr=subprocess.DEVNULL)
        try:
            out = []
            deadline = time.monotonic() + max(checkpoints) * interval * 3 + 30
            for heartbeats in checkpoints:
                while len(tap.of(imds.instance_id, "heartbeat")) < heartbeats:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the agent did not send its heartbeats")
                    time.sleep(0.05)
                out.append({**status_kb(proc.pid), "heartbeats": heartbeats})
            return out
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> int:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    heartbeats = int(os.environ.get("HEARTBEATS", "200"))
    interval = float(os.environ.get("HEARTBEAT_INTERVAL", "0.1"))
    rows = {
        "bare python (sleep)": measure_idle("import time; time.sleep(60)"),
        "python + import pika": measure_idle("import pika, time; time.sleep(60)"),
    }
    for row in measure_agent(amqp_url, [20, heartbeats], interval):
        rows[f"agent after {row['heartbeats']} heartbeats"] = row
    for name, row in rows.items():
        print(json.dumps({"process": name, **row}))
    print(f"\npython {sys.version.split()[0]}\n")
    print("| process | VmRSS (MB) | of which private (RssAnon) | VmHWM peak (MB) |\n"
          "|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['VmRSS'] / 1024:.1f} | {row['RssAnon'] / 1024:.1f} "
              f"| {row['VmHWM'] / 1024:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
