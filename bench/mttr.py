"""The mttr section: the watcher's time from an incident's first log line to a verified fix.

`scripts/watch inventories/lab.py` (central placement, @local, with an audit file) over the bench's
lab. First its idle cost: CPU and resident memory of its process tree (the Python program and its
`docker logs -f` / `docker events` streams), read from /proc over ~20 s with no incident. Then, for
each incident, N repetitions, each with a watcher of its own (its throttle lives in memory: a
second incident inside the catalog's window would rightly be throttled):

  fix_mlflow      MLflow with the incident's settings (4 workers, 420 MiB, the lab's gunicorn hook
                  that makes workers the OOM victims), paused while the watcher starts, then let
                  run: gunicorn logs `Worker (pid:N) was sent SIGKILL!` by itself
  db_users        the role quant_user dropped, then one GET of the backend's /health/db: PostgreSQL
                  logs `password authentication failed for user "quant_user"`
  backend_reload  the backend replaced by one whose start prints watchfiles' real error unless
                  polling is forced (the lab's image and env, as the integration test does)

MTTR = the Docker log timestamp (`docker logs --timestamps`, the engine's clock: this machine's) of
the first matching line -> the `time` of the audit's action record (written when the remediation's
run ended and its verification passed). Also: line -> the finding record (the decision), and the
run's own duration (the action's `duration`). Medians, min and max; the goal is under 30 s each.

The pure part (timestamps, idle figures, summaries, the table) is unit-tested in
tests/unit/test_bench_mttr.py; the runtime imports live in the functions that use them, so the
test can load this file without the lab. Long because the section is one story (idle, then three
incidents, each made, watched and read back from the audit) and its arithmetic sits beside it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

GOAL_S = 30.0
IDLE_SECONDS = 20.0
INCIDENTS = ("fix_mlflow", "db_users", "backend_reload")
SIGKILL_MARK = "was sent SIGKILL! Perhaps out of memory?"
AUTH_MARK = 'password authentication failed for user "quant_user"'
WATCHFILES_LINE = ("_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
                   "Input/output error (os error 5)")
MARKS = {"fix_mlflow": SIGKILL_MARK, "db_users": AUTH_MARK, "backend_reload": WATCHFILES_LINE}


# -- pure ---------------------------------------------------------------------------------------

def docker_time(stamp: str) -> float:
    """A `docker logs --timestamps` stamp (RFC 3339, nanoseconds, Z) -> epoch seconds."""
    stamp = stamp.strip()
    if stamp.endswith("Z"):
        stamp = stamp[:-1]
    whole, _, frac = stamp.partition(".")
    seconds = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


def audit_time(stamp: str) -> float:
    """An audit record's `time` (tasks/core/watch.py: %Y-%m-%dT%H:%M:%S.%fZ) -> epoch seconds."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def first_line_time(logs: str, mark: str, since: float = 0.0) -> float | None:
    """The timestamp of the first `docker logs --timestamps` line containing `mark`, at or after
    `since` (epoch seconds); None if there is none."""
    for line in logs.splitlines():
        stamp, _, text = line.partition(" ")
        if mark in text:
            try:
                at = docker_time(stamp)
            except ValueError:
                continue
            if at >= since:
                return at
    return None


def incident_figures(first_line: float | None, records: list[dict], remediation: str) -> dict:
    """One repetition's figures from the first matching line's time and the watcher's audit
    records: the first finding that started or queued the remediation, its first action."""
    finding = next((r for r in records if r.get("kind") == "finding" and r.get("remediation") == remediation
                    and r.get("result") in ("started", "queued")), None)
    action = next((r for r in records if r.get("kind") == "action" and r.get("remediation") == remediation), None)
    out: dict = {"first_line_epoch": first_line,
                 "signature": (action or finding or {}).get("signature"),
                 "result": action.get("result") if action else None,
                 "run_s": action.get("duration") if action else None,
                 "actions": sum(1 for r in records if r.get("kind") == "action" and r.get("remediation") == remediation)}
    if first_line is not None and finding:
        out["decision_s"] = round(audit_time(finding["time"]) - first_line, 2)
    if first_line is not None and action and action.get("result") == "verified":
        out["mttr_s"] = round(audit_time(action["time"]) - first_line, 2)
    return out


