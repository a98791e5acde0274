"""Benchmarks, black box against DynamoDB Local, moto (the ASG) and the real broker
(docs/benchmarks.md): ``python -m bench`` runs the three of issue 15 in one go.

* ``bench.claims``: claim latency and DynamoDB cost per claim beside the floors and the old
  Scan claim, at 10, 1,000 and 10,000 workers; idle reads per second;
* ``bench.heartbeats``: heartbeats offered against drained for one dispatcher, CPU per beat;
* ``bench.throughput``: parallel claims on 1, 2, 3 dispatchers, CPU per claim.

``bench/scaling.py`` (the scaler on a virtual clock) and ``bench/agent_memory.py`` (an
agent's memory) are run on their own.
"""
