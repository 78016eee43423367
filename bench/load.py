"""A bounded load generator for MLflow's REST API: N client threads for a fixed time.

    python bench/load.py http://127.0.0.1:PORT --clients 8 --seconds 20 --max-requests 40000

Each client POSTs /api/2.0/mlflow/experiments/search in a loop (a new connection each request, as
gunicorn's sync workers close them) until the time is up or the shared request budget is spent.
Only 127.0.0.1 targets are accepted. Prints one JSON object: requests, ok, 5xx, other HTTP errors,
connection errors, p50/p99 latency of successful requests (ms), requests per second, and per
second since the start the requests answered ok and failed (`per_second`: [second, ok, failed]).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

PATH = "/api/2.0/mlflow/experiments/search"


def run_load(base: str, clients: int, seconds: float, max_requests: int, timeout: float = 10.0) -> dict:
    if not base.startswith("http://127.0.0.1:"):
        raise ValueError("load: only http://127.0.0.1:<port> targets")
    body = json.dumps({"max_results": 100}).encode()
    lock = threading.Lock()
    budget = [max_requests]
    latencies: list[float] = []
    counts = {"requests": 0, "ok": 0, "http_5xx": 0, "http_other": 0, "connection_errors": 0}
    errors: dict[str, int] = {}
    per_second: dict[int, list[int]] = {}  # second since the start -> [ok, failed] answered in it
    started_epoch = time.time()
    load_start = time.monotonic()
    deadline = load_start + seconds

    def client():
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            request = urllib.request.Request(base + PATH, data=body,
                                             headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            kind, detail = "ok", None
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    answer.read()
            except urllib.error.HTTPError as exc:
                kind = "http_5xx" if exc.code >= 500 else "http_other"
                detail = str(exc.code)
            except Exception as exc:  # refused / reset / timeout while the server is down
                kind, detail = "connection_errors", type(exc).__name__
                time.sleep(0.05)  # do not spin on a refused port
            elapsed = (time.perf_counter() - started) * 1000
            second = int(time.monotonic() - load_start)
            with lock:
                counts["requests"] += 1
                counts[kind] += 1
                per_second.setdefault(second, [0, 0])[0 if kind == "ok" else 1] += 1
                if kind == "ok":
                    latencies.append(elapsed)
                elif detail:
                    errors[detail] = errors.get(detail, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    duration = time.monotonic() - load_start
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else None

    return {**counts, "error_kinds": errors, "clients": clients, "seconds": round(duration, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
            "rps": round(counts["ok"] / duration, 1) if duration else 0.0,
            "started_epoch": round(started_epoch, 3),
            "per_second": [[t, *per_second[t]] for t in sorted(per_second)]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-requests", type=int, default=40000)
    args = parser.parse_args()
    print(json.dumps(run_load(args.base.rstrip("/"), args.clients, args.seconds, args.max_requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