def spread(values) -> dict:
    """Median, min, max (and n) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}


def summarise(runs: list[dict], goal: float = GOAL_S) -> dict:
    """Per remediation: MTTR, decision and run-duration spreads, the verified count, and the goal
    (every repetition verified and the median MTTR under `goal`)."""
    out = {}
    for remediation in INCIDENTS:
        mine = [r for r in runs if r["remediation"] == remediation]
        if not mine:
            continue
        mttr = spread(r.get("mttr_s") for r in mine)
        verified = sum(1 for r in mine if r.get("mttr_s") is not None)
        out[remediation] = {
            "reps": len(mine), "verified": verified, "mttr_s": mttr,
            "decision_s": spread(r.get("decision_s") for r in mine),
            "run_s": spread(r.get("run_s") for r in mine),
            "signatures": sorted({r["signature"] for r in mine if r.get("signature")}),
            "goal_met": verified == len(mine) and mttr["median"] is not None and mttr["median"] < goal,
        }
    return out


def descendants(parents: dict[int, int], root: int) -> set[int]:
    """`root` and every process below it, from {pid: ppid}."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return found


def idle_figures(before: dict[int, int], after: dict[int, int], seconds: float, hz: int,
                 rss_samples: list[int], main_rss_samples: list[int], pss_samples: list[int] | None = None) -> dict:
    """CPU share of one core over the window (CPU ticks of the tree's processes: the difference
    for those alive at both ends, all of theirs for those started in between) and resident memory
    (MiB; the tree's RSS sum, which counts the pages the `docker` CLI processes share once per
    process, its PSS sum, which splits them, and the Python program's own RSS), from /proc
    figures (KiB samples)."""
    ticks = sum(after[pid] - before.get(pid, 0) for pid in after)
    mib = [kib / 1024 for kib in rss_samples]
    main = [kib / 1024 for kib in main_rss_samples]
    return {"seconds": round(seconds, 1), "cpu_percent": round(100.0 * ticks / hz / seconds, 2) if seconds else None,
            "cpu_s": round(ticks / hz, 2), "processes": len(after),
            "rss_mib_median": round(statistics.median(mib), 1) if mib else None,
            "rss_mib_max": round(max(mib), 1) if mib else None,
            "python_rss_mib": round(statistics.median(main), 1) if main else None,
            "pss_mib_median": round(statistics.median(pss_samples) / 1024, 1) if pss_samples else None}


LABELS = {"fix_mlflow": "MLflow SIGKILL -> fix_mlflow",
          "db_users": "quant_user auth failure -> db_users",
          "backend_reload": "backend watchfiles error -> backend_reload"}


def markdown(result: dict) -> list[str]:
    """The section's table (and the idle line) for summary.md."""
    idle = result.get("idle") or {}
    lines = [f"## 5. Watcher MTTR (central, @local; {result.get('reps')} run(s) each; medians, min-max)", "",
             f"Idle, no incident, {idle.get('seconds')} s: {idle.get('cpu_percent')}% of one CPU, "
             f"{idle.get('rss_mib_median')} MiB resident (RSS sum"
             + (f"; PSS {idle['pss_mib_median']} MiB" if idle.get("pss_mib_median") is not None else "") + ") for the "
             f"watcher and its {idle.get('processes', 0) - 1} stream process(es) (Python alone "
             f"{idle.get('python_rss_mib')} MiB).", "",
             "| incident -> fix | verified | first line -> decision | run (remediate + verify) | "
             "first line -> verified (MTTR) | goal < 30 s |",
             "|---|---|---|---|---|---|"]

    def cell(s: dict) -> str:
        if not s or s.get("median") is None:
            return "-"
        return f"{s['median']} s ({s['min']} to {s['max']})" if s["n"] > 1 else f"{s['median']} s"

    for remediation, s in result.get("summary", {}).items():
        lines.append(f"| {LABELS[remediation]} | {s['verified']}/{s['reps']} | {cell(s['decision_s'])} | "
                     f"{cell(s['run_s'])} | {cell(s['mttr_s'])} | {'met' if s['goal_met'] else 'NOT met'} |")
    lines.append("")
    return lines


