"""The fleet section of bench/run: pyinfra fix_mlflow vs Ansible over SSH, 1 to 50 (or 100) hosts,
a no-change run and a one-change run, interleaved in a rotating order on the same hosts.

Hosts are real sshd processes on 127.0.0.1 (bench/sshd_fleet.py). Host i has one MLflow container,
`qtbn-fleet-<i>`, which both tools manage: the same settings (rendered once), the same container,
so both see exactly the same host. At 50 hosts that is 50 MLflow containers, each with one gunicorn
worker (`mlflow.workers: 1` in the fleet's settings: neither tool talks to MLflow on a no-change
run, and the one change does not depend on the worker count). One container a host and one worker
keep 50 hosts in a few GiB (measured and recorded: `memory_per_container_mib`); a size that
would not fit in the memory available is skipped and said so.

One-change run: before each tool's run, one host (the last of the size) has its container's restart
policy set to `no` by hand (`docker update --restart no`), as an operator meets it after someone
stopped the auto-restart while debugging one machine and forgot; the other hosts match. Each tool
must report exactly one change, and the policy must be back afterwards.

Each run records its wall time, its phases (bench/fleet_stats.py), the CPU seconds of the controller
(getrusage of the tool's process tree plus Ansible's detached SSH master processes), of the hosts'
sshd process trees and of the engine (dockerd, containerd), and per host the logins and remote
commands counted in the sshd logs.

Long because the section is one piece: CPU accounting from /proc, running each tool line by line,
the hosts and their containers, and the interleaved loop that ties them together.
"""
from __future__ import annotations

import copy
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from cgroup import container_cgroup, memory_mib
from common import ANSIBLE_VENV, BENCH, FIX_MLFLOW, PREFIX, Ctx, health_ok, log
from fleet_stats import TOOLS, ansible_phases, pyinfra_phases, summarize
from sshd_fleet import start_fleet

from tasks.core.sizes import docker_size
from tasks.lab.harness import GROUP_DATA, PYINFRA, REPO, PyinfraRun, free_port_base
from tasks.lab.sshd import stock_shell_rc

MACHINE_SHELL = "machine-shell"
FLEET_SETTINGS = {"compose_file": None, "workers": 1}
DRIFT_POLICY = "no"
CONTROL_PREFIX = "qtbn-cp-"
CLOCK = os.sysconf("SC_CLK_TCK")


# Hosts at a time in the timed converge (both tools): the hosts share this machine's 2 cores.
CONVERGE_PARALLEL = 2


def container_name(i: int) -> str:
    return f"{PREFIX}-fleet-{i}"


# -- CPU accounting from /proc ------------------------------------------------------------------

def proc_snapshot() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, CPU ticks of the process and of its reaped children)."""
    snap = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # after ")": state ppid ... utime(14th field overall -> index 11 here) stime cutime cstime
        snap[int(entry.name)] = (int(fields[1]), comm, sum(int(x) for x in fields[11:15]))
    return snap


def tree_ticks(snap: dict, roots: set[int]) -> dict[int, int]:
    """Ticks of every living process under `roots` (a dead one is in its reaper's children's time)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [r for r in roots if r in snap]
    while todo:
        pid = todo.pop()
        out[pid] = snap[pid][2]
        todo.extend(children.get(pid, ()))
    return out


def ssh_masters(snap: dict) -> dict[int, int]:
    """Ansible's detached `ssh` ControlMaster processes of this bench (ControlPath under qtbn-cp-)."""
    out = {}
    for pid, (_, comm, ticks) in snap.items():
        if comm == "ssh":
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if CONTROL_PREFIX.encode() in cmdline:
                out[pid] = ticks
    return out


