"""bench/run: the remediation runner measured side by side with its peers, on this machine's lab.

Benchmarks, not tests: nothing here asserts; every figure goes to bench/results/<stamp>-<size>.json
and bench/results/summary.md (plus PNG plots), and the table is printed at the end. Each figure is
a median over repeated runs, peers measured in the same run, interleaved, on the same hosts.

Sections (in this order; `--only` picks some):
  fleet    no-change and one-change runs over SSH, fleets of 1/10/25/50 sshd "hosts" (`--fleet-sizes`):
           pyinfra fix_mlflow vs Ansible, warm and new connections (bench/fleet.py)
  repair   drift recreate: fix_mlflow vs `docker rm -f` + `docker run` + poll, /health sampled
           every 100 ms by a separate process; MLflow's cold start as the floor; incident -> verified
  load     before/after the fix under the same bounded load: memory, SIGKILLs, errors, p50/p99
  cleanup  VACUUM ANALYZE through deploys/cleanup_database.py vs `vacuumdb --analyze`, same table
  mttr     scripts/watch over the lab: idle CPU/memory, then each incident's first log line ->
           verified fix (MTTR) for fix_mlflow, db_users, backend_reload (bench/mttr.py)

Everything runs on the lab with prefix `qtbn` (brought up at the start, down at the end) and only
ever addresses 127.0.0.1 ports of containers and sshd processes this run created.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fleet_stats
import mttr
from cgroup import container_cgroup, memory_mib, oom_kills
from common import (
    ANSIBLE_VENV,
    BENCH,
    CLEANUP,
    FIX_MLFLOW,
    PREFIX,
    REPO,
    RESULTS,
    Ctx,
    log,
    median,
    run_pyinfra_timed,
    wait_health,
)
from events import log_times
from load import run_load

from fleet import bench_fleet
from tasks.lab.harness import write_inventory
from tasks.lab.stack import SIGKILL_LINE

SECTIONS = ("fleet", "repair", "load", "cleanup", "mttr")

SIZES = {
    "quick": {"fleets": [1, 10], "fleet_reps": 3, "fleet_converge": 0, "machine_shell_hosts": 10,
              "repair_reps": 2, "incident_reps": 1,
              "load_clients": 8, "load_seconds": 15, "load_max_requests": 20000,
              "cleanup_rows": 500_000, "cleanup_reps": 3, "mttr_reps": 1},
    "full": {"fleets": [1, 10, 25, 50], "fleet_reps": 5, "fleet_converge": 10, "machine_shell_hosts": 10,
             "repair_reps": 5, "incident_reps": 2,
             "load_clients": 12, "load_seconds": 45, "load_max_requests": 60000,
             "cleanup_rows": 2_000_000, "cleanup_reps": 5, "mttr_reps": 3},
}


class Sampler:
    """bench/health_sampler.py in its own process, /health every 100 ms."""

    def __init__(self, port: int, out: Path):
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "health_sampler.py"), f"http://127.0.0.1:{port}/health",
             str(out), "--interval", "0.1", "--seconds", "400"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> list[dict]:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]


def outage(samples: list[dict], since: float) -> dict:
    """The /health outage after `since`: the last OK answer before the first failed request was
    sent -> the first OK answer after it (answer times: a request that blocked counts until it
    answered; samples without `end` are taken as instant)."""
    after = [s for s in samples if s["t"] >= since - 1.0]
    failed = [s for s in after if not s["ok"] and s["t"] >= since]
    if not failed:
        return {"downtime_s": 0.0, "failed_samples": 0, "samples": len(after)}
    first_fail = failed[0]["t"]
    last_ok_before = max((s.get("end", s["t"]) for s in after if s["ok"] and s["t"] < first_fail), default=None)
    first_ok_after = min((s.get("end", s["t"]) for s in after if s["ok"] and s["t"] > first_fail), default=None)
    start = last_ok_before if last_ok_before is not None else first_fail
    return {"downtime_s": round(first_ok_after - start, 2) if first_ok_after else None,
            "failed_samples": sum(1 for s in after if not s["ok"]), "samples": len(after),
            "outage_from": round(start - since, 2),
            "first_ok_after": round(first_ok_after - since, 2) if first_ok_after else None}


def timeline(samples: list[dict], t0: float) -> list[list]:
    """[sent, answered, ok] per request, seconds since t0: what plots.py draws as intervals."""
    return [[round(s["t"] - t0, 3), round(s.get("end", s["t"]) - t0, 3), s["ok"]] for s in samples]


# -- 2. repair: time to verified and /health downtime ------------------------------------------

def bench_repair(ctx: Ctx) -> dict:
    name = f"{PREFIX}-mlflow"
    port = ctx.host_data["lab_ports"]["mlflow"]
    cold_name, cold_port = f"{PREFIX}-bench-cold", ctx.port(40)
    ctx.extra_containers.add(cold_name)
    inventory = write_inventory(ctx.work / "inventory_lab.py", PREFIX)
    _, _, fixed = ctx.fixed_spec()
    from dataclasses import replace
    cold_spec = replace(fixed, name=cold_name, ports=(f"127.0.0.1:{cold_port}:5000",))
    out = {"runs": [], "timelines": {}}

    def drifted(init: bool):
        """Running and healthy, but with the pre-fix server settings (4 workers, no gunicorn
        options, on-failure:3) and a roomy limit: fix_mlflow must recreate it. `init`: under
        Docker's init, as fix_mlflow makes containers (a later drift of one it made); without,
        `mlflow server` is PID 1 as the seed ran it: the one recreate that gives it the init, whose
        stop of the old container still waits out the grace (it ignores SIGTERM)."""
        ctx.run_incident_like(name, port, "2g", "on-failure:3", hook=False, init=init)
        if wait_health(port, 120) is None:
            raise RuntimeError("the drifted MLflow container never became healthy")
        time.sleep(1.5)

    methods = ["fix_mlflow", "naive", "cold", "fix_first"]
    for rep in range(ctx.cfg["repair_reps"]):
        for method in methods[rep % len(methods):] + methods[:rep % len(methods)]:
            if method == "cold":
                ctx.remove(cold_name)
                start = time.monotonic()
                ctx.docker_run_fixed(cold_spec)
                up = wait_health(cold_port, 120)
                # The stop a recreate makes of a container fix_mlflow made (under the init).
                start = time.monotonic()
                subprocess.run(["docker", "stop", "-t", "5", cold_name], capture_output=True, timeout=60)
                stop = time.monotonic() - start
                ctx.remove(cold_name)
                out["runs"].append({"method": "cold", "rep": rep, "cold_start_s": round(up, 2) if up else None,
                                    "stop_s": round(stop, 2)})
                log(f"repair: cold start {up and round(up, 2)} s, docker stop {stop:.2f} s")
                continue
            drifted(init=method != "fix_first")
            sampler = Sampler(port, ctx.work / f"health-{method}-{rep}.jsonl")
            t0 = time.time()
            start = time.monotonic()
            if method in ("fix_mlflow", "fix_first"):
                result = run_pyinfra_timed(inventory, FIX_MLFLOW)
                total = result["wall_s"]
                extra = {"returncode": result["returncode"], "changed": result["changed"]}
                if result["returncode"]:
                    extra["tail"] = result["tail"]
            else:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
                ctx.docker_run_fixed(fixed)
                up = wait_health(port, 120)
                total = round(time.monotonic() - start, 3)
                extra = {"healthy": up is not None}
            time.sleep(1.0)
            samples = sampler.stop()
            window = outage(samples, t0)
            out["runs"].append({"method": method, "rep": rep, "total_s": total, **window, **extra})
            if rep == 0:
                out["timelines"][method] = timeline(samples, t0)
            log(f"repair: {method:10} total {total} s, /health down {window['downtime_s']} s "
                f"({window['failed_samples']} failed samples)")

    # The incident itself: MLflow OOM-killed (4 workers, 420 MiB, the lab's gunicorn hook) ->
    # fix_mlflow -> verified. Before the run /health is already failing: report time to verified.
    for rep in range(ctx.cfg["incident_reps"]):
        ctx.run_incident_like(name, port, "420m", "on-failure:3", hook=True)
        container = ctx.client.containers.get(name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and SIGKILL_LINE not in container.logs().decode(errors="replace"):
            time.sleep(1)
        sigkilled = SIGKILL_LINE in container.logs().decode(errors="replace")
        sampler = Sampler(port, ctx.work / f"health-incident-{rep}.jsonl")
        t0 = time.time()
        result = run_pyinfra_timed(inventory, FIX_MLFLOW)
        time.sleep(1.0)
        samples = sampler.stop()
        first_ok = min((s["t"] - t0 for s in samples if s["ok"] and s["t"] >= t0), default=None)
        was_up = any(s["ok"] for s in samples if s["t"] < t0)
        run = {"method": "incident", "rep": rep, "total_s": result["wall_s"], "returncode": result["returncode"],
               **outage(samples, t0),
               "changed": result["changed"], "incident_reproduced": sigkilled, "healthy_before": was_up,
               "first_health_ok_s": round(first_ok, 2) if first_ok is not None else None}
        if result["returncode"]:
            run["tail"] = result["tail"]
        out["runs"].append(run)
        if rep == 0:
            out["timelines"]["incident"] = timeline(samples, t0)
        log(f"repair: incident -> verified in {result['wall_s']} s (first /health OK at "
            f"{run['first_health_ok_s']} s; SIGKILL reproduced: {sigkilled})")

    def med(method, key):
        return median(r.get(key) for r in out["runs"] if r["method"] == method)

    floor = med("cold", "cold_start_s")
    out["summary"] = {
        "cold_start_s": floor,
        "stop_under_init_s": med("cold", "stop_s"),
        "fix_mlflow_total_s": med("fix_mlflow", "total_s"),
        "fix_mlflow_downtime_s": med("fix_mlflow", "downtime_s"),
        "fix_first_total_s": med("fix_first", "total_s"),
        "fix_first_downtime_s": med("fix_first", "downtime_s"),
        "naive_total_s": med("naive", "total_s"),
        "naive_downtime_s": med("naive", "downtime_s"),
        "incident_to_verified_s": med("incident", "total_s"),
        "incident_first_health_ok_s": med("incident", "first_health_ok_s"),
        "incident_downtime_s": med("incident", "downtime_s"),
        "downtime_vs_floor": (round(med("fix_mlflow", "downtime_s") / floor, 2)
                              if floor and med("fix_mlflow", "downtime_s") is not None else None),
        "naive_downtime_vs_floor": (round(med("naive", "downtime_s") / floor, 2)
                                    if floor and med("naive", "downtime_s") is not None else None),
    }
    return out


# -- 3. memory and stability under load --------------------------------------------------------

class MemorySampler:
    """The container's memory and OOM kills from its cgroup (bench/cgroup.py), every 0.5 s, in a
    thread: `samples` [(seconds, MiB)], `ooms` [seconds at which the oom_kill counter rose, once
    per kill]."""

    def __init__(self, container_id: str, interval: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self.ooms: list[float] = []
        self.start = time.time()
        self.folder = container_cgroup(container_id)
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        last = oom_kills(self.folder) if self.folder else None
        while self.folder and not self.done.wait(self.interval):
            t = round(time.time() - self.start, 2)
            mib, kills = memory_mib(self.folder), oom_kills(self.folder)
            if mib is not None:
                self.samples.append((t, mib))
            if kills is not None:
                if last is not None and kills > last:
                    self.ooms += [t] * (kills - last)
                last = kills

    def stop(self) -> list[tuple[float, float]]:
        self.done.set()
        self.thread.join(5)
        return self.samples


def bench_load(ctx: Ctx) -> dict:
    cfg = ctx.cfg
    after_name, after_port = f"{PREFIX}-mlflow", ctx.host_data["lab_ports"]["mlflow"]
    before_name, before_port = f"{PREFIX}-bench-before", ctx.port(41)
    out = {"clients": cfg["load_clients"], "seconds": cfg["load_seconds"]}
    # The fixed container: make sure it is what fix_mlflow leaves (the repair section did it;
    # when run alone, run the deploy first).
    inventory = write_inventory(ctx.work / "inventory_lab.py", PREFIX)
    run_pyinfra_timed(inventory, FIX_MLFLOW)
    for label, name, port in (("before", before_name, before_port), ("after", after_name, after_port)):
        if label == "before":
            ctx.run_incident_like(name, port, "420m", "on-failure:3", hook=True)
        else:
            ctx.client.containers.get(name).restart(timeout=20)  # same fresh start as "before"
        started_iso = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        ready = wait_health(port, 90)
        mem = MemorySampler(ctx.client.containers.get(name).id)
        load = run_load(f"http://127.0.0.1:{port}", cfg["load_clients"], cfg["load_seconds"],
                        cfg["load_max_requests"])
        time.sleep(2)
        samples = mem.stop()
        container = ctx.client.containers.get(name)
        since = dt.datetime.fromisoformat(started_iso)
        logs = container.logs(since=since, timestamps=True).decode(errors="replace")
        state = container.attrs["State"]
        values = [m for _, m in samples]
        half = values[len(values) // 2:]
        out[label] = {
            "container": name, "ready_s": round(ready, 2) if ready else None, "load": load,
            "sigkill_lines": logs.count(SIGKILL_LINE), "worker_timeouts": logs.count("WORKER TIMEOUT"),
            "restart_count": container.attrs.get("RestartCount"), "oom_killed": state.get("OOMKilled"),
            "status_after": state.get("Status"),
            "memory_peak_mib": max(values) if values else None,
            "memory_steady_mib": round(statistics.median(half), 1) if half else None,
            "memory_limit": container.attrs["HostConfig"].get("Memory"),
            "memory_series": samples,
            # on the memory series' time axis (seconds since its sampler started)
            "load_offset_s": round(load["started_epoch"] - mem.start, 2),
            "sigkill_s": [round(t - mem.start, 2) for t in log_times(logs, SIGKILL_LINE)],
            "oom_kills_s": mem.ooms, "memory_source": str(mem.folder) if mem.folder else None,
        }
        log(f"load: {label:6} {load['requests']} requests, ok {load['ok']}, 5xx {load['http_5xx']}, "
            f"conn errors {load['connection_errors']}, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
            f"peak {out[label]['memory_peak_mib']} MiB, SIGKILL lines {out[label]['sigkill_lines']}, "
            f"OOM kills {len(mem.ooms)}, "
            f"restarts {out[label]['restart_count']}, status {state.get('Status')}")
        if label == "before":
            ctx.remove(name)
    return out


# -- 4. cleanup: VACUUM ANALYZE through the deploy vs vacuumdb ----------------------------------

def bench_cleanup(ctx: Ctx) -> dict:
    rows = ctx.cfg["cleanup_rows"]
    table = "bench_bloat"
    ctx.lab.psql(f"DROP TABLE IF EXISTS {table}; "
                 f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL) "
                 "WITH (autovacuum_enabled = false); "
                 f"INSERT INTO {table} SELECT g, 0, repeat('x', 100) FROM generate_series(1, {rows}) g; "
                 f"VACUUM ANALYZE {table};")
    overrides = {"cleanup": {"foreign_keys": "delete_dependents", "max_share": 0.5, "vacuum_tables": [table]}}
    inventory = write_inventory(ctx.work / "inventory_cleanup.py", PREFIX, host_data=overrides)
    warm = run_pyinfra_timed(inventory, CLEANUP)  # deletes whatever test users are there, once
    log(f"cleanup: warm-up deploy {warm['wall_s']} s rc={warm['returncode']}")
    out = {"rows": rows, "runs": [], "warmup": {k: v for k, v in warm.items() if k != "tail" or warm["returncode"]}}

    def bloat() -> int:
        ctx.lab.psql(f"UPDATE {table} SET v = v + 1;")
        return int(ctx.lab.psql(f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{table}'") or 0)

    for rep in range(ctx.cfg["cleanup_reps"]):
        for method in (["vacuumdb", "deploy"] if rep % 2 == 0 else ["deploy", "vacuumdb"]):
            dead = bloat()
            if method == "vacuumdb":
                start = time.monotonic()
                proc = subprocess.run(["docker", "exec", "-u", "postgres", f"{PREFIX}-postgres", "vacuumdb",
                                       "--analyze", "--table", table, "--dbname", "quant", "--quiet"],
                                      capture_output=True, text=True, timeout=600)
                result = {"wall_s": round(time.monotonic() - start, 3), "returncode": proc.returncode}
            else:
                result = run_pyinfra_timed(inventory, CLEANUP)
                if result["returncode"] == 0:
                    result.pop("tail")
            after = int(ctx.lab.psql(f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = '{table}'") or 0)
            out["runs"].append({"method": method, "rep": rep, "dead_before": dead, "dead_after": after, **result})
            log(f"cleanup: {method:8} {result['wall_s']} s rc={result['returncode']} dead {dead} -> {after}")
    ctx.lab.psql(f"DROP TABLE IF EXISTS {table};")
    vac = median(r["wall_s"] for r in out["runs"] if r["method"] == "vacuumdb")
    dep = median(r["wall_s"] for r in out["runs"] if r["method"] == "deploy")
    out["summary"] = {"vacuumdb_s": vac, "deploy_s": dep,
                      "overhead_s": round(dep - vac, 2) if vac and dep else None,
                      "budget_s": round(0.10 * vac + 1.0, 2) if vac else None}
    return out


# -- report ------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)

    def version(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": mem, "kernel": platform.release(),
            "os": version(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
            "python": platform.python_version(),
            "pyinfra": version([str(Path(sys.executable).parent / "pyinfra"), "--version"]),
            "ansible": version([str(ANSIBLE_VENV / "bin" / "ansible"), "--version"]),
            "community.docker": json.loads((ANSIBLE_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                                            / "site-packages" / "ansible_collections" / "community" / "docker"
                                            / "MANIFEST.json").read_text())["collection_info"]["version"]
            if ANSIBLE_VENV.exists() else None,
            "openssh": version(["sh", "-c", "ssh -V 2>&1"])}


def verdicts(results: dict) -> list[tuple[str, str, str]]:
    rows = []
    if "summary" in results.get("fleet", {}):
        rows += fleet_stats.verdicts(results["fleet"])
    repair = results.get("repair", {}).get("summary")
    if repair and repair.get("downtime_vs_floor") is not None:
        ratio = repair["downtime_vs_floor"]
        rows.append(("/health downtime <= 1.2x MLflow cold start",
                     f"{repair['fix_mlflow_downtime_s']} s vs {repair['cold_start_s']} s = {ratio}x",
                     "met" if ratio <= 1.2 else "NOT met"))
    if repair and repair.get("fix_mlflow_total_s") is not None:
        total = repair["fix_mlflow_total_s"]
        rows.append(("repair (a drifted container fix_mlflow made, under the init) -> verified <= 6 s",
                     f"{total} s (the one recreate that adds the init to a container without it: "
                     f"{repair.get('fix_first_total_s')} s)", "met" if total <= 6 else "NOT met"))
    load = results.get("load", {}).get("after")
    if load:
        ok = load["sigkill_lines"] == 0 and load["load"]["http_5xx"] == 0
        rows.append(("after the fix: 0 SIGKILLs, 0 5xx under the load",
                     f"{load['sigkill_lines']} SIGKILL, {load['load']['http_5xx']} 5xx, "
                     f"{load['load']['connection_errors']} connection errors",
                     "met" if ok and load["load"]["connection_errors"] == 0 else "NOT met"))
    cleanup = results.get("cleanup", {}).get("summary")
    if cleanup and cleanup.get("overhead_s") is not None:
        rows.append(("cleanup overhead < 10% + 1 s",
                     f"{cleanup['overhead_s']} s (budget {cleanup['budget_s']} s)",
                     "met" if cleanup["overhead_s"] < cleanup["budget_s"] else "NOT met"))
    if "summary" in results.get("mttr", {}):
        rows += mttr.verdicts(results["mttr"])
    return rows


def converge_failed(run: dict) -> str:
    """", N host(s) failed" for a converge run with failed hosts, else ""."""
    return f", {run['failed']} host(s) failed" if run.get("failed") else ""


def summary_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Benchmark summary ({results['size']}, {results['finished']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, {m['os']}, kernel {m['kernel']}, "
             f"Docker {m['docker']}; {m['pyinfra']}; {m['ansible']}, community.docker {m['community.docker']}; "
             f"{m['openssh']}. Total bench time {results['elapsed_s']:.0f} s.", ""]
    fleet = results.get("fleet")
    if fleet and "summary" in fleet:
        lines += [f"## 1. The fleet over SSH: {', '.join(map(str, fleet['hosts']))} hosts", "",
                  f"One MLflow container per host, managed by both tools ({fleet['memory_per_container_mib']} MiB "
                  f"each, one gunicorn worker; {fleet['memory_mib']['total']} MiB for {fleet['memory_mib']['containers']} "
                  "containers). One-change run: the last host's restart policy set to `no` by hand before each run; "
                  "each tool must report one change and put it back."
                  + (f" Sizes skipped, too big for the memory available: {fleet['skipped_sizes']}."
                     if fleet.get("skipped_sizes") else ""), ""]
        lines += fleet_stats.markdown(fleet)
        if fleet.get("shell_rc") == "stock":
            lines += ["Hosts log in with Debian's stock root `~/.bashrc` (a private mount namespace per sshd). "
                      "This machine's own root `~/.bashrc` runs `pyenv init` on every remote command (about 0.1 s "
                      "of CPU each, and concurrent shells queue on pyenv's rehash lock): the row marked "
                      "\"this machine's root shell rc\" is the same hosts with it, both tools paying it.", ""]
        conv = fleet["converge"]
        if conv:
            lines += [f"First (converging) run creating {conv['pyinfra'].get('changed')} containers, "
                      f"{fleet.get('converge_parallel', 'all')} hosts at a time (the hosts share this machine's "
                      "cores): pyinfra "
                      f"{conv['pyinfra']['wall_s']:.1f} s (verified{converge_failed(conv['pyinfra'])}), "
                      f"Ansible {conv['ansible']['wall_s']:.1f} s ({conv['ansible']['changed']} changes"
                      f"{converge_failed(conv['ansible'])}).", ""]
        settled = fleet.get("settle") or []
        if settled:
            lines += [f"Starting point: {len(settled)} untimed run(s) of each tool until neither changed anything "
                      f"(last: pyinfra {settled[-1]['pyinfra']['changed']}, Ansible {settled[-1]['ansible']['changed']} "
                      "changes).", ""]
    repair = results.get("repair")
    if repair and "summary" in repair:
        s = repair["summary"]
        lines += ["## 2. Repair and /health downtime (medians)", "",
                  "| | total | /health down |", "|---|---|---|",
                  f"| MLflow cold start (floor) | {s['cold_start_s']} s | - |",
                  f"| fix_mlflow recreate (drifted, running, under the init) -> verified | {s['fix_mlflow_total_s']} s | {s['fix_mlflow_downtime_s']} s ({s['downtime_vs_floor']}x floor) |",
                  f"| fix_mlflow recreate that adds the init (drifted, `mlflow server` as PID 1: the old one's stop waits out the 5 s grace) | {s.get('fix_first_total_s')} s | {s.get('fix_first_downtime_s')} s |",
                  f"| `docker stop -t 5` of a container as fix_mlflow makes it (under the init) | {s.get('stop_under_init_s')} s | - |",
                  f"| naive `docker rm -f` + `docker run` + poll | {s['naive_total_s']} s | {s['naive_downtime_s']} s ({s['naive_downtime_vs_floor']}x floor) |",
                  f"| incident (4 workers, 420 MiB, being OOM-killed) -> fix_mlflow verified | {s['incident_to_verified_s']} s | {s['incident_downtime_s']} s in the recreate (before it, /health flapped between OOM kills) |",
                  ""]
    load = results.get("load")
    if load and "after" in load:
        lines += [f"## 3. Under load ({load['clients']} clients, {load['seconds']} s, experiments/search)", "",
                  "| | requests ok | 5xx | connection errors | p50 | p99 | peak memory | steady memory | SIGKILL lines | restarts | status after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label in ("before", "after"):
            x = load[label]
            lines.append(f"| {label} fix | {x['load']['ok']} / {x['load']['requests']} | {x['load']['http_5xx']} | "
                         f"{x['load']['connection_errors']} | {x['load']['p50_ms']} ms | {x['load']['p99_ms']} ms | "
                         f"{x['memory_peak_mib']} MiB | {x['memory_steady_mib']} MiB | {x['sigkill_lines']} | "
                         f"{x['restart_count']} | {x['status_after']}{' (OOM-killed)' if x['oom_killed'] else ''} |")
        lines.append("")
    cleanup = results.get("cleanup")
    if cleanup and "summary" in cleanup:
        s = cleanup["summary"]
        lines += [f"## 4. VACUUM ANALYZE of a {cleanup['rows']}-row table with {cleanup['rows']} dead tuples (medians)", "",
                  f"`vacuumdb --analyze` {s['vacuumdb_s']} s; deploys/cleanup_database.py {s['deploy_s']} s; "
                  f"overhead {s['overhead_s']} s (budget 10% + 1 s = {s['budget_s']} s).", ""]
    if "summary" in results.get("mttr", {}):
        lines += mttr.markdown(results["mttr"])
    rows = verdicts(results)
    if rows:
        lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter load (< 10 min)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--keep-lab", action="store_true", help="leave the qtbn lab up afterwards")
    parser.add_argument("--fleet-sizes", type=lambda v: sorted({int(x) for x in v.split(",")}),
                        help="fleet sizes, comma-separated (default: quick 1,10; full 1,10,25,50); "
                             "100 needs about 100 x the measured container memory free")
    parser.add_argument("--fleet-reps", type=int, help="runs per tool, size and scenario (default: quick 3, full 5)")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    cfg = dict(SIZES[size])
    if args.fleet_sizes:
        cfg["fleets"] = args.fleet_sizes
    if args.fleet_reps:
        cfg["fleet_reps"] = args.fleet_reps
    sections = args.only or list(SECTIONS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qtbn-bench-"))
    started = time.monotonic()
    ctx = Ctx(size, cfg, work)
    results = {"size": size, "sections": sections, "config": ctx.cfg,
               "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}

    def interrupted(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    try:
        log(f"lab {PREFIX} at 127.0.0.1:{ctx.port_base}.. (down first, then up healthy)")
        ctx.lab.down()
        ctx.lab.up("healthy")
        for section in sections:
            log(f"== {section}")
            try:
                results[section] = {"fleet": bench_fleet, "repair": bench_repair, "load": bench_load,
                                    "cleanup": bench_cleanup, "mttr": mttr.bench_mttr}[section](ctx)
            except Exception as exc:  # one broken section still leaves the others' figures
                log(f"{section} FAILED: {type(exc).__name__}: {exc}")
                results[section] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        ctx.remove(*ctx.extra_containers)
        if not args.keep_lab:
            log(f"lab {PREFIX}: down")
            ctx.lab.down()
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    results["machine"] = machine()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{stamp}-{size}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    summary = summary_markdown(results)
    (RESULTS / "summary.md").write_text(summary + f"\nRaw figures: `bench/results/{path.name}`.\n")
    plots = subprocess.run([str(ANSIBLE_VENV / "bin" / "python"), str(BENCH / "plots.py"), str(path), str(RESULTS)],
                           capture_output=True, text=True, timeout=300)
    if plots.returncode:
        log(f"plots failed: {plots.stderr[-500:]}")
    print(summary)
    log(f"wrote {path.relative_to(REPO)}, bench/results/summary.md and the plots in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
