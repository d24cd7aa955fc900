"""What an idle Prefect server costs: CPU and memory of `prefect server start` serving nothing,
with Prefect's default loop services (the baseline) against the shared server's `IDLE_SETTINGS`
(flows/_server.py), in the same run.

Each server starts on a fresh SQLite home in a temporary folder, answers /health, is left alone
for `--settle` seconds, then its CPU time (user + system, the server and its children) is read
before and after `--window` seconds. The last line printed is one JSON object:
default_cpu_pct, tuned_cpu_pct (percent of one core), tuned_over_default, default_rss_mb, tuned_rss_mb.

    python benchmarks/idle_server.py [--settle 30] [--window 90]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows._server import IDLE_SETTINGS  # noqa: E402


def idle_cost(home: Path, settings: dict[str, str], settle_s: float, window_s: float) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_SERVICES_")}
    env.update(settings, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--analytics-off"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(1)
        time.sleep(settle_s)
        tree = psutil.Process(server.pid)

        def cpu() -> float:
            total = 0.0
            for process in [tree, *tree.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        before = cpu()
        time.sleep(window_s)
        return {"cpu_pct": round(100 * (cpu() - before) / window_s, 2), "rss_mb": round(rss / 2**20)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after start before measuring")
    parser.add_argument("--window", type=float, default=90.0, help="seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainflow-idle-") as tmp:
        default = idle_cost(Path(tmp) / "default", {}, args.settle, args.window)
        print(f"default Prefect settings: {default['cpu_pct']} % of a core, {default['rss_mb']} MB")
        tuned = idle_cost(Path(tmp) / "tuned", IDLE_SETTINGS, args.settle, args.window)
        print(f"trainflow's IDLE_SETTINGS: {tuned['cpu_pct']} % of a core, {tuned['rss_mb']} MB")
    print(json.dumps({"default_cpu_pct": default["cpu_pct"], "tuned_cpu_pct": tuned["cpu_pct"],
                      "tuned_over_default": round(tuned["cpu_pct"] / default["cpu_pct"], 3) if default["cpu_pct"] else None,
                      "default_rss_mb": default["rss_mb"], "tuned_rss_mb": tuned["rss_mb"], "window_s": args.window}))


if __name__ == "__main__":
    main()
