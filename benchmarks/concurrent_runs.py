"""Concurrent runs, SQLite against PostgreSQL: the load of tests/e2e/test_concurrent_runs.py on a
Prefect server of each database in turn, in the same run.

The load (`load()` there): a fresh copy of the repo on the shrunk config, a `prefect server start` on
the database, `make deploy`, 2 process workers with the pool's limit at 2, then 20 runs of the
on-demand deployment (target ingest) created at once; the first run to hold the checkout runs the
stage, the others wait for the checkout's lock and find it up to date. For each database:

- runs_per_min: runs / (first create to last run final) * 60;
- api_p95_ms: the 95th percentile of the API calls this script makes while the runs go on (each poll
  of /flow_runs/filter and /health, timed one by one), and create_p95_ms of the 20 concurrent creates;
- db_locked: how many tracebacks of "database is locked" the server logged (the server runs with
  `IDLE_SETTINGS`: late-runs service off; what SQLite can still log is a worker's heartbeat);
- total_s: the whole measurement, server start, deploy and teardown included.

    python benchmarks/concurrent_runs.py [--runs 20] [--workers 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers, run from anywhere


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from tests.e2e.test_concurrent_runs import load, locked_sources, most_at_once

    figures: dict = {"runs": args.runs, "workers": args.workers, "cpus": os.cpu_count()}
    for database in ("sqlite", "postgres"):
        with tempfile.TemporaryDirectory(prefix=f"concurrent-{database}-") as tmp:
            start = time.perf_counter()
            result = load(Path(tmp), database, runs=args.runs, workers=args.workers)
            total = time.perf_counter() - start
        completed = sum(r["state"]["type"] == "COMPLETED" for r in result.runs)
        figures |= {f"{database}_runs_per_min": round(args.runs / result.seconds * 60, 2),
                    f"{database}_api_p95_ms": round(p95(result.api_ms), 1),
                    f"{database}_api_median_ms": round(statistics.median(result.api_ms), 1),
                    f"{database}_create_p95_ms": round(p95(result.create_ms), 1),
                    f"{database}_db_locked": locked_sources(result.server_log).total(),
                    f"{database}_completed": completed, f"{database}_most_at_once": most_at_once(result),
                    f"{database}_load_s": round(result.seconds, 1), f"{database}_total_s": round(total, 1)}
        print(f"{database}: {completed}/{args.runs} completed in {result.seconds:.1f} s "
              f"({figures[f'{database}_runs_per_min']} runs/min), API p95 {figures[f'{database}_api_p95_ms']} ms, "
              f"creates p95 {figures[f'{database}_create_p95_ms']} ms, 'database is locked' "
              f"{figures[f'{database}_db_locked']} times", flush=True)
    figures["postgres_over_sqlite_runs_per_min"] = round(figures["postgres_runs_per_min"] / figures["sqlite_runs_per_min"], 3)
    figures["postgres_over_sqlite_api_p95"] = round(figures["postgres_api_p95_ms"] / figures["sqlite_api_p95_ms"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