def end_masters(control_dirs: list[Path]):
    """End the `ssh` master processes of these ControlPath folders (this bench's, by pid): the
    connections they hold would keep the hosts' per-connection sshd processes alive."""
    marks = [str(d).encode() for d in control_dirs]
    for pid in ssh_masters(proc_snapshot()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if any(mark in cmdline for mark in marks):
                os.kill(pid, 15)
        except OSError:
            continue


def delta_s(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two snapshots by the processes still alive at the second."""
    return round(sum(t - before.get(pid, 0) for pid, t in after.items()) / CLOCK, 3)


class CpuMeter:
    def __init__(self, host_roots: set[int]):
        self.host_roots = host_roots
        self.engine = {int(p) for name in ("dockerd", "containerd")
                       for p in subprocess.run(["pidof", name], capture_output=True, text=True).stdout.split()}

    def read(self) -> tuple[float, dict, dict, dict]:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        snap = proc_snapshot()
        return (usage.ru_utime + usage.ru_stime, tree_ticks(snap, self.host_roots), ssh_masters(snap),
                {p: snap[p][2] for p in self.engine if p in snap})

    def since(self, before) -> dict:
        after = self.read()
        return {"controller": round(after[0] - before[0] + delta_s(before[2], after[2]), 3),
                "hosts": delta_s(before[1], after[1]), "engine": delta_s(before[3], after[3])}


# -- running a tool, line by line ----------------------------------------------------------------

def run_lines(argv: list[str], env: dict, cwd: Path, timeout: float) -> dict:
    """Run a command; every stdout/stderr line with the seconds since the start it arrived at."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            errors="replace")
    streams: dict[str, list[tuple[float, str]]] = {"stdout": [], "stderr": []}

    def read(name, handle):
        for line in handle:
            streams[name].append((round(time.monotonic() - start, 4), line.rstrip("\n")))

    threads = [threading.Thread(target=read, args=(n, getattr(proc, n)), daemon=True) for n in streams]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    wall = time.monotonic() - start
    for thread in threads:
        thread.join(10)
    return {"returncode": proc.returncode, "wall_s": round(wall, 3), **streams,
            "stdout_text": "\n".join(line for _, line in streams["stdout"]),
            "stderr_text": "\n".join(line for _, line in streams["stderr"])}


def pyinfra_run(inventory: Path, timeout: float = 900, parallel: int | None = None) -> dict:
    limit = ["--parallel", str(parallel)] if parallel else []
    run = run_lines([str(PYINFRA), "-y", "--json", *limit, "--group-data", str(GROUP_DATA), str(inventory),
                     str(FIX_MLFLOW)],
                    {**os.environ, "QUANTLAB_PREFIX": PREFIX}, REPO, timeout)
    out = run["stdout_text"]
    results = None
    if "{" in out:
        try:
            results = json.loads(out[out.index("{"):])
        except json.JSONDecodeError:
            results = None
    parsed = PyinfraRun(run["returncode"], results, out, run["stderr_text"])
    return {"wall_s": run["wall_s"], "returncode": run["returncode"], "changed": parsed.changed,
            "failed": parsed.errors, "phases": pyinfra_phases(run["stderr"], run["wall_s"]),
            "tail": (out[-1500:] if run["returncode"] else "") + run["stderr_text"][-800:]}


RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_run(inventory: Path, env: dict, timeout: float = 900) -> dict:
    run = run_lines([str(ANSIBLE_VENV / "bin" / "ansible-playbook"), "-i", str(inventory),
                     str(BENCH / "ansible" / "fix_mlflow.yml")], {**env, "PYTHONUNBUFFERED": "1"},
                    BENCH / "ansible", timeout)
    recap = RECAP.findall(run["stdout_text"])
    return {"wall_s": run["wall_s"], "returncode": run["returncode"],
            "changed": sum(int(r[2]) for r in recap), "failed": sum(int(r[3]) + int(r[4]) for r in recap),
            "hosts": len(recap), "phases": ansible_phases(run["stdout"], run["wall_s"]),
            "tail": run["stdout_text"][-1500:] + run["stderr_text"][-800:]}


def ansible_env(ctx: Ctx, fleet, forks: int, persist: str) -> dict:
    control = Path(tempfile.mkdtemp(prefix=CONTROL_PREFIX))  # short: ControlPath has a length limit
    ctx.control_dirs.append(control)
    home = ctx.work / "ansible-home"
    home.mkdir(exist_ok=True)
    return {**os.environ,
            "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TMP": "/tmp/qtbn-ansible-remote",
            "ANSIBLE_FORKS": str(forks), "ANSIBLE_PIPELINING": "True", "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": str(ANSIBLE_VENV / "bin" / "python"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "ANSIBLE_SSH_ARGS": (f"-F /dev/null -o ControlMaster=auto -o ControlPersist={persist} "
                                 f"-o IdentitiesOnly=yes -o BatchMode=yes "
                                 f"-o UserKnownHostsFile={fleet.known_hosts} -o StrictHostKeyChecking=yes")}


# -- the hosts and their containers --------------------------------------------------------------

def fleet_inventories(ctx: Ctx, fleet, count: int, tag: str = "") -> tuple[Path, Path]:
    base = ctx.host_data
    settings, server, _ = ctx.fixed_spec(FLEET_SETTINGS)
    secret_files = {k: v["file"] for k, v in base["mlflow"]["secret_env"].items()}
    pyinfra_hosts, ansible_hosts = [], {}
    for i, server_ in enumerate(fleet.servers[:count]):
        name = f"bench-h{i}"
        data = copy.deepcopy(base)
        data["mlflow"].update(container_name=container_name(i), ports=[f"127.0.0.1:{ctx.fleet_port(i)}:5000"],
                              **FLEET_SETTINGS)
        data.update(fleet.pyinfra_data(server_))
        pyinfra_hosts.append([name, data])
        ansible_hosts[name] = {
            "ansible_host": "127.0.0.1", "ansible_port": server_.port, "ansible_user": fleet.user,
            "ansible_ssh_private_key_file": str(fleet.client_key),
            "mlflow_container": container_name(i), "mlflow_image": settings.image,
            "mlflow_command": list(server.command),
            "mlflow_env": {**server.env, **settings.env}, "mlflow_secret_files": secret_files,
            "mlflow_labels": dict(settings.labels), "mlflow_network": settings.network,
            "mlflow_port": ctx.fleet_port(i), "mlflow_memory": docker_size(settings.memory_limit),
            "mlflow_memory_reservation": docker_size(settings.memory_reservation),
            "mlflow_restart_policy": settings.restart_policy,
            "mlflow_init": bool(settings.init),  # as fix_mlflow: without it each tool undid the other
        }
    stem = f"{count}{'-' + tag if tag else ''}"
    hosts_json = ctx.work / f"fleet{stem}.json"
    hosts_json.write_text(json.dumps(pyinfra_hosts))
    pyinfra_inv = ctx.work / f"inventory_pyinfra_{stem}.py"
    pyinfra_inv.write_text(f"import json\nhosts = [tuple(h) for h in json.load(open({str(hosts_json)!r}))]\n")
    ansible_inv = ctx.work / f"inventory_ansible_{stem}.json"
    ansible_inv.write_text(json.dumps({"all": {"children": {"mlflow": {"hosts": ansible_hosts}}}}))
    return pyinfra_inv, ansible_inv


def container_memory_mib(ctx: Ctx, names: list[str]) -> list[float]:
    """Each container's memory from its cgroup (bench/cgroup.py; `docker stats` said 0B here)."""
    out = []
    for name in names:
        folder = container_cgroup(ctx.client.containers.get(name).id)
        mib = memory_mib(folder) if folder else None
        if mib is not None:
            out.append(mib)
    return out


def mem_available_mib() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable"))
    return int(line.split()[1]) // 1024


def start_containers(ctx: Ctx, indices: range, batch: int = 10) -> list[int]:
    """Start fleet containers exactly as fix_mlflow creates them (`docker run` with its arguments),
    `batch` at a time (MLflow's cold start is CPU-bound: 50 at once on 2 cores would take
    minutes); the indices that never answered /health."""
    _, _, spec = ctx.fixed_spec(FLEET_SETTINGS)
    late = []
    for first in range(indices.start, indices.stop, batch):
        chunk = range(first, min(first + batch, indices.stop))
        for i in chunk:
            ctx.remove(container_name(i))
            ctx.docker_run_fixed(replace(spec, name=container_name(i), ports=(f"127.0.0.1:{ctx.fleet_port(i)}:5000",)))
        waiting, deadline = set(chunk), time.monotonic() + 240
        while waiting and time.monotonic() < deadline:
            waiting = {i for i in waiting if not health_ok(ctx.fleet_port(i))}
            time.sleep(1)
        late += sorted(waiting)
    return late


def settle(ctx: Ctx, pinv: Path, ainv: Path, aenv: dict, rounds: int = 3) -> list[dict]:
    """Untimed runs of each tool until neither changes anything: the no-change starting point."""
    history = []
    for _ in range(rounds):
        p, a = pyinfra_run(pinv), ansible_run(ainv, aenv)
        history.append({"pyinfra": {k: p[k] for k in ("wall_s", "returncode", "changed", "failed")},
                        "ansible": {k: a[k] for k in ("wall_s", "returncode", "changed", "failed")}})
        log(f"fleet: settle pyinfra changed={p['changed']} rc={p['returncode']}, "
            f"Ansible changed={a['changed']} rc={a['returncode']}")
        if p["returncode"]:
            log(f"fleet: pyinfra settle failed:\n{p['tail']}")
        if a["returncode"]:
            log(f"fleet: Ansible settle failed:\n{a['tail']}")
        if p["changed"] == 0 and a["changed"] == 0 and not p["returncode"] and not a["returncode"]:
            break
    return history


# Every fleet container's MLflow keeps about two idle connections to the lab's one PostgreSQL (real
# hosts each have their own): at 50 hosts PostgreSQL's default 100 slots ran out, and the containers
# started last waited on them silently (MLflow retries its store connection without a log line).
FLEET_PG_CONNECTIONS = 400


def pg_max_connections(ctx: Ctx, value: int | None) -> None:
    """Set (None: reset) the lab PostgreSQL's max_connections, which takes a restart."""
    ctx.lab.psql(f"ALTER SYSTEM SET max_connections = {int(value)}" if value else "ALTER SYSTEM RESET max_connections",
                 database="postgres")
    postgres = ctx.lab.name("postgres")
    subprocess.run(["docker", "restart", "-t", "30", postgres], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 120
    while subprocess.run(["docker", "exec", postgres, "pg_isready", "-q"], capture_output=True,
                         timeout=60).returncode and time.monotonic() < deadline:
        time.sleep(1)
    log(f"fleet: lab PostgreSQL max_connections {ctx.lab.psql('SHOW max_connections', database='postgres')}")


def restart_policy(name: str) -> str:
    return subprocess.run(["docker", "inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", name],
                          capture_output=True, text=True, timeout=60).stdout.strip()


def drift(name: str, policy: str):
    subprocess.run(["docker", "update", "--restart", policy, name], check=True, capture_output=True, timeout=60)


# -- the section ----------------------------------------------------------------------------------

def bench_fleet(ctx: Ctx) -> dict:
    cfg = ctx.cfg
    sizes = sorted(cfg["fleets"])
    biggest = max(sizes)
    machine_hosts = cfg.get("machine_shell_hosts") or 0
    machine_hosts = min(machine_hosts, biggest)
    ctx.fleet_base = free_port_base(20000, span=biggest)
    ctx.control_dirs = []
    out: dict = {"hosts": sizes, "reps": cfg["fleet_reps"], "cores": os.cpu_count(), "runs": [],
                 "converge": {}, "settings": FLEET_SETTINGS, "drift": f"restart policy -> {DRIFT_POLICY}, last host",
                 "skipped_sizes": []}
    names = [container_name(i) for i in range(biggest)]
    ctx.extra_containers.update(names)
    fleet = machine_fleet = None
    try:
        pg_max_connections(ctx, FLEET_PG_CONNECTIONS)
        # Memory first: one container, measured, tells whether the biggest size fits.
        late = start_containers(ctx, range(0, 1))
        time.sleep(3)
        per = max(container_memory_mib(ctx, [container_name(0)]) or [400.0])  # 400: unreadable, assume 2 workers
        available = mem_available_mib()
        fits = int((available - 2048) / (per * 1.3)) + 1  # 30% headroom for growth, 2 GiB for the rest
        out["memory_per_container_mib"], out["mem_available_mib"] = per, available
        if biggest > fits:
            out["skipped_sizes"] = [n for n in sizes if n > fits]
            sizes = [n for n in sizes if n <= fits]
            biggest = max(sizes)
            out["hosts"] = sizes
            log(f"fleet: {per} MiB a container, {available} MiB available: sizes {out['skipped_sizes']} skipped")
        log(f"fleet: sizes {sizes}; {per} MiB per MLflow container (1 worker), {available} MiB available")
        fleet = start_fleet(ctx.work / "sshd", biggest, shell_rc=stock_shell_rc())
        out["shell_rc"] = fleet.shell_rc
        if machine_hosts and fleet.shell_rc == "stock":
            machine_fleet = start_fleet(ctx.work / "sshd-machine", machine_hosts)
            out["machine_shell_hosts"] = machine_hosts
        variants = {str(n): (n, fleet, *fleet_inventories(ctx, fleet, n)) for n in sizes}
        if machine_fleet:
            variants[f"{machine_hosts}/{MACHINE_SHELL}"] = (
                machine_hosts, machine_fleet, *fleet_inventories(ctx, machine_fleet, machine_hosts, MACHINE_SHELL))
        out["variants"] = list(variants)
        # "Warm": Ansible's master connections stay for the whole section (ControlPersist 30 min), so
        # every warm run reuses them, as a run repeated within ControlPersist does.
        warm = {id(f): ansible_env(ctx, f, forks=biggest, persist="30m") for f in (fleet, machine_fleet) if f}
        _, _, pinv, ainv = variants[str(biggest)]
        converge = min(cfg.get("fleet_converge") or 0, biggest)
        if converge:
            cpinv, cainv = fleet_inventories(ctx, fleet, converge, "converge")
            ctx.remove(container_name(0))
            # Every "host" shares this machine's cores: with one host per fork, Ansible's /health
            # wait (a module run per host per second) left no CPU for the MLflow cold starts it
            # waited on (10 hosts: still unhealthy after 2.5 min). Both tools get CONVERGE_PARALLEL.
            cenv = {**warm[id(fleet)], "ANSIBLE_FORKS": str(CONVERGE_PARALLEL)}
            out["converge_parallel"] = CONVERGE_PARALLEL
            # Ansible first: the containers pyinfra then makes stay, as start_containers makes the rest.
            for tool in ("ansible", "pyinfra"):
                log(f"fleet: {tool} creates {converge} MLflow containers, {CONVERGE_PARALLEL} hosts at a time (timed)")
                result = (pyinfra_run(cpinv, parallel=CONVERGE_PARALLEL) if tool == "pyinfra"
                          else ansible_run(cainv, cenv))
                out["converge"][tool] = {k: v for k, v in result.items() if k != "tail" or result["returncode"]}
                log(f"fleet: {tool} converge {result['wall_s']} s, changed {result['changed']}, "
                    f"rc {result['returncode']}")
                if tool == "ansible":
                    ctx.remove(*names[:converge])
        log(f"fleet: starting MLflow containers {converge}..{biggest - 1} as fix_mlflow creates them")
        late += start_containers(ctx, range(converge or 1, biggest))
        if late:
            log(f"fleet: containers {late} never answered /health")
        out["late"] = late
        time.sleep(3)
        memory = container_memory_mib(ctx, names[:biggest])
        out["memory_mib"] = {"containers": len(memory), "total": round(sum(memory)),
                             "max": max(memory, default=None), "mem_available_after": mem_available_mib()}
        log(f"fleet: {len(memory)} containers use {out['memory_mib']['total']} MiB; "
            f"{out['memory_mib']['mem_available_after']} MiB still available")
        out["settle"] = settle(ctx, pinv, ainv, warm[id(fleet)])
        if machine_fleet:
            _, _, mpinv, mainv = variants[f"{machine_hosts}/{MACHINE_SHELL}"]
            settle(ctx, mpinv, mainv, warm[id(machine_fleet)], rounds=1)  # also opens its warm masters
        meter = CpuMeter({s.process.pid for f in (fleet, machine_fleet) if f for s in f.servers})
        policy = ctx.fixed_spec(FLEET_SETTINGS)[0].restart_policy
        plan = [(key, scenario) for key in variants for scenario in ("no-change", "one-change")
                if scenario == "no-change" or MACHINE_SHELL not in key]
        for rep in range(cfg["fleet_reps"]):
            for turn, (key, scenario) in enumerate(plan):
                n, fleet_, pinv, ainv = variants[key]
                shift = (rep + turn) % len(TOOLS)
                for tool in TOOLS[shift:] + TOOLS[:shift]:
                    target = container_name(n - 1)
                    if scenario == "one-change":
                        drift(target, DRIFT_POLICY)
                    env = (warm[id(fleet_)] if tool == "ansible"
                           else ansible_env(ctx, fleet_, forks=biggest, persist="60s"))
                    offsets = fleet_.offsets(n)
                    before = meter.read()
                    result = pyinfra_run(pinv) if tool == "pyinfra" else ansible_run(ainv, env)
                    time.sleep(0.3)  # sshd writes its last lines after the client left
                    result["cpu"] = meter.since(before)
                    counts = fleet_.counts(n, offsets)
                    result["per_host"] = {k: round(sum(c[k] for c in counts) / n, 2) for k in counts[0]}
                    if tool == "ansible-fresh":  # a cron run's master lives on for 60 s; not ours to wait for
                        control = Path(env["ANSIBLE_SSH_CONTROL_PATH_DIR"])
                        end_masters([control])
                        shutil.rmtree(control, ignore_errors=True)
                    if scenario == "one-change":
                        now = restart_policy(target)
                        result["repaired"] = now == policy
                        if now != policy:
                            drift(target, policy)
                    if result["returncode"] == 0:
                        result.pop("tail")
                    out["runs"].append({"tool": tool, "hosts": n, "variant": key, "scenario": scenario,
                                        "rep": rep, **result})
                    ph = result["phases"]
                    log(f"fleet: {scenario:10} {tool:13} {key:>16} rep={rep} {result['wall_s']:.2f} s "
                        f"changed={result['changed']} rc={result['returncode']} cpu={result['cpu']} "
                        f"phases={ {k: v for k, v in ph.items() if v is not None} } per host {result['per_host']}")
                    if result["returncode"]:
                        log(f"fleet: {tool} failed:\n{result.get('tail', '')}")
    finally:
        end_masters(ctx.control_dirs)
        time.sleep(0.5)
        for f in (fleet, machine_fleet):
            if f:
                f.stop()
        ctx.remove(*names)
        for control in ctx.control_dirs:
            shutil.rmtree(control, ignore_errors=True)
        pg_max_connections(ctx, None)
    out["summary"] = summarize(out["runs"], out["variants"])
    return out