def verdicts(result: dict) -> list[tuple[str, str, str]]:
    return [(f"{LABELS[r]}: first line -> verified < 30 s",
             f"{s['mttr_s']['median']} s median of {s['reps']} ({s['verified']} verified)",
             "met" if s["goal_met"] else "NOT met") for r, s in result.get("summary", {}).items()]


# -- runtime ------------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, utime+stime ticks, RSS KiB, PSS KiB) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, IndexError):
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    except OSError:
        pss = 0
    return int(fields[1]), int(fields[11]) + int(fields[12]), rss, pss


def _tree(root: int) -> dict[int, tuple[int, int, int, int]]:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat:
                stats[int(entry.name)] = stat
    pids = descendants({pid: s[0] for pid, s in stats.items()}, root)
    return {pid: stats[pid] for pid in pids if pid in stats}


def measure_idle(pid: int, seconds: float = IDLE_SECONDS) -> dict:
    hz = os.sysconf("SC_CLK_TCK")
    first = _tree(pid)
    start = time.monotonic()
    rss, pss, main = [], [], []
    while time.monotonic() - start < seconds:
        time.sleep(1.0)
        tree = _tree(pid)
        rss.append(sum(s[2] for s in tree.values()))
        pss.append(sum(s[3] for s in tree.values()))
        main.append(tree.get(pid, (0, 0, 0, 0))[2])
    last = _tree(pid)
    return idle_figures({p: s[1] for p, s in first.items()}, {p: s[1] for p, s in last.items()},
                        time.monotonic() - start, hz, rss, main, pss)


