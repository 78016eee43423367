"""Sample GET <url> every `interval` seconds in its own process; one JSON line a sample.

    python bench/health_sampler.py http://127.0.0.1:PORT/health OUT.jsonl --seconds 120

Each line has the request's send time `t` and answer (or failure) time `end`, so a request that
blocked shows as the interval it blocked. Bounded: stops after --seconds, or on SIGTERM/SIGINT. Samples sit on a fixed grid (a slow answer
skips the grid points it overran, it does not shift the grid). Only 127.0.0.1 URLs are accepted.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        print("health_sampler: only http://127.0.0.1:<port> targets", file=sys.stderr)
        return 2
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    start = time.monotonic()
    tick = 0
    with open(args.out, "w") as out:
        while not stop and time.monotonic() - start < args.seconds:
            t = time.time()
            try:
                with urllib.request.urlopen(args.url, timeout=args.timeout) as answer:
                    ok, detail = answer.status == 200, str(answer.status)
            except urllib.error.HTTPError as exc:
                ok, detail = False, str(exc.code)
            except Exception as exc:  # refused, reset, timeout: the service is not answering
                ok, detail = False, type(exc).__name__
            out.write(json.dumps({"t": round(t, 3), "end": round(time.time(), 3), "ok": ok, "detail": detail}) + "\n")
            out.flush()
            tick = max(tick + 1, int((time.monotonic() - start) / args.interval) + 1)
            delay = start + tick * args.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
