"""bench/run: the remediation runner measured side by side with its peers, on this machine's lab.

Benchmarks, not tests: nothing here asserts; every figure goes to bench/results/<stamp>-<size>.json
and bench/results/summary.md (plus PNG plots), and the table is printed at the end. Each figure is
a median over repeated runs, peers measured in the same run, interleaved, on the same hosts.

Sections (in this order; `--only` picks some):
  fleet    no-change run over SSH, fleets of 1/5/10 sshd "hosts": pyinfra fix_mlflow vs Ansible
  repair   drift recreate: fix_mlflow vs `docker rm -f` + `docker run` + poll, /health sampled
           every 100 ms by a separate process; MLflow's cold start as the floor; incident -> verified
  load     before/after the fix under the same bounded load: memory, SIGKILLs, errors, p50/p99
  cleanup  VACUUM ANALYZE through deploys/cleanup_database.py vs `vacuumdb --analyze`, same table

Everything runs on the lab with prefix `qtbn` (brought up at the start, down at the end) and only
ever addresses 127.0.0.1 ports of containers and sshd processes this run created.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
from load import run_load  # noqa: E402
from sshd_fleet import start_fleet, stock_shell_rc  # noqa: E402

from tasks.core.container_spec import docker_run_args, env_file_text  # noqa: E402
from tasks.core.mlflow_server import desired_container, server_spec  # noqa: E402
from tasks.core.sizes import docker_size  # noqa: E402
from tasks.lab.harness import LabHandle, free_port_base, run_pyinfra, write_inventory  # noqa: E402
from tasks.lab.inventory import lab_host_data  # noqa: E402
from tasks.lab.stack import LAB_MLFLOW_VERSION, SIGKILL_LINE, VERSION_LABEL, Lab, mlflow_command, mlflow_env  # noqa: E402
from tasks.settings import load as load_settings  # noqa: E402
from tasks.settings.mlflow import resolve_secret_env  # noqa: E402

PREFIX = "qtbn"
os.environ["QUANTLAB_PREFIX"] = PREFIX  # belt and braces: no inventory here may reach another lab
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
ANSIBLE_VENV = BENCH / ".venv-ansible"
FIX_MLFLOW = REPO / "deploys" / "fix_mlflow.py"
CLEANUP = REPO / "deploys" / "cleanup_database.py"
SECTIONS = ("fleet", "repair", "load", "cleanup")

SIZES = {
    "quick": {"fleets": [1, 5, 10], "fleet_reps": 3, "fleet_converge": False, "repair_reps": 2, "incident_reps": 1,
              "load_clients": 8, "load_seconds": 15, "load_max_requests": 20000,
              "cleanup_rows": 500_000, "cleanup_reps": 3},
    "full": {"fleets": [1, 5, 10], "fleet_reps": 7, "fleet_converge": True, "repair_reps": 5, "incident_reps": 2,
             "load_clients": 12, "load_seconds": 45, "load_max_requests": 60000,
             "cleanup_rows": 2_000_000, "cleanup_reps": 5},
}


def log(message: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# -- the lab and its containers ----------------------------------------------------------------

class Ctx:
    def __init__(self, size: str, work: Path):
        self.size = size
        self.cfg = SIZES[size]
        self.work = work
        self.client = docker.from_env()
        self.port_base = free_port_base(29300, span=60)
        self.lab = LabHandle(PREFIX, self.port_base)
        self.group_defaults = runpy.run_path(str(REPO / "inventories" / "group_data" / "all.py"))
        self.extra_containers: set[str] = set()

    # ports: lab +0..+4; pyinfra fleet +10..; Ansible fleet +25..; cold start +40; before-fix +41
    def port(self, offset: int) -> int:
        return self.port_base + offset

    @property
    def host_data(self) -> dict:
        return lab_host_data(PREFIX)

    def settings(self, mlflow_overrides: dict | None = None):
        data = self.host_data
        return load_settings("mlflow", "bench", {**data["mlflow"], **(mlflow_overrides or {})})

    def fixed_spec(self, mlflow_overrides: dict | None = None):
        """The container spec fix_mlflow makes for these settings (MLflow 2.9.2, the lab image)."""
        settings = self.settings(mlflow_overrides)
        server = server_spec(settings, LAB_MLFLOW_VERSION)
        spec = desired_container(settings, server, resolve_secret_env("bench", settings))
        spec.labels[VERSION_LABEL] = LAB_MLFLOW_VERSION
        return settings, server, spec

    def remove(self, *names: str):
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)

    def run_incident_like(self, name: str, port: int, memory: str, restart: str, hook: bool):
        """An MLflow container with the incident's server settings (4 gunicorn workers, no
        gunicorn options); `hook` adds the lab's gunicorn hook that makes workers the OOM victims."""
        lab = Lab(prefix=PREFIX, port_base=self.port_base)
        env = mlflow_env(lab, lab.secrets())
        if hook:
            env["GUNICORN_CMD_ARGS"] = "-c /etc/quantlab/gunicorn_incident.py"
        name_, _, count = restart.partition(":")
        policy = {"Name": name_, **({"MaximumRetryCount": int(count)} if count else {})}
        self.remove(name, name + "-previous")
        self.client.containers.run(
            self.host_data["mlflow"]["image"], mlflow_command(lab, "incident"), name=name,
            environment=env, mem_limit=memory, restart_policy=policy, network=lab.network,
            ports={"5000/tcp": ("127.0.0.1", port)}, detach=True,
            labels={"quantlab.prefix": PREFIX, VERSION_LABEL: LAB_MLFLOW_VERSION,
                    "com.docker.compose.project": PREFIX, "com.docker.compose.service": "mlflow"})
        if name != f"{PREFIX}-mlflow":
            self.extra_containers.add(name)

    def docker_run_fixed(self, spec) -> None:
        """`docker run` with exactly the arguments fix_mlflow uses (env in a 0600 file)."""
        folder = Path(tempfile.mkdtemp(prefix="qtbn-env-"))
        try:
            env_file = folder / "env"
            env_file.write_text(env_file_text(spec))
            env_file.chmod(0o600)
            subprocess.run(docker_run_args(spec, str(env_file)), check=True, capture_output=True,
                           timeout=120)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def health_ok(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as answer:
            return answer.status == 200
    except Exception:
        return False


def wait_health(port: int, seconds: float = 120.0, interval: float = 0.1) -> float | None:
    """Seconds until /health answers 200 (polled every `interval`), None after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if health_ok(port, timeout=min(1.0, interval * 10)):
            return time.monotonic() - start
        time.sleep(interval)
    return None


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
    """The /health outage after `since`: last OK before the first failure -> first OK after it."""
    after = [s for s in samples if s["t"] >= since - 1.0]
    failed = [s for s in after if not s["ok"] and s["t"] >= since]
    if not failed:
        return {"downtime_s": 0.0, "failed_samples": 0, "samples": len(after)}
    first_fail = failed[0]["t"]
    last_ok_before = max((s["t"] for s in after if s["ok"] and s["t"] < first_fail), default=None)
    first_ok_after = min((s["t"] for s in after if s["ok"] and s["t"] > first_fail), default=None)
    start = last_ok_before if last_ok_before is not None else first_fail
    return {"downtime_s": round(first_ok_after - start, 2) if first_ok_after else None,
            "failed_samples": sum(1 for s in after if not s["ok"]), "samples": len(after),
            "outage_from": round(start - since, 2),
            "first_ok_after": round(first_ok_after - since, 2) if first_ok_after else None}


# -- 1. the fleet: no-change runs over SSH -----------------------------------------------------

def ansible_env(ctx: Ctx, fleet, forks: int) -> dict:
    control = Path(tempfile.mkdtemp(prefix="qtbn-cp-"))  # short: ControlPath has a length limit
    home = ctx.work / "ansible-home"
    home.mkdir(exist_ok=True)
    return {**os.environ,
            "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TMP": "/tmp/qtbn-ansible-remote",
            "ANSIBLE_FORKS": str(forks), "ANSIBLE_PIPELINING": "True", "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": str(ANSIBLE_VENV / "bin" / "python"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "ANSIBLE_SSH_ARGS": (f"-F /dev/null -o ControlMaster=auto -o ControlPersist=60s "
                                 f"-o IdentitiesOnly=yes -o BatchMode=yes "
                                 f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes")}


def fleet_inventories(ctx: Ctx, fleet, count: int, tag: str = "") -> tuple[Path, Path]:
    base = ctx.host_data
    pyinfra_hosts, ansible_hosts = [], {}
    settings, server, _ = ctx.fixed_spec()
    secret_files = {k: v["file"] for k, v in base["mlflow"]["secret_env"].items()}
    for i, server_ in enumerate(fleet.servers[:count]):
        name = f"bench-h{i}"
        data = copy.deepcopy(base)
        data["mlflow"].update(container_name=f"{PREFIX}-fleet-p{i}",
                              ports=[f"127.0.0.1:{ctx.port(10 + i)}:5000"], compose_file=None)
        data.update(fleet.pyinfra_data(server_))
        pyinfra_hosts.append([name, data])
        ansible_hosts[name] = {
            "ansible_host": "127.0.0.1", "ansible_port": server_.port, "ansible_user": fleet.user,
            "ansible_ssh_private_key_file": str(fleet.client_key),
            "mlflow_container": f"{PREFIX}-fleet-a{i}", "mlflow_image": settings.image,
            "mlflow_command": list(server.command),
            "mlflow_env": {**server.env, **settings.env}, "mlflow_secret_files": secret_files,
            "mlflow_labels": dict(settings.labels), "mlflow_network": settings.network,
            "mlflow_port": ctx.port(25 + i), "mlflow_memory": docker_size(settings.memory_limit),
            "mlflow_memory_reservation": docker_size(settings.memory_reservation),
            "mlflow_restart_policy": settings.restart_policy,
        }
    stem = f"{count}{'-' + tag if tag else ''}"
    hosts_json = ctx.work / f"fleet{stem}.json"
    hosts_json.write_text(json.dumps(pyinfra_hosts))
    pyinfra_inv = ctx.work / f"inventory_pyinfra_{stem}.py"
    pyinfra_inv.write_text(f"import json\nhosts = [tuple(h) for h in json.load(open({str(hosts_json)!r}))]\n")
    ansible_inv = ctx.work / f"inventory_ansible_{stem}.json"
    ansible_inv.write_text(json.dumps({"all": {"children": {"mlflow": {"hosts": ansible_hosts}}}}))
    return pyinfra_inv, ansible_inv


def run_ansible(inventory: Path, env: dict, timeout: int = 900) -> dict:
    start = time.monotonic()
    proc = subprocess.run([str(ANSIBLE_VENV / "bin" / "ansible-playbook"), "-i", str(inventory),
                           str(BENCH / "ansible" / "fix_mlflow.yml")], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=BENCH / "ansible")
    wall = time.monotonic() - start
    recap = re.findall(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       proc.stdout, re.M)
    return {"wall_s": round(wall, 3), "returncode": proc.returncode,
            "changed": sum(int(r[2]) for r in recap), "failed": sum(int(r[3]) + int(r[4]) for r in recap),
            "hosts": len(recap), "tail": proc.stdout[-1500:] + proc.stderr[-800:]}


def run_pyinfra_timed(inventory: Path, deploy: Path, *args, env=None) -> dict:
    start = time.monotonic()
    run = run_pyinfra(inventory, deploy, *args, env={"QUANTLAB_PREFIX": PREFIX, **(env or {})})
    wall = time.monotonic() - start
    return {"wall_s": round(wall, 3), "returncode": run.returncode, "changed": run.changed,
            "failed": run.errors, "tail": (run.stdout[-1500:] if run.returncode else "") + run.stderr[-800:]}


def precreate_fleet(ctx: Ctx, count: int):
    """Start every fleet container exactly as each tool would create it (quick size: the tools'
    own converging runs cost minutes of MLflow cold starts on 2 cores), then wait until they answer."""
    from dataclasses import replace
    _, _, spec = ctx.fixed_spec({"compose_file": None})
    ports = []
    for i in range(count):
        for tool, offset in (("p", 10), ("a", 25)):
            name, port = f"{PREFIX}-fleet-{tool}{i}", ctx.port(offset + i)
            ctx.remove(name)
            ctx.docker_run_fixed(replace(spec, name=name, ports=(f"127.0.0.1:{port}:5000",)))
            ports.append(port)
    deadline = time.monotonic() + 240
    waiting = set(ports)
    while waiting and time.monotonic() < deadline:
        waiting = {p for p in waiting if not health_ok(p)}
        time.sleep(1)
    return sorted(waiting)


FLEET_TOOLS = ("pyinfra", "ansible", "ansible-fresh")
MACHINE_SHELL = "machine-shell"


def bench_fleet(ctx: Ctx) -> dict:
    sizes = ctx.cfg["fleets"]
    biggest = max(sizes)
    # The fleet's hosts get a stock login shell (see sshd_fleet); a second fleet of the biggest
    # size keeps this machine's own root shell, measured alongside so the difference is visible.
    fleet = start_fleet(ctx.work / "sshd", biggest, shell_rc=stock_shell_rc())
    machine_fleet = start_fleet(ctx.work / "sshd-machine", biggest) if fleet.shell_rc == "stock" else None
    names = [f"{PREFIX}-fleet-{t}{i}" for t in "pa" for i in range(biggest)]
    ctx.extra_containers.update(names)
    out = {"hosts": sizes, "shell_rc": fleet.shell_rc, "runs": [], "converge": {}, "settle": {}}
    try:
        # variant key -> (hosts, fleet, pyinfra inventory, Ansible inventory)
        variants = {str(n): (n, fleet, *fleet_inventories(ctx, fleet, n)) for n in sizes}
        if machine_fleet:
            variants[f"{biggest}/{MACHINE_SHELL}"] = (biggest, machine_fleet,
                                                      *fleet_inventories(ctx, machine_fleet, biggest, MACHINE_SHELL))
        out["variants"] = list(variants)
        warm_env = {id(f): ansible_env(ctx, f, forks=biggest) for f in (fleet, machine_fleet) if f}
        _, _, pinv, ainv = variants[str(biggest)]
        aenv = warm_env[id(fleet)]
        if ctx.cfg.get("fleet_converge", True):
            log(f"fleet: converging {biggest} hosts with pyinfra (creates {biggest} MLflow containers)")
            out["converge"]["pyinfra"] = run_pyinfra_timed(pinv, FIX_MLFLOW)
            log(f"fleet: converging {biggest} hosts with Ansible")
            out["converge"]["ansible"] = run_ansible(ainv, aenv)
            for tool, result in out["converge"].items():
                log(f"fleet: {tool} converge {result['wall_s']} s, changed {result['changed']}, rc {result['returncode']}")
                if result["returncode"] != 0:
                    log(f"fleet: {tool} converge FAILED:\n{result['tail']}")
        else:
            log(f"fleet: starting {2 * biggest} MLflow containers as the tools would create them")
            late = precreate_fleet(ctx, biggest)
            if late:
                log(f"fleet: ports {late} never answered /health")
        # One untimed run each: proves the starting point is "no change" for both tools.
        out["settle"]["pyinfra"] = run_pyinfra_timed(pinv, FIX_MLFLOW)
        out["settle"]["ansible"] = run_ansible(ainv, aenv)
        for tool, result in out["settle"].items():
            log(f"fleet: {tool} settle run {result['wall_s']} s, changed {result['changed']}, rc {result['returncode']}")
        for rep in range(ctx.cfg["fleet_reps"]):
            for turn, (key, (n, fleet_, pinv, ainv)) in enumerate(variants.items()):
                shift = (rep + turn) % len(FLEET_TOOLS)
                for tool in FLEET_TOOLS[shift:] + FLEET_TOOLS[:shift]:
                    offsets = fleet_.offsets(n)
                    if tool == "pyinfra":
                        result = run_pyinfra_timed(pinv, FIX_MLFLOW)
                    elif tool == "ansible":
                        result = run_ansible(ainv, warm_env[id(fleet_)])
                    else:  # a new ControlPath dir: no master connection left from an earlier run
                        result = run_ansible(ainv, ansible_env(ctx, fleet_, forks=biggest))
                    time.sleep(0.3)  # sshd writes its last lines after the client left
                    counts = fleet_.counts(n, offsets)
                    per_host = {k: round(sum(c[k] for c in counts) / n, 2) for k in counts[0]}
                    if result["returncode"] == 0:
                        result.pop("tail")
                    out["runs"].append({"tool": tool, "hosts": n, "variant": key, "rep": rep, **result,
                                        "per_host": per_host})
                    log(f"fleet: {tool:13} {key:>16} rep={rep} {result['wall_s']:.2f} s changed={result['changed']} "
                        f"rc={result['returncode']} per host {per_host}")
    finally:
        fleet.stop()
        if machine_fleet:
            machine_fleet.stop()
        ctx.remove(*names)
    summary = {}
    for key in out["variants"]:
        for tool in FLEET_TOOLS:
            runs = [r for r in out["runs"] if r["tool"] == tool and r["variant"] == key]
            summary[f"{tool}/{key}"] = {
                "wall_s": median(r["wall_s"] for r in runs),
                "exec_per_host": median(r["per_host"]["exec"] for r in runs),
                "sftp_per_host": median(r["per_host"]["sftp"] for r in runs),
                "connections_per_host": median(r["per_host"]["connections"] for r in runs),
                "all_no_change": all(r["changed"] == 0 and r["returncode"] == 0 for r in runs),
                "runs": len(runs)}
        p = summary[f"pyinfra/{key}"]["wall_s"]
        for tool in FLEET_TOOLS[1:]:
            a = summary[f"{tool}/{key}"]["wall_s"]
            summary[f"speedup/{tool}/{key}"] = round(a / p, 2) if p and a else None
    out["summary"] = summary
    return out


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

    def drifted():
        """Running and healthy, but with the pre-fix server settings (4 workers, no gunicorn
        options, on-failure:3) and a roomy limit: fix_mlflow must recreate it."""
        ctx.run_incident_like(name, port, "2g", "on-failure:3", hook=False)
        if wait_health(port, 120) is None:
            raise RuntimeError("the drifted MLflow container never became healthy")
        time.sleep(1.5)

    for rep in range(ctx.cfg["repair_reps"]):
        for method in (["fix_mlflow", "naive", "cold"] if rep % 2 == 0 else ["naive", "cold", "fix_mlflow"]):
            if method == "cold":
                ctx.remove(cold_name)
                start = time.monotonic()
                ctx.docker_run_fixed(cold_spec)
                up = wait_health(cold_port, 120)
                ctx.remove(cold_name)
                out["runs"].append({"method": "cold", "rep": rep, "cold_start_s": round(up, 2) if up else None})
                log(f"repair: cold start {up and round(up, 2)} s")
                continue
            drifted()
            sampler = Sampler(port, ctx.work / f"health-{method}-{rep}.jsonl")
            t0 = time.time()
            start = time.monotonic()
            if method == "fix_mlflow":
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
                out["timelines"][method] = [[round(s["t"] - t0, 2), s["ok"]] for s in samples]
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
            out["timelines"]["incident"] = [[round(s["t"] - t0, 2), s["ok"]] for s in samples]
        log(f"repair: incident -> verified in {result['wall_s']} s (first /health OK at "
            f"{run['first_health_ok_s']} s; SIGKILL reproduced: {sigkilled})")

    def med(method, key):
        return median(r.get(key) for r in out["runs"] if r["method"] == method)

    floor = med("cold", "cold_start_s")
    out["summary"] = {
        "cold_start_s": floor,
        "fix_mlflow_total_s": med("fix_mlflow", "total_s"),
        "fix_mlflow_downtime_s": med("fix_mlflow", "downtime_s"),
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
    """`docker stats` (streaming, about one sample a second) for one container, in a thread."""

    _USAGE = re.compile(r"([\d.]+)\s*([KMGT]?i?B)\s*/")
    _UNITS = {"B": 1 / 1048576, "KiB": 1 / 1024, "kB": 1 / 1024, "MiB": 1, "MB": 1, "GiB": 1024, "GB": 1024}

    def __init__(self, name: str):
        self.samples: list[tuple[float, float]] = []
        self.start = time.time()
        self.process = subprocess.Popen(["docker", "stats", "--format", "{{.MemUsage}}", name],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            match = self._USAGE.search(line.replace("\x1b[2J", "").replace("\x1b[H", ""))
            if match:
                mib = float(match.group(1)) * self._UNITS.get(match.group(2), 1)
                self.samples.append((round(time.time() - self.start, 2), round(mib, 1)))

    def stop(self) -> list[tuple[float, float]]:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
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
        mem = MemorySampler(name)
        load = run_load(f"http://127.0.0.1:{port}", cfg["load_clients"], cfg["load_seconds"],
                        cfg["load_max_requests"])
        time.sleep(2)
        samples = mem.stop()
        container = ctx.client.containers.get(name)
        logs = container.logs(since=dt.datetime.fromisoformat(started_iso)).decode(errors="replace")
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
        }
        log(f"load: {label:6} {load['requests']} requests, ok {load['ok']}, 5xx {load['http_5xx']}, "
            f"conn errors {load['connection_errors']}, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
            f"peak {out[label]['memory_peak_mib']} MiB, SIGKILL lines {out[label]['sigkill_lines']}, "
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
    fleet = results.get("fleet", {}).get("summary")
    if fleet:
        big = max(results["fleet"]["hosts"])
        for tool, what in (("ansible", "warm connection"), ("ansible-fresh", "new connection")):
            speed = fleet.get(f"speedup/{tool}/{big}")
            machine = fleet.get(f"speedup/{tool}/{big}/{MACHINE_SHELL}")
            shell = (f" (stock shell rc; {machine}x with this machine's root shell rc)"
                     if results["fleet"].get("shell_rc") == "stock" and machine else "")
            rows.append((f">= 3x faster than Ansible ({what}) at {big} hosts, no change", f"{speed}x{shell}",
                         "met" if speed and speed >= 3 else "NOT met"))
        trips = max(fleet[f"pyinfra/{n}"]["exec_per_host"] + fleet[f"pyinfra/{n}"]["sftp_per_host"]
                    for n in results["fleet"]["hosts"])
        rows.append(("<= 3 remote round trips per host (no change)", f"{trips:g}",
                     "met" if trips <= 3 else "NOT met"))
    repair = results.get("repair", {}).get("summary")
    if repair and repair.get("downtime_vs_floor") is not None:
        ratio = repair["downtime_vs_floor"]
        rows.append(("/health downtime <= 1.5x MLflow cold start",
                     f"{repair['fix_mlflow_downtime_s']} s vs {repair['cold_start_s']} s = {ratio}x",
                     "met" if ratio <= 1.5 else "NOT met"))
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
    return rows


def summary_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Benchmark summary ({results['size']}, {results['finished']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, {m['os']}, kernel {m['kernel']}, "
             f"Docker {m['docker']}; {m['pyinfra']}; {m['ansible']}, community.docker {m['community.docker']}; "
             f"{m['openssh']}. Total bench time {results['elapsed_s']:.0f} s.", ""]
    fleet = results.get("fleet")
    if fleet and "summary" in fleet:
        s = fleet["summary"]
        first = fleet["hosts"][0]
        lines += ["## 1. No-change run over SSH (medians of "
                  f"{s['pyinfra/' + str(first)]['runs']} interleaved runs)", "",
                  "| hosts | pyinfra fix_mlflow | Ansible, warm connection | Ansible, new connection | Ansible / pyinfra (warm, new) | remote commands per host: pyinfra / Ansible | SSH logins per host: pyinfra / Ansible warm / new | all no-change |",
                  "|---|---|---|---|---|---|---|---|"]
        for key in fleet.get("variants") or [str(n) for n in fleet["hosts"]]:
            p, a, f = (s[f"{t}/{key}"] for t in FLEET_TOOLS)
            label = key.replace(f"/{MACHINE_SHELL}", ", this machine's root shell rc")
            lines.append(f"| {label} | {p['wall_s']:.2f} s | {a['wall_s']:.2f} s | {f['wall_s']:.2f} s | "
                         f"{s['speedup/ansible/' + key]}x, {s['speedup/ansible-fresh/' + key]}x | "
                         f"{p['exec_per_host'] + p['sftp_per_host']:g} / {a['exec_per_host'] + a['sftp_per_host']:g} | "
                         f"{p['connections_per_host']:g} / {a['connections_per_host']:g} / {f['connections_per_host']:g} | "
                         f"{'yes' if p['all_no_change'] and a['all_no_change'] and f['all_no_change'] else 'NO'} |")
        if fleet.get("shell_rc") == "stock":
            lines += ["", "Hosts log in with Debian's stock root `~/.bashrc` (a private mount namespace per sshd). "
                      "This machine's own root `~/.bashrc` runs `pyenv init` on every remote command (about 0.1 s "
                      "of CPU each, and concurrent shells queue on pyenv's rehash lock): the row marked "
                      "\"this machine's root shell rc\" is the same fleet with it, both tools paying it."]
        conv = fleet["converge"]
        if conv:
            lines += ["", f"First (converging) run on {max(fleet['hosts'])} hosts: pyinfra {conv['pyinfra']['wall_s']:.1f} s "
                      f"({conv['pyinfra']['changed']} changes, verified), Ansible {conv['ansible']['wall_s']:.1f} s "
                      f"({conv['ansible']['changed']} changes)."]
        else:
            lines += ["", "Containers pre-created as each tool creates them (quick size); the untimed first run of "
                      f"each tool changed: pyinfra {fleet['settle']['pyinfra']['changed']}, "
                      f"Ansible {fleet['settle']['ansible']['changed']}."]
        lines.append("")
    repair = results.get("repair")
    if repair and "summary" in repair:
        s = repair["summary"]
        lines += ["## 2. Repair and /health downtime (medians)", "",
                  "| | total | /health down |", "|---|---|---|",
                  f"| MLflow cold start (floor) | {s['cold_start_s']} s | - |",
                  f"| fix_mlflow recreate (drifted, running) -> verified | {s['fix_mlflow_total_s']} s | {s['fix_mlflow_downtime_s']} s ({s['downtime_vs_floor']}x floor) |",
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
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    sections = args.only or list(SECTIONS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qtbn-bench-"))
    started = time.monotonic()
    ctx = Ctx(size, work)
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
                                    "cleanup": bench_cleanup}[section](ctx)
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