class Watcher:
    """scripts/watch over inventories/lab.py with an audit file of its own (as the integration
    test drives it)."""

    def __init__(self, folder: Path, *args: str):
        from common import REPO

        from tasks.lab.harness import GROUP_DATA
        folder.mkdir(parents=True, exist_ok=True)
        self.audit = folder / "audit.jsonl"
        self.console = folder / "console.log"
        self.out = self.console.open("w")
        self.proc = subprocess.Popen(
            [str(REPO / "scripts" / "watch"), str(REPO / "inventories" / "lab.py"), "--audit", str(self.audit),
             "--group-data", str(GROUP_DATA), *args],
            stdout=self.out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=dict(os.environ))
        self.wait_for(lambda: "watching 1 host(s)" in self.text(), 60, "the watcher to start")
        time.sleep(3)  # the streams open `docker logs --since now`

    def text(self) -> str:
        return self.console.read_text()

    def records(self) -> list[dict]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def action(self, remediation: str) -> dict | None:
        return next((r for r in self.records() if r.get("kind") == "action"
                     and r.get("remediation") == remediation), None)

    def wait_for(self, condition, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"watcher exited {self.proc.returncode}: {self.text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}: {self.text()[-2000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)
        finally:
            self.out.close()


def _backend_db(port: int) -> int | None:
    import urllib.error
    import urllib.request
    url = f"http://127.0.0.1:{port}/health/db"
    for _ in range(60):
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    return None


def _watchfiles_backend(ctx) -> float | None:
    """The backend replaced by one whose start prints watchfiles' error unless polling is forced
    (the lab's image and env without WATCHFILES_FORCE_POLLING). Returns the error line's Docker
    timestamp."""
    from common import PREFIX
    lab = ctx.lab
    old = lab.container("backend")
    env = [e for e in old.attrs["Config"]["Env"] if not e.startswith("WATCHFILES_FORCE_POLLING=")]
    image, port = old.attrs["Config"]["Image"], lab.state["ports"]["backend"]
    old.remove(force=True)
    script = ('if [ "$WATCHFILES_FORCE_POLLING" != true ]; then '
              'echo "Traceback (most recent call last):" >&2; '
              f'echo "{WATCHFILES_LINE}" >&2; fi; exec "$@"')
    container = ctx.client.containers.run(
        image, ["sh", "-c", script, "fixture", "uvicorn", "main:app", "--host", "0.0.0.0",
                "--port", "8000", "--reload"],
        name=f"{PREFIX}-backend", detach=True, environment=env, network=lab.state["network"],
        ports={"8000/tcp": ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"},
        labels={"quantlab.prefix": PREFIX, "quantlab.service": "backend",
                "quantlab.fixture": "watchfiles-io-error"})
    for _ in range(100):
        at = first_line_time(container.logs(timestamps=True).decode(errors="replace"), WATCHFILES_LINE)
        if at is not None:
            return at
        time.sleep(0.2)
    return None


def one_incident(ctx, remediation: str, folder: Path, timeout: float = 300) -> dict:
    """One repetition: a watcher of its own, the incident, its audit; the figures."""
    from common import PREFIX, log
    name, port = f"{PREFIX}-mlflow", ctx.host_data["lab_ports"]["mlflow"]
    first_line = None
    follower = None
    if remediation == "fix_mlflow":
        ctx.run_incident_like(name, port, "420m", "on-failure:3", hook=True)
        incident = ctx.client.containers.get(name)
        # paused while the watcher starts: its own OOM kills would otherwise start before it
        incident.pause()
        try:
            watch = Watcher(folder, "--grace", "15")
        finally:
            incident.unpause()
        # fix_mlflow removes this container: its lines are kept as they come
        follower_log = (folder / "mlflow.log").open("w")
        follower = subprocess.Popen(["docker", "logs", "-f", "--timestamps", incident.id],
                                    stdout=follower_log, stderr=subprocess.STDOUT)
    else:
        if remediation == "db_users" and "quant_user" in ctx.lab.psql(
                "SELECT rolname FROM pg_roles WHERE rolname = 'quant_user';").split():
            ctx.lab.psql("DROP OWNED BY quant_user; DROP ROLE quant_user;")
        watch = Watcher(folder, "--grace", "15")
    since = time.time() - 1.0
    try:
        if remediation == "db_users":
            status = _backend_db(ctx.lab.state["ports"]["backend"])
            if status != 503:
                log(f"mttr: /health/db answered {status}, not 503: no auth failure?")
        elif remediation == "backend_reload":
            first_line = _watchfiles_backend(ctx)
        watch.wait_for(lambda: watch.action(remediation), timeout, f"{remediation} to end")
        if remediation == "fix_mlflow":
            first_line = first_line_time((folder / "mlflow.log").read_text(errors="replace"), SIGKILL_MARK)
        elif remediation == "db_users":
            logs = ctx.lab.container("postgres").logs(timestamps=True, since=int(since)).decode(errors="replace")
            first_line = first_line_time(logs, AUTH_MARK, since)
        time.sleep(1.0)
    finally:
        code = watch.stop()
        if follower:
            follower.terminate()
            follower.wait(timeout=10)
    run = {"remediation": remediation, **incident_figures(first_line, watch.records(), remediation),
           "watcher_exit": code}
    log(f"mttr: {remediation}: {run.get('result')} ({run.get('signature')}), first line -> decision "
        f"{run.get('decision_s')} s, run {run.get('run_s')} s, first line -> verified {run.get('mttr_s')} s")
    return run


def bench_mttr(ctx) -> dict:
    from common import RESULTS, log
    reps = ctx.cfg["mttr_reps"]
    out: dict = {"reps": reps, "goal_s": GOAL_S, "runs": []}
    # the idle cost: a watcher over the healthy lab, no incident
    watch = Watcher(ctx.work / "mttr-idle")
    try:
        time.sleep(2)
        out["idle"] = measure_idle(watch.proc.pid)
    finally:
        watch.stop()
    idle = out["idle"]
    log(f"mttr: idle {idle['cpu_percent']}% CPU, {idle['rss_mib_median']} MiB resident "
        f"(PSS {idle['pss_mib_median']} MiB) "
        f"({idle['processes']} processes)")
    for remediation in INCIDENTS:
        for rep in range(reps):
            try:
                run = one_incident(ctx, remediation, ctx.work / f"mttr-{remediation}-{rep}")
            except Exception as exc:  # one failed repetition still leaves the others' figures
                log(f"mttr: {remediation} rep {rep} FAILED: {type(exc).__name__}: {exc}")
                run = {"remediation": remediation, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            run["rep"] = rep
            out["runs"].append(run)
    out["summary"] = summarise(out["runs"])
    # its own table too: summary.md holds only the sections of the latest bench/run
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    (RESULTS / "mttr.md").write_text(f"# Watcher MTTR ({ctx.size}, {stamp}, {os.cpu_count()} cores)\n\n"
                                     + "\n".join(markdown(out)[2:]))
    return out
