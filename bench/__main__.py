"""``python -m bench``: the three benchmarks of issue 15 in one go (docs/benchmarks.md).

    AMQP_URL=amqp://guest:guest@localhost:5672/<vhost> .venv/bin/python -m bench
    ... -m bench --quick                 # a smoke run of each (about a minute)
    ... -m bench --record after          # also record the tables (and the plot) in docs/

Runs ``bench.claims``, ``bench.heartbeats`` and ``bench.throughput`` one after the other with
their defaults; ``--quick`` and ``--record LABEL`` are passed to each.
"""

from __future__ import annotations

import argparse
import sys

from bench import claims, heartbeats, throughput


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of each")
    ap.add_argument("--record", metavar="LABEL", help="record the results in docs/ under LABEL")
    ap.add_argument("--only", default="claims,heartbeats,throughput",
                    help="which of them, comma-separated")
    args = ap.parse_args(argv)
    passed = (["--quick"] if args.quick else []) + (["--record", args.record]
                                                    if args.record else [])
    runs = {"claims": claims.main, "heartbeats": heartbeats.main,
            "throughput": throughput.main}
    for name in args.only.split(","):
        print(f"\n=== {name} ===", flush=True)
        runs[name](passed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
